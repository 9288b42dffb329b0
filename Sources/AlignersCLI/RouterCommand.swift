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
            each service (generate, inspect, align.<criterion>), least recently used first, within each
            worker's credit. One inspection job scores a chunk of samples on every criterion, so an
            inspector worker must score them all (`aligners worker --role inspector --criteria a,b,c`
            with this router's --criteria; one that does not is refused, saying so). SIGTERM drains
            in-flight samples before exiting. Speaks the
            systemd notify protocol when $NOTIFY_SOCKET is set.

            Security: with --curve-secret-key every socket (front end, back end, tap) speaks CURVE, and a
            peer gets in only if its public key is on the allowlist for its kind: --allow-clients (filters),
            --allow-workers, --allow-tap (or the clients' list). Refused peers are logged with their key.
            SIGHUP reads the allowlists again (a file that cannot be read keeps the old lists); connected
            clients and workers whose key is gone are dropped, tap subscribers at their next connection.
            Without CURVE, tcp endpoints must be loopback unless --insecure. Workers that answer with
            garbage (scores outside [0, 1], unknown job or envelope ids) are dropped and their jobs re-run.

            Liveness: a worker silent for --liveness heartbeats (at the slower of its --heartbeat-ms and
            the router's; a mismatch is logged as a warning) is lost and its jobs go to other workers, as
            does a job not answered within --job-timeout-ms. Each job is dispatched at most --max-attempts
            times; only the worker holding its latest attempt can answer it (a late answer is ignored),
            so every sample comes out exactly once.
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
    @Option(help: "Envelopes each client may have in flight.")
    var clientWindow = 256
    @OptionGroup var heartbeat: HeartbeatOptions
    @Option(help: "Dispatches of one job before its samples fail.")
    var maxAttempts = 3
    @Option(help: "Milliseconds a worker has to answer a job before the job goes to another worker (a new attempt); the late worker gets no more work until it answers. Bounds a stuck model: keep it well above the slowest job, and below the workers' --job-timeout.")
    var jobTimeoutMs = 300_000
    @Option(help: "Seconds work waits for a service that has no worker before it fails.")
    var serviceTimeout = 60
    @Option(help: ArgumentHelp("The router's key pair (NAME.key from `aligners keys generate`): turns CURVE on for the front end, back end and tap. Needs --allow-clients and --allow-workers.",
                               valueName: "file"))
    var curveSecretKey: String?
    @Option(help: ArgumentHelp("Public keys of the clients (filters) let in: one Z85 key per line, as in NAME.pub; '# ' starts a comment. Re-read on SIGHUP.",
                               valueName: "file"))
    var allowClients: String?
    @Option(help: ArgumentHelp("Public keys of the workers let in (same format). Re-read on SIGHUP.", valueName: "file"))
    var allowWorkers: String?
    @Option(help: ArgumentHelp("Public keys of the tap's subscribers (same format; default: --allow-clients). Re-read on SIGHUP.",
                               valueName: "file"))
    var allowTap: String?
    @Flag(help: "Allow plain tcp (no CURVE) on addresses other than loopback, and metrics beyond loopback; logs a warning. Without CURVE, anyone who can reach the back end can register as a worker and read every sample.")
    var insecure = false
    @OptionGroup var log: LogOptions
    @OptionGroup var metrics: MetricsOptions

    func validate() throws {
        guard jobSize >= 1, clientWindow >= 1, maxAttempts >= 1 else {
            throw ValidationError("--job-size, --client-window and --max-attempts must be at least 1")
        }
        guard jobTimeoutMs >= 1 else { throw ValidationError("--job-timeout-ms must be at least 1") }
        if curveSecretKey == nil {
            guard allowClients == nil, allowWorkers == nil, allowTap == nil else {
                throw ValidationError("--allow-clients, --allow-workers and --allow-tap need --curve-secret-key (allowlists are checked in CURVE handshakes)")
            }
        } else if allowClients == nil || allowWorkers == nil {
            throw ValidationError("--curve-secret-key needs --allow-clients and --allow-workers: CURVE without allowlists would let any key in")
        }
    }

    /// The CURVE keys and allowlists, or nil without --curve-secret-key.
    func curveKeys() throws -> CurveServerKeys? {
        guard let curveSecretKey, let allowClients, let allowWorkers else { return nil }
        return CurveServerKeys(keyPair: try CurveKeyPair.read(from: curveSecretKey),
                               allowlists: try PeerAllowlists(.init(clients: allowClients, workers: allowWorkers, tap: allowTap)))
    }

    func run() async throws {
        let logger = log.bootstrap("router")
        try metrics.start(logger, insecure: insecure)
        var settings = squad.routerSettings()
        settings.jobSize = jobSize
        settings.clientWindow = clientWindow
        settings.heartbeat = heartbeat.settings
        settings.maxAttempts = maxAttempts
        settings.jobTimeoutMs = jobTimeoutMs
        settings.serviceTimeoutMs = serviceTimeout * 1000
        let router: Router
        do {
            let security = RouterSecurity(curve: try curveKeys(), insecure: insecure)
            router = try Router(context: ZMQContext(), frontend: frontend, backend: backend, tap: tap,
                                settings: settings, security: security, logger: logger)
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
                             onReload: { Self.reload(router, notifier: notifier, logger: logger) }, logger: logger)
    }

    /// SIGHUP: the allowlists again. A failed reload keeps the lists in force and says why.
    static func reload(_ router: Router, notifier: SystemdNotifier, logger: Logger) {
        notifier.reloading()
        defer { notifier.ready() }
        do {
            let counts = try router.reloadAllowlists()
            logger.notice("allowlists reloaded", metadata: Dictionary(uniqueKeysWithValues: counts.map { ("\($0.key.rawValue)s", "\($0.value)") }))
        } catch {
            logger.error("allowlists not reloaded; the previous ones stay in force", metadata: ["error": "\(error)"])
        }
    }
}
