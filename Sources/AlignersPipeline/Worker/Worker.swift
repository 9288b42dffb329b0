import AlignersSchema
import Foundation
import Logging
import Synchronization

/// The model side of a worker: turns a job's envelopes into answered envelopes. Runs on the
/// worker's compute thread, so it may take as long as the model needs.
public protocol StageHandler: Sendable {
    /// The service the worker registers.
    var service: StageService { get }
    var model: String { get }
    /// The criteria an inspector stage scores (announced when it registers); empty for others.
    var criteria: [String] { get }
    func process(_ envelopes: [Envelope]) throws -> [Envelope]
}

extension StageHandler {
    public var criteria: [String] { [] }
}

public struct WorkerSettings: Sendable {
    /// Jobs the router may hand over before the first comes back (one running, one waiting).
    public var credit: Int = 2
    public var heartbeat = HeartbeatSettings()
    /// A job running longer than this stops the systemd watchdog, so a stuck model is restarted.
    public var jobTimeoutMs: Int = 600_000
    /// Shown in the router's logs.
    public var name: String = "\(ProcessInfo.processInfo.hostName):\(getpid())"
    /// Connect as a CURVE client of a router started with `--curve-secret-key`.
    public var curve: CurveClientKeys?
    /// Allow plain tcp to an address other than loopback (logged as a warning).
    public var insecure = false
    public init() {}
}

/// A stage process's connection to the router (Paranoid Pirate style): registers its service with
/// its heartbeat timing, takes jobs within its credit, heartbeats from the socket thread while the
/// compute thread runs the model, and reconnects when the router goes silent. Answers carry the
/// incarnation of the router that gave the job; those to a router that has since restarted are
/// dropped (the new one never gave them).
public final class Worker: @unchecked Sendable {
    public let handler: any StageHandler
    public let settings: WorkerSettings
    private let context: ZMQContext
    private let router: RouterAddress
    private let logger: Logger
    private let draining = Atomic<Bool>(false)
    /// Monotonic start of the running job, 0 when idle (read by the socket thread for the watchdog).
    private let busySince = Atomic<UInt64>(0)
    /// Jobs to the compute thread and answers back, as values (see `ComputeItem`).
    private let jobs: Mailbox<ComputeItem>
    private let answers: Mailbox<ComputeAnswer>
    /// Called from the socket thread each loop turn with whether the compute thread looks healthy.
    public var onTick: (@Sendable (_ healthy: Bool) -> Void)?

    /// Throws for plain tcp to an address other than loopback unless `settings.insecure`.
    public convenience init(context: ZMQContext, endpoint: String, handler: any StageHandler,
                            settings: WorkerSettings = WorkerSettings(), logger: Logger) throws {
        try self.init(context: context, router: .endpoint(endpoint), handler: handler, settings: settings, logger: logger)
    }

    /// `router` is a router's back end: an endpoint, or an in-process pipeline's (`LocalPipeline.backend`).
    public init(context: ZMQContext, router: RouterAddress, handler: any StageHandler, settings: WorkerSettings = WorkerSettings(),
                logger: Logger) throws {
        if case .endpoint(let endpoint) = router,
           let warning = try EndpointPolicy.check(endpoint, use: "connect to", encrypted: settings.curve != nil,
                                                  insecure: settings.insecure, remedy: CurveClientKeys.remedy) {
            logger.warning("\(warning)")
        }
        if settings.curve != nil { try Curve.requireAvailable() }
        self.context = context
        self.router = router
        self.handler = handler
        self.settings = settings
        self.logger = logger
        jobs = try Mailbox()
        answers = try Mailbox()
    }

    /// Finish the jobs held, tell the router, and return from `run()`. Thread-safe.
    public func drain() { draining.store(true, ordering: .relaxed) }

