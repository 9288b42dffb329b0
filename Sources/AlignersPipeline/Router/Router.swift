import AlignersCore
import AlignersSchema
import Foundation
import Logging
import Synchronization

/// The router: clients submit envelopes at the front end, workers serve jobs at the back end, and
/// the squad policy decides, batch by batch, which jobs exist. One thread owns every socket.
///
/// Three parts without sockets hold the state, and this class is the loop between them and the
/// wire: the `ClientGate` (clients and their credit), the `SquadExecutor` (batches, the squad
/// policy, merging answers) and the `Broker` (services, workers, jobs, attempts, liveness). Flow
/// control is credit end to end: a client gets `clientWindow` envelopes of credit and more only as
/// results come back; a worker gets at most `credit` jobs at once. Nothing else queues.
///
/// Workers are not trusted: a result that is not a valid answer to the job held (scores that are
/// not numbers in [0, 1], envelopes or job ids the router never gave it) drops the worker and
/// re-queues its jobs. With CURVE, peers are admitted by public key (see `ZAPHandler`).
public final class Router: @unchecked Sendable {
    public let settings: RouterSettings
    /// Drawn at start and set on every message the router sends, so that its peers can tell a
    /// restarted router (which knows nothing of what they had sent) from a reconnection.
    public let incarnation = UInt64.random(in: 1...UInt64.max)
    private let logger: Logger
    /// Clients' and workers' sides: ROUTER sockets, or in process the hubs of `LocalPipeline`.
    private let frontend: any RouterPort
    private let backend: any RouterPort
    private let tap: ZMQSocket?
    private let curve: CurveServerKeys?
    /// Answers CURVE handshakes; served by the router's thread like every other socket.
    private let zap: ZAPHandler?
    private let draining = Atomic<Bool>(false)
    /// Called from the router thread once per loop turn (systemd watchdog, status).
    public var onTick: (@Sendable (RouterStats) -> Void)?

    // State, touched only by the router thread.
    private var gate: ClientGate
    private var squad: SquadExecutor
    private var broker: Broker
    private var lastHeartbeat: UInt64 = 0
    /// Answers to jobs of the router this one replaced (late results the broker never saw).
    private var previousRouterResults = 0
    /// Peers whose messages are ignored: workers dropped for bad results, peers whose key left the
    /// allowlists. (Bounded: cleared when it grows past 10,000.)
    private var ignored: Set<Identity> = []
    /// The allowlists' generation the peers were last checked against.
    private var allowlistGeneration: UInt64 = 0
    public private(set) var stats = RouterStats()
    private let metrics = PipelineMetrics.shared

    /// Binds the front end, back end and optional tap. Endpoints are ZeroMQ's (tcp://, ipc://, inproc://).
    /// Plain tcp on an address other than loopback needs `security.insecure` (else this throws).
    public convenience init(context: ZMQContext, frontend: String, backend: String, tap: String? = nil,
                            settings: RouterSettings, security: RouterSecurity = RouterSecurity(), logger: Logger) throws {
        for endpoint in [frontend, backend] + (tap.map { [$0] } ?? []) {
            if let warning = try EndpointPolicy.check(endpoint, use: "bind", encrypted: security.curve != nil, insecure: security.insecure,
                                                      remedy: Self.curveRemedy) {
                logger.warning("\(warning)")
            }
        }
        // The handler is bound before any CURVE socket, so no handshake can find it missing.
        var zap: ZAPHandler?
        if let curve = security.curve {
            try Curve.requireAvailable()
            zap = try ZAPHandler(context: context, allowlists: curve.allowlists, logger: logger)
        }
        func port(_ endpoint: String, _ kind: PeerKind) throws -> ZMQRouterPort {
            let socket = try ZMQSocket(context, .router)
            try socket.setRouterMandatory()
            try socket.setMaxMessageSize(settings.maxMessageBytes)
            if let curve = security.curve { try socket.makeCurveServer(curve.keyPair, zapDomain: kind.zapDomain) }
            try socket.bind(endpoint)
            return ZMQRouterPort(socket, readsKeys: security.curve != nil)
        }
        self.init(frontend: try port(frontend, .client), backend: try port(backend, .worker),
                  tap: try tap.map { try Self.bindTap(context: context, $0, curve: security.curve) },
                  curve: security.curve, zap: zap, settings: settings, logger: logger)
    }

