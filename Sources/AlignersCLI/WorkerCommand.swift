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
    @Option(help: "Aligner role: the criterion whose aligner runs.")
    var criterion: String?
    @Option(help: "Inspector role: the criteria scored, in one pass where their inspectors share a model. Must include every criterion of the router's squad (its --criteria).")
    var criteria = "ethical,factuality,helpful"
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
        criteria.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
    }

    func validate() throws {
        switch role {
        case .inspector:
            if criterion != nil {
                throw ValidationError("an inspector scores every criterion of the squad: use --criteria NAME,… (default ethical,factuality,helpful), not --criterion")
            }
            guard !criteriaList.isEmpty else { throw ValidationError("--criteria needs at least one criterion") }
        case .aligner:
            if (criterion ?? "").isEmpty { throw ValidationError("--role aligner needs --criterion NAME") }
        case .generator:
            break
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
            handler = try catalog.handler(role: role, criterion: criterion, criteria: criteriaList)
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
        _ = notifier.ready(status: "\(handler.service.name) via \(connect)")
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