    /// Serves until drained. Blocks; call on a dedicated thread.
    public func run() throws {
        let compute = Thread { [self] in computeLoop() }
        compute.name = "aligners-compute"
        compute.start()
        defer { jobs.put(.stop) }

        var link = try connect()
        // Jobs with the compute thread, by the router incarnation that gave them.
        var inFlight = Set<HeldJob>()
        // The router's incarnation and heartbeat timing, as its messages say.
        var incarnation: UInt64 = 0
        var routerTiming: HeartbeatSettings?
        var routerExpiryNs = settings.heartbeat.expiryNs
        var lastHeard = monotonicNanos()
        var lastSent: UInt64 = 0
        var announcedDrain = false
        var reconnectDelayMs = settings.heartbeat.intervalMs

        // libzmq does not retry a connection whose handshake failed (a refused key): we do, on a
        // fresh socket, backing off.
        var handshakeFailed = false
        while true {
            let targets = link.pollTargets
            var poller = ZMQPoller(targets + [.fd(answers.wakeFD)])
            let ready = try poller.poll(timeoutMs: min(settings.heartbeat.intervalMs, 100))
            let now = monotonicNanos()
            if targets.count > 1 && ready[1], let failure = try link.handshakeFailures().first {
                logger.error("router handshake failed", metadata: ["error": "\(failure)", "retry_in_ms": "\(reconnectDelayMs)"])
                handshakeFailed = true
            }
            if ready[0] {
                while let arrival = try link.receive() {
                    lastHeard = now
                    guard case .message(let message) = arrival else { continue }
                    if message.routerIncarnation != 0 && message.routerIncarnation != incarnation {
                        if incarnation != 0 {
                            let stale = inFlight.filter { $0.incarnation == incarnation }.count
                            logger.warning("router restarted; answers to the previous router's jobs will be dropped",
                                           metadata: ["endpoint": "\(router)", "jobs_dropped": "\(stale)"])
                        }
                        incarnation = message.routerIncarnation
                    }
                    switch message.kind {
                    case .job(let job):
                        inFlight.insert(HeldJob(incarnation: incarnation, id: job.id, attempt: job.attempt))
                        jobs.put(.job(job, incarnation: incarnation))
                    case .heartbeat(let beat) where beat.hasTiming:
                        let timing = HeartbeatSettings(beat.timing)
                        if timing != routerTiming {
                            routerTiming = timing
                            routerExpiryNs = settings.heartbeat.expiryNs(peer: timing)
                            if let timing, timing != settings.heartbeat {
                                logger.warning("router heartbeat settings differ from this worker's", metadata: [
                                    "router_heartbeat": "\(timing.summary)", "worker_heartbeat": "\(settings.heartbeat.summary)",
                                    "router_declared_dead_after_ms": "\(routerExpiryNs / 1_000_000)",
                                    "fix": "give the router and every worker the same --heartbeat-ms and --liveness"])
                            }
                        }
                    case .disconnect(let d) where d.reason.hasPrefix("dropped"):
                        // The router ignores this connection from now on; after the heartbeat expiry
                        // we start over on a fresh one.
                        logger.error("the router dropped this worker", metadata: ["reason": "\(d.reason)"])
                    case .disconnect(let d):
                        logger.warning("router asked us to register again", metadata: ["reason": "\(d.reason)"])
                        try link.send(registration())
                    default:
                        break
                    }
                }
            }
            if ready[targets.count] {
                for answer in answers.takeAvailable() {
                    let result = answer.result
                    inFlight.remove(HeldJob(incarnation: answer.incarnation, id: result.id, attempt: result.attempt))
                    guard answer.incarnation == incarnation else {
                        logger.info("answer dropped: its job came from a router that has since restarted",
                                    metadata: ["job": "\(result.id)", "attempt": "\(result.attempt)"])
                        continue
                    }
                    // Addressed to the router that gave the job: a restarted one ignores it, even if
                    // the socket still held it when the restart happened.
                    var reply = WireMessage(.result(result))
                    reply.routerIncarnation = answer.incarnation
                    try link.send(reply)
                    lastSent = now
                }
            }
            if draining.load(ordering: .relaxed) {
                if !announcedDrain {
                    announcedDrain = true
                    logger.info("worker draining", metadata: ["jobs_held": "\(inFlight.count)"])
                    try link.send(.disconnect("draining"))
                }
                if inFlight.isEmpty {
                    try link.send(.disconnect("stopped"))
                    logger.info("worker drained")
                    link.close()
                    return
                }
            }
            if handshakeFailed || now - lastHeard > routerExpiryNs {
                // The router is gone or restarted, or refused us: start over on a fresh link, backing off.
                if !handshakeFailed {
                    logger.warning("router silent; reconnecting", metadata: ["endpoint": "\(router)", "delay_ms": "\(reconnectDelayMs)"])
                }
                handshakeFailed = false
                link.close()
                Thread.sleep(forTimeInterval: Double(reconnectDelayMs) / 1000)
                reconnectDelayMs = min(reconnectDelayMs * 2, 32_000)
                link = try connect()
                lastHeard = monotonicNanos()
                continue
            } else if now - lastHeard < settings.heartbeat.intervalNs {
                reconnectDelayMs = settings.heartbeat.intervalMs
            }
            if now - lastSent >= settings.heartbeat.intervalNs {
                try link.send(.heartbeat(settings.heartbeat))
                lastSent = now
            }
            onTick?(Self.responsive(now: now, busySince: busySince.load(ordering: .relaxed), jobTimeoutMs: settings.jobTimeoutMs))
        }
    }