    /// A router for this process: clients and workers reach it through the two hubs (see
    /// `LocalPipeline`), by passing messages, not bytes. The tap, if any, is a ZeroMQ endpoint.
    convenience init(context: ZMQContext, frontend: LocalHub, backend: LocalHub, tap: String? = nil,
                     settings: RouterSettings, logger: Logger) throws {
        if let tap, let warning = try EndpointPolicy.check(tap, use: "bind", encrypted: false, insecure: false, remedy: Self.curveRemedy) {
            logger.warning("\(warning)")
        }
        self.init(frontend: frontend, backend: backend, tap: try tap.map { try Self.bindTap(context: context, $0, curve: nil) },
                  curve: nil, zap: nil, settings: settings, logger: logger)
    }

    private init(frontend: any RouterPort, backend: any RouterPort, tap: ZMQSocket?, curve: CurveServerKeys?, zap: ZAPHandler?,
                 settings: RouterSettings, logger: Logger) {
        self.settings = settings
        self.logger = logger
        gate = ClientGate(window: settings.clientWindow)
        squad = SquadExecutor(settings: settings)
        broker = Broker(settings: Broker.Settings(maxAttempts: settings.maxAttempts, jobTimeoutMs: settings.jobTimeoutMs,
                                                  serviceTimeoutMs: settings.serviceTimeoutMs, heartbeat: settings.heartbeat,
                                                  criteria: settings.criteria),
                        logger: logger)
        self.frontend = frontend
        self.backend = backend
        self.tap = tap
        self.curve = curve
        self.zap = zap
        allowlistGeneration = curve?.allowlists.generation ?? 0
    }

    /// The PUB socket the delivered envelopes are published on.
    private static func bindTap(context: ZMQContext, _ endpoint: String, curve: CurveServerKeys?) throws -> ZMQSocket {
        let pub = try ZMQSocket(context, .pub)
        if let curve { try pub.makeCurveServer(curve.keyPair, zapDomain: PeerKind.tap.zapDomain) }
        try pub.bind(endpoint)
        return pub
    }

    static let curveRemedy = "Protect it with CURVE (--curve-secret-key with --allow-clients and --allow-workers; "
        + "`aligners keys generate` makes keys), or bind to a loopback or ipc:// endpoint"

    deinit {
        // The ZAP handler goes last: no CURVE socket is ever left without it.
        frontend.close()
        backend.close()
        tap?.close()
        zap?.socket.close()
    }

    /// Reads the allowlist files again (SIGHUP). Thread-safe. Peers already connected whose key is
    /// gone are dropped by the router's thread; on an error the old lists stay.
    @discardableResult
    public func reloadAllowlists() throws -> [PeerKind: Int] {
        guard let curve else {
            throw CurveError("the router runs without CURVE (--curve-secret-key), so it has no allowlists to reload")
        }
        return try curve.allowlists.reload()
    }

    public var frontendEndpoint: String { frontend.endpoint }
    public var backendEndpoint: String { backend.endpoint }
    public var tapEndpoint: String? { tap?.lastEndpoint }

    /// Stop taking new samples, finish those in flight, then return from `run()`. Thread-safe.
    public func drain() { draining.store(true, ordering: .relaxed) }
    public var isDraining: Bool { draining.load(ordering: .relaxed) }

