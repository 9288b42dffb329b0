import AlignersKernels
import AlignersPipeline
import ArgumentParser
import Foundation
import Logging

struct WorkerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "worker",
        abstract: "Run a stage worker: one model serving one service, connected to a router.",
        discussion: """
            Start as many as you like per service, on this host or others: the router spreads work over
            them and re-queues the jobs of any that dies. SIGTERM finishes the jobs held, then exits.

            A router on another host takes workers over CURVE: --curve-server-key (its NAME.pub) and
            --curve-key (this worker's NAME.key, whose public key is on the router's --allow-workers).
            Plain tcp to an address other than loopback needs --insecure.
            """.reflowed)

    @Option(help: "inspector, aligner or generator.")
    var role: WorkerRole
    @Option(help: "The criterion served (inspector and aligner roles).")
    var criterion: String?
    @Option(help: "Inspector role: serve these criteria together, one job per sample chunk (service inspect.*, for a router started with --combined-inspection).")
    var criteria: String?
    @Option(help: "The router's back-end endpoint.")
    var connect = "tcp://127.0.0.1:5556"
    @OptionGroup var curve: CurveClientOptions
    @Option(help: "Jobs the router may hand over before the first comes back.")
    var credit = 2
    @OptionGroup var heartbeat: HeartbeatOptions
    @Option(help: "Seconds one job may run before the systemd watchdog is no longer fed (a stuck model gets restarted).")
    var jobTimeout = 600
    @OptionGroup var models: ModelOptions
    @OptionGroup var log: LogOptions
    @OptionGroup var metrics: MetricsOptions

    var criteriaList: [String] {
        (criteria ?? "").split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
    }

    func validate() throws {
        if criteria != nil {
            guard role == .inspector, criterion == nil, !criteriaList.isEmpty else {
                throw ValidationError("--criteria NAME,… is for --role inspector, instead of --criterion")
            }
        } else if role != .generator && (criterion ?? "").isEmpty {
            throw ValidationError("--role \(role.rawValue) needs --criterion NAME")
        }
        guard credit >= 1 else { throw ValidationError("--credit must be at least 1") }
    }

    func run() async throws {
        let logger = log.bootstrap("worker")
        try metrics.start(logger, insecure: curve.insecure)
        let notifier = SystemdNotifier()
        let handler: any StageHandler
        do {
            let catalog = ModelCatalog(models, compute: .forCommand())
            handler = criteria != nil ? InspectorSetStage(try criteriaList.map { try catalog.inspector(for: $0) })
                : try catalog.handler(role: role, criterion: criterion)
        } catch {
            logger.critical("worker has no model to run", metadata: ["role": "\(role.rawValue)", "error": "\(error)"])
            throw ExitCode(2)
        }
        var settings = WorkerSettings()
        settings.credit = credit
        settings.heartbeat = heartbeat.settings
        settings.jobTimeoutMs = jobTimeout * 1000
        settings.insecure = curve.insecure
        let worker: Worker
        do {
            settings.curve = try curve.keys()
            worker = try Worker(context: ZMQContext(), endpoint: connect, handler: handler, settings: settings, logger: logger)
        } catch {
            logger.critical("worker cannot connect", metadata: ["endpoint": "\(connect)", "error": "\(error)"])
            throw ExitCode(2)
        }
        let pacer = NotifyPacer(notifier: notifier)
        worker.onTick = { healthy in if healthy { pacer.tick(status: nil) } }
        _ = notifier.ready(status: "\(handler.service) via \(connect)")
        try await Daemon.run([ThreadService(name: "aligners-worker", body: { try worker.run() },
                                            drain: { _ = notifier.stopping(status: "draining"); worker.drain() })],
                             logger: logger)
    }
}

/// Sends WATCHDOG=1 at half the watchdog interval and a STATUS line now and then, from the caller's
/// loop, so a stuck loop stops both.
final class NotifyPacer: @unchecked Sendable {
    private let notifier: SystemdNotifier
    private var lastPing: ContinuousClock.Instant?
    private var lastStatus: ContinuousClock.Instant?
    init(notifier: SystemdNotifier) { self.notifier = notifier }

    func tick(status: String?) {
        guard notifier.isEnabled else { return }
        _ = notifier.watchdogIfDue(lastPing: &lastPing)
        let now = ContinuousClock.now
        if let status, lastStatus.map({ now - $0 > .seconds(5) }) ?? true {
            lastStatus = now
            _ = notifier.status(status)
        }
    }
}