    /// Whether the compute thread is idle or within its job timeout. It may have stamped its job
    /// after `now` was read on this thread: that is not stuck, and must not underflow.
    static func responsive(now: UInt64, busySince started: UInt64, jobTimeoutMs: Int) -> Bool {
        started == 0 || started >= now || now - started < UInt64(jobTimeoutMs) * 1_000_000
    }

    private func registration() -> WireMessage {
        var ready = Aligners_V1_Ready()
        ready.service = handler.service.name
        ready.criteria = handler.criteria
        ready.credit = UInt32(settings.credit)
        ready.model = handler.model
        ready.worker = settings.name
        ready.heartbeat = settings.heartbeat.timing
        return WireMessage(.ready(ready))
    }

    private func connect() throws -> any PeerLink {
        let link = try router.connect(context: context, curve: settings.curve)
        try link.send(registration())
        var metadata: Logger.Metadata = ["service": "\(handler.service.name)", "endpoint": "\(router)", "model": "\(handler.model)"]
        if let curve = settings.curve { metadata["key"] = "\(curve.keyPair.publicKey)" }
        logger.info("worker registering", metadata: metadata)
        return link
    }

    /// The compute thread: one job at a time, as long as the model takes.
    private func computeLoop() {
        while case .job(let job, let incarnation) = jobs.take() {
            busySince.store(monotonicNanos(), ordering: .relaxed)
            let result = answer(job)
            busySince.store(0, ordering: .relaxed)
            answers.put(ComputeAnswer(result: result, incarnation: incarnation))
        }
    }

    /// Runs the handler on the job and answers with deltas; if the batch fails, runs each envelope
    /// alone so one poison sample fails by itself.
    func answer(_ job: Aligners_V1_Job) -> Aligners_V1_JobResult {
        var result = Aligners_V1_JobResult()
        result.id = job.id
        result.attempt = job.attempt
        let started = monotonicNanos()
        defer {
            let metrics = PipelineMetrics.shared
            let failed = result.envelopes.filter(\.hasError).count
            metrics.time("aligners_model_seconds", [("service", handler.service.name)], nanoseconds: monotonicNanos() - started)
            metrics.count("aligners_samples_total", [("stage", handler.service.name), ("event", "processed")], by: job.envelopes.count)
            metrics.count("aligners_samples_total", [("stage", handler.service.name), ("event", "failed")], by: failed)
        }
        do {
            let processed = try handler.process(job.envelopes)
            guard processed.count == job.envelopes.count else {
                throw StageError("\(handler.service.name) returned \(processed.count) envelopes for \(job.envelopes.count)")
            }
            result.envelopes = zip(job.envelopes, processed).map(Self.delta)
        } catch {
            logger.warning("batch failed; retrying one by one", metadata: ["service": "\(handler.service.name)", "error": "\(error)"])
            result.envelopes = job.envelopes.map { envelope in
                do {
                    let out = try handler.process([envelope])
                    if out.count == 1 { return Self.delta(envelope, out[0]) }
                    throw StageError("\(handler.service.name) returned \(out.count) envelopes for 1")
                } catch {
                    var failed = Envelope()
                    failed.id = envelope.id
                    failed.seq = envelope.seq
                    failed.error = EnvelopeError(.modelFailed, "\(error)", stage: handler.service.name)
                    return failed
                }
            }
        }
        return result
    }
}

extension Worker {
    /// What a stage added to an envelope: the id, new score records, new steps, the response when
    /// it changed, the error when it failed. Sending only this keeps the router from decoding
    /// every response again.
    static func delta(_ before: Envelope, _ after: Envelope) -> Envelope {
        var d = Envelope()
        d.id = after.id
        d.seq = after.seq
        if after.scores.count > before.scores.count { d.scores = Array(after.scores[before.scores.count...]) }
        if after.steps.count > before.steps.count { d.steps = Array(after.steps[before.steps.count...]) }
        if after.response != before.response { d.response = after.response }
        if after.hasError { d.error = after.error }
        return d
    }
}

/// A job the compute thread has, by the router incarnation that gave it (ids restart with a router).
struct HeldJob: Hashable {
    let incarnation: UInt64
    let id: UInt64
    let attempt: UInt32
}

/// What the socket thread hands the compute thread.
enum ComputeItem {
    case job(Aligners_V1_Job, incarnation: UInt64)
    case stop
}

/// A job's answer, for the router incarnation that gave the job.
struct ComputeAnswer {
    let result: Aligners_V1_JobResult
    let incarnation: UInt64
}

public struct StageError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}