    /// Serves until drained and idle. Call on a dedicated thread (it blocks).
    public func run() throws {
        var poller = ZMQPoller([frontend.pollTarget, backend.pollTarget] + (zap.map { [.socket($0.socket)] } ?? []))
        var announcedDrain = false
        var metadata: Logger.Metadata = ["frontend": "\(frontend.endpoint)", "backend": "\(backend.endpoint)",
                                         "criteria": "\(settings.criteria.joined(separator: ","))"]
        if let curve {
            metadata["curve_public_key"] = "\(curve.keyPair.publicKey)"
            for (kind, count) in curve.allowlists.counts { metadata["allowed_\(kind.rawValue)s"] = "\(count)" }
        }
        metadata["incarnation"] = "\(incarnation)"
        metadata["job_timeout_ms"] = "\(settings.jobTimeoutMs.map { "\($0)" } ?? "none")"
        logger.info("router serving", metadata: metadata)
        while true {
            let ready = try poller.poll(timeoutMs: pollTimeout())
            if ready.count > 2 && ready[2] { try zap?.serve() }
            if let curve, curve.allowlists.generation != allowlistGeneration {
                allowlistGeneration = curve.allowlists.generation
                enforceAllowlists(curve.allowlists)
            }
            if ready[1] { try drain(backend) { try handleBackend($0, from: $1, key: $2) } }
            if ready[0] { try drain(frontend) { try handleFrontend($0, from: $1, key: $2) } }
            let now = monotonicNanos()
            if isDraining && !announcedDrain {
                announcedDrain = true
                logger.info("router draining", metadata: ["in_flight": "\(stats.inFlight)"])
            }
            squad.tick(now: now, draining: isDraining)
            settle()
            if isDraining && squad.isIdle && broker.isIdle {
                logger.info("router drained", metadata: ["delivered": "\(stats.delivered)"])
                return
            }
            if now - lastHeartbeat >= settings.heartbeat.intervalNs {
                lastHeartbeat = now
                sendHeartbeats()
                broker.purgeDeadWorkers(now: now)
                gate.purge(now: now, expiryNs: settings.heartbeat.expiryNs * 10)
                broker.expireOverdueJobs(now: now)
                broker.failStarvedJobs(now: now)
                settle()
                metrics.gauge("aligners_queue_depth", [], Double(broker.queued))
                metrics.gauge("aligners_workers", [], Double(broker.workers.count))
                metrics.gauge("aligners_in_flight", [], Double(stats.inFlight))
            }
            dispatch()
            stats.workers = broker.workers.count
            stats.queued = broker.queued
            stats.batches = squad.batchesStarted
            stats.jobs = broker.submitted
            stats.dispatched = broker.dispatched
            stats.requeued = broker.requeued
            stats.expiredDeadlines = broker.expiredDeadlines
            stats.lateResults = broker.lateResults + previousRouterResults
            stats.cpuNanos = threadCPUNanos()
            stats.refusedPeers = zap?.refused ?? 0
            onTick?(stats)
        }
    }

    private func pollTimeout() -> Int {
        var ms = settings.heartbeat.intervalMs
        if squad.hasWaitingSamples { ms = min(ms, max(1, settings.batchWindowMs / 2)) }
        if isDraining { ms = min(ms, 50) }
        return ms
    }

    /// Handles what a side holds: each message with its sender and the sender's key ("" without
    /// CURVE); junk is counted.
    private func drain(_ port: any RouterPort, _ handle: (WireMessage, Identity, String) throws -> Void) throws {
        // Bounded so one busy side cannot starve the other or the timers.
        for _ in 0..<1000 {
            switch try port.receive() {
            case nil: return
            case .junk: stats.rejectedFrames += 1
            case .message(let message, let id, let key): try handle(message, id, key)
            }
        }
    }

    /// Carries out what the parts decided, until none has anything left: failed jobs to the squad,
    /// the squad's job requests to the broker, finished envelopes to their clients.
    private func settle() {
        while true {
            let failed = broker.takeFailed()
            for (job, error) in failed { fail(job, error) }
            let requests = squad.takeJobRequests()
            let now = monotonicNanos()
            for request in requests { broker.submit(request.service, owner: request.owner, now: now) }
            let deliveries = squad.takeDeliveries()
            for delivery in deliveries { send(delivery.envelopes, to: delivery.client, countsAgainstCredit: true) }
            if failed.isEmpty && requests.isEmpty && deliveries.isEmpty { return }
        }
    }

    /// The job's samples carry `error` from here on and leave the squad.
    private func fail(_ job: Job, _ error: EnvelopeError) {
        logger.warning("job failed", metadata: ["service": "\(job.service.name)", "envelopes": "\(job.owner.count)",
                                                "error": "\(error.message)"])
        squad.fail(job, error)
    }

    // MARK: Front end (clients)

