import AlignersPipeline
import ArgumentParser
import Foundation
import Logging

struct RouterCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "router",
        abstract: "Run the router daemon: clients submit at the front end, workers serve at the back end.",
        discussion: """
            The router applies the squad policy batch by batch and hands jobs to workers registered for
            each service (generate, inspect.<criterion>, align.<criterion>), least recently used first,
            within each worker's credit. With --combined-inspection, one job scores a sample on every
            criterion (service inspect.*, served by `aligners worker --role inspector --criteria a,b,c`). SIGTERM drains in-flight samples before exiting. Speaks the
            systemd notify protocol when $NOTIFY_SOCKET is set.
            """.reflowed)

    @Option(help: "Endpoint clients connect to (ZeroMQ: tcp://HOST:PORT, ipc:///path).")
    var frontend = "tcp://127.0.0.1:5555"
    @Option(help: "Endpoint workers connect to.")
    var backend = "tcp://127.0.0.1:5556"
    @Option(help: "Optional PUB endpoint publishing every finished batch (see Examples/tap).")
    var tap: String?
    @OptionGroup var squad: SquadOptions
    @Option(help: "Most envelopes in one job; smaller jobs spread a batch over more workers.")
    var jobSize = 16
    @Flag(help: "Inspect with one job per sample chunk for all criteria (service inspect.*) instead of one per criterion.")
    var combinedInspection = false
    @Option(help: "Envelopes each client may have in flight.")
    var clientWindow = 256
    @OptionGroup var heartbeat: HeartbeatOptions
    @Option(help: "Dispatches of one job before its samples fail.")
    var maxAttempts = 3
    @Option(help: "Seconds work waits for a service that has no worker before it fails.")
    var serviceTimeout = 60
    @OptionGroup var log: LogOptions
    @OptionGroup var metrics: MetricsOptions

    func validate() throws {
        guard jobSize >= 1, clientWindow >= 1, maxAttempts >= 1 else {
            throw ValidationError("--job-size, --client-window and --max-attempts must be at least 1")
        }
    }

    func run() async throws {
        let logger = log.bootstrap("router")
        try metrics.start(logger)
        var settings = squad.routerSettings()
        settings.jobSize = jobSize
        settings.combinedInspection = combinedInspection
        settings.clientWindow = clientWindow
        settings.heartbeat = heartbeat.settings
        settings.maxAttempts = maxAttempts
        settings.serviceTimeoutMs = serviceTimeout * 1000
        let router: Router
        do {
            router = try Router(context: ZMQContext(), frontend: frontend, backend: backend, tap: tap,
                                settings: settings, logger: logger)
        } catch {
            logger.critical("router could not start", metadata: ["error": "\(error)"])
            throw ExitCode(2)
        }
        let notifier = SystemdNotifier()
        let pacer = NotifyPacer(notifier: notifier)
        router.onTick = { stats in
            pacer.tick(status: "\(stats.inFlight) in flight, \(stats.delivered) delivered, \(stats.workers) workers, \(stats.queued) jobs queued")
        }
        _ = notifier.ready(status: "serving \(frontend)")
        try await Daemon.run([ThreadService(name: "aligners-router", body: { try router.run() },
                                            drain: { _ = notifier.stopping(status: "draining"); router.drain() })],
                             logger: logger)
    }
}