    private func handleFrontend(_ message: WireMessage, from id: Identity, key: String) throws {
        guard !ignored.contains(id) else {
            stats.rejectedFrames += 1
            return
        }
        let now = monotonicNanos()
        if gate.clients[id] == nil, let curve, !curve.allowlists.allows(key, as: .client) {
            // Admitted at its handshake; the list may have changed since (a reload).
            ignore(id, "client's key is no longer in the allowlist", key: key)
            return
        }
        if gate.heard(from: id, key: key, now: now) {
            logger.debug("client connected", metadata: ["client": "\(id)"])
            if !isDraining { grantCredit(id, settings.clientWindow) }
        }
        switch message.kind {
        case .submit(let submit) where message.routerIncarnation != 0 && message.routerIncarnation != incarnation:
            // Sent to the router we replaced (queued in the client's socket while we restarted): the
            // client sends these again once it sees our incarnation, so taking them would run them twice.
            logger.info("submission for a previous router ignored; the client sends it again",
                        metadata: ["client": "\(id)", "envelopes": "\(submit.envelopes.count)"])
        case .submit(let submit):
            accept(submit.envelopes, from: id, now: now)
        case .disconnect:
            gate.left(id)
        case .heartbeat, .none:
            break
        default:
            stats.rejectedFrames += 1
        }
    }

    private func grantCredit(_ client: Identity, _ n: Int) {
        var credit = Aligners_V1_Credit()
        credit.envelopes = UInt32(n)
        _ = frontend.send(stamped(WireMessage(.credit(credit))), to: client)
    }

    /// A message as this router sends it: with its incarnation.
    private func stamped(_ message: WireMessage) -> WireMessage {
        var message = message
        message.routerIncarnation = incarnation
        return message
    }

    private func accept(_ envelopes: [Envelope], from client: Identity, now: UInt64) {
        var overflow: [Envelope] = []
        for var envelope in envelopes {
            guard gate.take(from: client) else {
                envelope.error = EnvelopeError(.internal, "client sent more envelopes than its credit", stage: "router")
                overflow.append(envelope)
                continue
            }
            stats.received += 1
            stats.inFlight += 1
            squad.admit(envelope, from: client, now: now)
        }
        metrics.count("aligners_samples_total", [("stage", "router"), ("event", "received")], by: envelopes.count - overflow.count)
        if !overflow.isEmpty {
            logger.warning("client exceeded its credit", metadata: ["client": "\(client)", "rejected": "\(overflow.count)"])
            send(overflow, to: client, countsAgainstCredit: false)
        }
        settle()
    }

    /// Returns finished envelopes to their client (and the tap), and gives the credit back.
    private func send(_ envelopes: [Envelope], to client: Identity, countsAgainstCredit: Bool) {
        var deliver = Aligners_V1_Deliver()
        deliver.envelopes = envelopes
        let message = stamped(WireMessage(.deliver(deliver)))
        if countsAgainstCredit {
            let failed = envelopes.filter { $0.hasError }.count
            metrics.count("aligners_samples_total", [("stage", "router"), ("event", "delivered")], by: envelopes.count)
            metrics.count("aligners_samples_total", [("stage", "router"), ("event", "failed")], by: failed)
            stats.delivered += envelopes.count
            stats.failed += failed
            stats.inFlight -= envelopes.count
        }
        // Encoded once, for the tap and (over ZeroMQ) the client.
        var encoded: [UInt8]?
        if let tap {
            encoded = message.bytes()
            _ = try? tap.send([encoded!], dontWait: true)
        }
        guard gate.clients[client] != nil else { return }
        let sent = frontend.send(message, to: client, encoded: &encoded)
        if !sent { logger.warning("client gone; results dropped", metadata: ["client": "\(client)", "envelopes": "\(envelopes.count)"]) }
        if countsAgainstCredit {
            let credit = gate.returned(envelopes.count, to: client, sent: sent)
            if credit > 0 && !isDraining { grantCredit(client, credit) }
        }
    }

    // MARK: Back end (workers)

    /// Hands queued jobs to ready workers, least recently used first, within each worker's credit.
    private func dispatch() {
        while let (job, workerID) = broker.nextDispatch() {
            var wire = Aligners_V1_Job()
            wire.id = job.id
            wire.attempt = UInt32(job.attempt)
            wire.service = job.service.name
            // Each envelope of a job says which dispatch of that job it came in.
            wire.envelopes = squad.envelopes(of: job.owner).map { var e = $0; e.attempt = UInt32(job.attempt); return e }
            let sent = backend.send(stamped(WireMessage(.job(wire))), to: workerID)
            if sent {
                broker.dispatched(job.id, to: workerID, now: monotonicNanos())
            } else {
                // The worker vanished between heartbeats; forget it. The job stays first in line.
                broker.forget(workerID, reason: "unreachable")
                settle()
            }
        }
    }

    private func handleBackend(_ message: WireMessage, from id: Identity, key: String) throws {
        guard !ignored.contains(id) else {
            stats.rejectedFrames += 1
            return
        }
        let now = monotonicNanos()
        if case .ready(let ready) = message.kind {
            if let curve, !curve.allowlists.allows(key, as: .worker) {
                ignore(id, "worker's key is no longer in the allowlist", key: key)
                return
            }
            register(id, ready, now: now, key: key)
            settle()
            return
        }
        guard broker.heard(from: id, now: now), let worker = broker.workers[id] else {
            // A worker we do not know (we restarted, or purged it): ask it to register again.
            _ = backend.send(stamped(.disconnect("unknown worker: send Ready")), to: id)
            return
        }
        switch message.kind {
        case .result(let result) where message.routerIncarnation != 0 && message.routerIncarnation != incarnation:
            // An answer to a job of the router we replaced: ours never gave it (its id may even
            // name one of ours).
            previousRouterResults += 1
            metrics.count("aligners_late_results_total", [("service", worker.service.name)])
            logger.info("answer to a previous router's job ignored", metadata: ["worker": "\(worker.name)", "job": "\(result.id)"])
        case .result(let result):
            complete(result, from: id)
        case .disconnect(let d):
            if d.reason == "draining" {
                broker.draining(id)
                logger.info("worker draining", metadata: ["worker": "\(worker.name)"])
            } else {
                broker.forget(id, reason: d.reason.isEmpty ? "disconnected" : d.reason)
            }
        case .heartbeat, .none:
            break
        default:
            stats.rejectedFrames += 1
        }
        settle()
    }

    private func register(_ id: Identity, _ ready: Aligners_V1_Ready, now: UInt64, key: String) {
        guard ready.credit > 0, let service = StageService(name: ready.service) else {
            stats.rejectedFrames += 1
            if !ready.service.isEmpty {
                logger.warning("worker refused: no stage serves that service", metadata: [
                    "worker": "\(ready.worker)", "service": "\(ready.service.prefix(64))",
                    "fix": "run `aligners worker` of this build (services: generate, inspect, align.<criterion>)"])
            }
            return
        }
        // An inspection job asks for every criterion of the squad at once.
        let missing = settings.criteria.filter { !ready.criteria.contains($0) }
        if service == .inspect, !missing.isEmpty {
            let reason = "this inspector scores \(ready.criteria.isEmpty ? "no criteria" : ready.criteria.joined(separator: ", ")) "
                + "but the router's squad also needs \(missing.joined(separator: ", ")): start it with "
                + "--criteria \(settings.criteria.joined(separator: ","))"
            logger.error("inspector refused", metadata: ["worker": "\(ready.worker.isEmpty ? "\(id)" : ready.worker)", "reason": "\(reason)"])
            dropWorker(id, reason: reason)
            return
        }
        let credit = Int(min(ready.credit, 1024))
        let name = ready.worker.isEmpty ? "\(id)" : ready.worker
        // Its heartbeats are expected at its own interval if slower than ours (a worker of an older
        // build announces none: ours then).
        let timing = ready.hasHeartbeat ? HeartbeatSettings(ready.heartbeat) : nil
        let expiry = settings.heartbeat.expiryNs(peer: timing)
        broker.register(id, WorkerState(service: service, name: name, model: ready.model, key: key,
                                        credit: credit, expiryNs: expiry, lastSeen: now), now: now)
        // Our timing at once, so the worker need not wait a heartbeat to learn it.
        _ = backend.send(stamped(.heartbeat(settings.heartbeat)), to: id)
        var metadata: Logger.Metadata = ["worker": "\(name)", "service": "\(ready.service)",
                                         "model": "\(ready.model)", "credit": "\(credit)"]
        if service == .inspect { metadata["criteria"] = "\(ready.criteria.joined(separator: ","))" }
        if !key.isEmpty { metadata["key"] = "\(key)" }
        logger.info("worker ready", metadata: metadata)
        if let timing, timing != settings.heartbeat {
            logger.warning("worker heartbeat settings differ from the router's", metadata: [
                "worker": "\(name)", "worker_heartbeat": "\(timing.summary)", "router_heartbeat": "\(settings.heartbeat.summary)",
                "declared_dead_after_ms": "\(expiry / 1_000_000)",
                "fix": "give the router and every worker the same --heartbeat-ms and --liveness"])
        }
    }

    private func complete(_ result: Aligners_V1_JobResult, from workerID: Identity) {
        let attempt = Int(result.attempt)
        switch broker.answer(result.id, attempt: attempt, from: workerID, validate: { squad.problem(with: result, for: $0) }) {
        case .unknownWorker:
            return
        case .invalid(let problem):
            dropWorker(workerID, reason: problem)   // a job it held goes back to its queue
        case .late(let service, let currentAttempt):
            // An attempt that ended (past its deadline, or its worker presumed dead) and ran again
            // elsewhere, or a duplicate: the job's current attempt still decides.
            metrics.count("aligners_late_results_total", [("service", service.name)])
            logger.info("late result ignored", metadata: [
                "worker": "\(broker.workers[workerID]?.name ?? "\(workerID)")", "service": "\(service.name)", "job": "\(result.id)",
                "attempt": "\(attempt)", "current_attempt": "\(currentAttempt.map { "\($0)" } ?? "none (finished)")"])
        case .current(let job):
            metrics.time("aligners_stage_latency_seconds", [("service", job.service.name)], nanoseconds: monotonicNanos() - job.dispatchedAt)
            if result.hasError {
                fail(job, result.error)
            } else {
                squad.complete(job, deltas: result.envelopes)
            }
        }
    }

    // MARK: Liveness

    private func sendHeartbeats() {
        let beat = stamped(.heartbeat(settings.heartbeat))
        var encoded: [UInt8]?   // once for every peer
        for id in broker.workers.keys { _ = backend.send(beat, to: id, encoded: &encoded) }
        for id in gate.connected { _ = frontend.send(beat, to: id, encoded: &encoded) }
    }

    /// Drops a worker that cannot be trusted: its jobs go back to their queues, it is told why, and
    /// what it sends on this connection is ignored. (It may connect again; with CURVE, only while
    /// its key is allowlisted.)
    private func dropWorker(_ id: Identity, reason: String) {
        _ = backend.send(stamped(.disconnect("dropped: \(reason)")), to: id)
        stats.droppedWorkers += 1
        metrics.count("aligners_workers_dropped_total")
        broker.forget(id, reason: reason, dropped: true)
        ignoreFromNowOn(id)
    }

    private func ignoreFromNowOn(_ id: Identity) {
        if ignored.count >= 10_000 { ignored.removeAll() }
        ignored.insert(id)
    }

    /// A peer whose key left the allowlists after its handshake.
    private func ignore(_ id: Identity, _ reason: String, key: String) {
        logger.warning("peer refused", metadata: ["reason": "\(reason)", "key": "\(key)"])
        ignoreFromNowOn(id)
    }

    /// After a reload: drops the workers and clients whose keys are no longer listed. (Tap
    /// subscribers cannot be told apart on a PUB socket: a removed one is refused when it reconnects.)
    private func enforceAllowlists(_ allowlists: PeerAllowlists) {
        for (id, worker) in broker.workers where !allowlists.allows(worker.key, as: .worker) {
            dropWorker(id, reason: "its key was removed from the workers' allowlist")
        }
        for (id, client) in gate.clients where !allowlists.allows(client.key, as: .client) {
            logger.warning("client dropped", metadata: ["client": "\(id)", "key": "\(client.key)", "in_flight": "\(client.inFlight)",
                                                        "reason": "its key was removed from the clients' allowlist"])
            gate.remove(id)
            ignoreFromNowOn(id)
        }
        settle()
    }
}

/// CPU time consumed by the calling thread.
func threadCPUNanos() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts)
    return UInt64(ts.tv_sec) &* 1_000_000_000 &+ UInt64(ts.tv_nsec)
}

extension JobOwner {
    /// How many samples the job carries.
    var count: Int {
        switch self {
        case .generation(_, let envelopes): envelopes.count
        case .batch(_, let indices): indices.count
        }
    }
}
