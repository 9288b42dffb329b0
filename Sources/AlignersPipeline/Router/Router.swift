import AlignersCore
import AlignersSchema
import Foundation
import Logging
import Synchronization

public struct RouterSettings: Sendable, Equatable {
    /// Criteria the squad applies, in the order that breaks ties between equal means.
    public var criteria: [String]
    /// The gate: a sample goes to a criterion's aligner when its score is strictly below this.
    public var threshold: Double = 0.5
    /// Which rewrites stay after their re-inspection (`SquadRun.Acceptance`; the paper keeps all).
    public var acceptance: SquadRun.Acceptance = .always
    /// The rise of its own score that `improvement` asks of a rewrite.
    public var acceptanceMargin = 0.05
    /// Per-criterion margins in place of `acceptanceMargin` (`SquadRun.acceptanceMargins`).
    public var acceptanceMargins: [String: Double] = [:]
    /// The `noRegression` variant on or off (`--revert-regressions`).
    public var revertRegressions: Bool {
        get { acceptance != .always }
        set { acceptance = newValue ? .noRegression : .always }
    }
    /// Samples per squad batch (the order of criteria is decided per batch).
    public var batchSize: Int = 64
    /// How long a partial batch waits for more samples before it starts anyway.
    public var batchWindowMs: Int = 50
    /// Most envelopes in one job; smaller jobs spread a batch over more workers.
    public var jobSize: Int = 16
    /// Envelopes a client may have in flight.
    public var clientWindow: Int = 256
    /// Inspection as one job per chunk of samples for all the step's criteria (service
    /// `inspect.*`, served by an inspector set) instead of one job per criterion.
    public var combinedInspection = false
    /// Dispatches of one job before its samples fail.
    public var maxAttempts: Int = 3
    /// A job not answered this long after it was dispatched goes back to its queue for another
    /// worker (a new attempt); the worker holding it gets no more work until it answers or is lost.
    /// Generous: it bounds a stuck model, not a slow one (a CPU generator's job of 16 long answers
    /// can take minutes), and stays under the workers' own 600 s watchdog bound. nil: no deadline
    /// (in process, where no other worker could take a job over).
    public var jobTimeoutMs: Int? = 300_000
    /// Work for a service that no worker has served for this long fails (NO_WORKER).
    public var serviceTimeoutMs: Int = 60_000
    public var heartbeat = HeartbeatSettings()
    /// Largest message accepted from a client or worker (bigger ones drop that peer's connection).
    /// Clients send at most `FilterSettings.maxSubmitBytes` at once; a job's result holds `jobSize`
    /// envelopes of lines up to 4 MiB.
    public var maxMessageBytes = 128 << 20

    public init(criteria: [String]) { self.criteria = criteria }
}

/// How the router's endpoints are protected.
public struct RouterSecurity: Sendable {
    /// CURVE on every socket (front end, back end, tap), peers admitted by allowlist; nil: none.
    public var curve: CurveServerKeys?
    /// Allow plain tcp on addresses other than loopback (logged as a warning).
    public var insecure: Bool
    public init(curve: CurveServerKeys? = nil, insecure: Bool = false) {
        self.curve = curve
        self.insecure = insecure
    }
}

/// A CURVE router's key pair and the allowlists its ZAP handler checks.
public struct CurveServerKeys: Sendable {
    public let keyPair: CurveKeyPair
    public let allowlists: PeerAllowlists
    public init(keyPair: CurveKeyPair, allowlists: PeerAllowlists) {
        self.keyPair = keyPair
        self.allowlists = allowlists
    }
}

/// The router: clients submit envelopes at the front end, workers serve jobs at the back end, and
/// the squad policy decides, batch by batch, which jobs exist. One thread owns every socket.
///
/// Flow control is credit end to end: a client gets `clientWindow` envelopes of credit and more
/// only as results come back; a worker gets at most `credit` jobs at once. Nothing else queues.
///
/// Every job is tracked by attempt: each dispatch is a new attempt, held by exactly one worker, and
/// only that worker's answer to that attempt counts. An attempt ends when it is answered, when its
/// worker is lost (silent past its heartbeat expiry, gone, dropped) or when it passes the job
/// deadline; the job then goes back to its queue, or fails after `maxAttempts` dispatches. A late
/// answer to an ended attempt is counted and ignored, so a job is neither lost nor done twice.
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
    private let frontend: ZMQSocket
    private let backend: ZMQSocket
    private let tap: ZMQSocket?
    private let curve: CurveServerKeys?
    /// Answers CURVE handshakes; served by the router's thread like every other socket.
    private let zap: ZAPHandler?
    private let draining = Atomic<Bool>(false)
    /// Called from the router thread once per loop turn (systemd watchdog, status).
    public var onTick: (@Sendable (RouterStats) -> Void)?

    // State, touched only by the router thread.
    private var clients: [Identity: Client] = [:]
    private var workers: [Identity: WorkerState] = [:]
    private var services: [String: ServiceQueue] = [:]
    private var jobs: [UInt64: Job] = [:]
    private var batches: [UInt64: Batch] = [:]
    private var forming: [Sample] = []
    private var formingSince: UInt64 = 0
    /// Prompt-only samples waiting to go to the generator together (one job of up to `jobSize`), so
    /// that their answers come back together and join one squad batch.
    private var pendingGeneration: [Sample] = []
    private var pendingGenerationSince: UInt64 = 0
    private var nextJobID: UInt64 = 1
    private var nextBatchID: UInt64 = 1
    private var lastHeartbeat: UInt64 = 0
    /// Peers whose messages are ignored: workers dropped for bad results, peers whose key left the
    /// allowlists. (Bounded: cleared when it grows past 10,000.)
    private var ignored: Set<Identity> = []
    /// The allowlists' generation the peers were last checked against.
    private var allowlistGeneration: UInt64 = 0
    public private(set) var stats = RouterStats()
    private let metrics = PipelineMetrics.shared

    /// Binds the front end, back end and optional tap. Endpoints are ZeroMQ's (tcp://, ipc://, inproc://).
    /// Plain tcp on an address other than loopback needs `security.insecure` (else this throws).
    public init(context: ZMQContext, frontend: String, backend: String, tap: String? = nil,
                settings: RouterSettings, security: RouterSecurity = RouterSecurity(), logger: Logger) throws {
        self.settings = settings
        self.logger = logger
        for endpoint in [frontend, backend] + (tap.map { [$0] } ?? []) {
            if let warning = try EndpointPolicy.check(endpoint, use: "bind", encrypted: security.curve != nil, insecure: security.insecure,
                                                      remedy: Self.curveRemedy) {
                logger.warning("\(warning)")
            }
        }
        curve = security.curve
        // The handler is bound before any CURVE socket, so no handshake can find it missing.
        if let curve = security.curve {
            try Curve.requireAvailable()
            zap = try ZAPHandler(context: context, allowlists: curve.allowlists, logger: logger)
            allowlistGeneration = curve.allowlists.generation
        } else {
            zap = nil
        }
        self.frontend = try ZMQSocket(context, .router)
        self.backend = try ZMQSocket(context, .router)
        try self.frontend.setRouterMandatory()
        try self.backend.setRouterMandatory()
        try self.frontend.setMaxMessageSize(settings.maxMessageBytes)
        try self.backend.setMaxMessageSize(settings.maxMessageBytes)
        if let curve = security.curve {
            try self.frontend.makeCurveServer(curve.keyPair, zapDomain: PeerKind.client.zapDomain)
            try self.backend.makeCurveServer(curve.keyPair, zapDomain: PeerKind.worker.zapDomain)
        }
        try self.frontend.bind(frontend)
        try self.backend.bind(backend)
        if let tap {
            let pub = try ZMQSocket(context, .pub)
            if let curve = security.curve { try pub.makeCurveServer(curve.keyPair, zapDomain: PeerKind.tap.zapDomain) }
            try pub.bind(tap)
            self.tap = pub
        } else {
            self.tap = nil
        }
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

    public var frontendEndpoint: String { frontend.lastEndpoint }
    public var backendEndpoint: String { backend.lastEndpoint }
    public var tapEndpoint: String? { tap?.lastEndpoint }

    /// Stop taking new samples, finish those in flight, then return from `run()`. Thread-safe.
    public func drain() { draining.store(true, ordering: .relaxed) }
    public var isDraining: Bool { draining.load(ordering: .relaxed) }

    /// Serves until drained and idle. Call on a dedicated thread (it blocks).
    public func run() throws {
        var poller = ZMQPoller([frontend, backend] + (zap.map { [$0.socket] } ?? []))
        var announcedDrain = false
        var metadata: Logger.Metadata = ["frontend": "\(frontend.lastEndpoint)", "backend": "\(backend.lastEndpoint)",
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
            if ready[1] { try drainSocket(backend) { try handleBackend($0, key: $1) } }
            if ready[0] { try drainSocket(frontend) { try handleFrontend($0, key: $1) } }
            let now = monotonicNanos()
            if isDraining {
                if !announcedDrain {
                    announcedDrain = true
                    logger.info("router draining", metadata: ["in_flight": "\(stats.inFlight)"])
                }
                if !pendingGeneration.isEmpty { flushGeneration() }
                if !forming.isEmpty { startBatch(now: now) }
                if jobs.isEmpty && batches.isEmpty && forming.isEmpty && pendingGeneration.isEmpty {
                    logger.info("router drained", metadata: ["delivered": "\(stats.delivered)"])
                    return
                }
            }
            if !forming.isEmpty && (forming.count >= settings.batchSize
                || now - formingSince >= UInt64(settings.batchWindowMs) * 1_000_000) {
                startBatch(now: now)
            }
            if !pendingGeneration.isEmpty && now - pendingGenerationSince >= UInt64(settings.batchWindowMs) * 1_000_000 {
                flushGeneration()
            }
            if now - lastHeartbeat >= settings.heartbeat.intervalNs {
                lastHeartbeat = now
                sendHeartbeats()
                purgeDeadPeers(now: now)
                expireOverdueJobs(now: now)
                failStarvedJobs(now: now)
                metrics.gauge("aligners_queue_depth", [], Double(stats.queued))
                metrics.gauge("aligners_workers", [], Double(workers.count))
                metrics.gauge("aligners_in_flight", [], Double(stats.inFlight))
            }
            dispatch()
            stats.workers = workers.count
            stats.queued = services.values.reduce(0) { $0 + $1.queue.count }
            stats.cpuNanos = threadCPUNanos()
            stats.refusedPeers = zap?.refused ?? 0
            onTick?(stats)
        }
    }

    private func pollTimeout() -> Int {
        var ms = settings.heartbeat.intervalMs
        if !forming.isEmpty || !pendingGeneration.isEmpty { ms = min(ms, max(1, settings.batchWindowMs / 2)) }
        if isDraining { ms = min(ms, 50) }
        return ms
    }

    /// Handles what a socket holds, with each message's sender key ("" without CURVE).
    private func drainSocket(_ socket: ZMQSocket, _ handle: ([[UInt8]], String) throws -> Void) throws {
        // Bounded so one busy socket cannot starve the other or the timers.
        for _ in 0..<1000 {
            if curve == nil {
                guard let frames = try socket.receive(dontWait: true) else { return }
                try handle(frames, "")
            } else {
                guard let (frames, key) = try socket.receiveWithUserID(dontWait: true) else { return }
                try handle(frames, key)
            }
        }
    }

    // MARK: Front end (clients)

    private func handleFrontend(_ frames: [[UInt8]], key: String) throws {
        guard frames.count == 2, let message = WireMessage.decode(frames[1]) else {
            stats.rejectedFrames += 1
            return
        }
        let id = Identity(frames[0])
        guard !ignored.contains(id) else {
            stats.rejectedFrames += 1
            return
        }
        let now = monotonicNanos()
        if clients[id] == nil {
            // Admitted at its handshake; the list may have changed since (a reload).
            if let curve, !curve.allowlists.allows(key, as: .client) {
                ignore(id, "client's key is no longer in the allowlist", key: key)
                return
            }
            clients[id] = Client(lastSeen: now, key: key)
            logger.debug("client connected", metadata: ["client": "\(id)"])
            if !isDraining { grantCredit(id, settings.clientWindow) }
        }
        clients[id]!.lastSeen = now
        switch message.kind {
        case .submit(let submit) where message.routerIncarnation != 0 && message.routerIncarnation != incarnation:
            // Sent to the router we replaced (queued in the client's socket while we restarted): the
            // client sends these again once it sees our incarnation, so taking them would run them twice.
            logger.info("submission for a previous router ignored; the client sends it again",
                        metadata: ["client": "\(id)", "envelopes": "\(submit.envelopes.count)"])
        case .submit(let submit):
            accept(submit.envelopes, from: id, now: now)
        case .disconnect:
            clients[id]!.gone = true
        case .heartbeat, .none:
            break
        default:
            stats.rejectedFrames += 1
        }
    }

    private func grantCredit(_ client: Identity, _ n: Int) {
        var credit = Aligners_V1_Credit()
        credit.envelopes = UInt32(n)
        _ = try? frontend.send([client.bytes, stamped(WireMessage(.credit(credit)))], dontWait: true)
    }

    /// A message's bytes as this router sends them: with its incarnation.
    private func stamped(_ message: WireMessage) -> [UInt8] {
        var message = message
        message.routerIncarnation = incarnation
        return message.bytes()
    }

    private func accept(_ envelopes: [Envelope], from client: Identity, now: UInt64) {
        var overflow: [Envelope] = []
        for var envelope in envelopes {
            if clients[client]!.inFlight >= settings.clientWindow {
                envelope.error = EnvelopeError(.internal, "client sent more envelopes than its credit", stage: "router")
                overflow.append(envelope)
                continue
            }
            clients[client]!.inFlight += 1
            stats.received += 1
            stats.inFlight += 1
            if envelope.receivedUnixNs == 0 { envelope.receivedUnixNs = unixNanos() }
            envelope.attempt = 0
            let sample = Sample(envelope: envelope, client: client)
            if envelope.response.isEmpty {
                enqueueGeneration(sample, now: now)
            } else {
                addToBatch(sample, now: now)
            }
        }
        metrics.count("aligners_samples_total", [("stage", "router"), ("event", "received")], by: envelopes.count - overflow.count)
        if !overflow.isEmpty {
            logger.warning("client exceeded its credit", metadata: ["client": "\(client)", "rejected": "\(overflow.count)"])
            send(overflow, to: client, countsAgainstCredit: false)
        }
    }

    // MARK: Batches and the squad policy

    private func addToBatch(_ sample: Sample, now: UInt64) {
        if forming.isEmpty { formingSince = now }
        forming.append(sample)
        if forming.count >= settings.batchSize { startBatch(now: now) }
    }

    private func startBatch(now: UInt64) {
        let samples = Array(forming.prefix(settings.batchSize))
        forming.removeFirst(samples.count)
        if !forming.isEmpty { formingSince = now }
        let id = nextBatchID
        nextBatchID += 1
        var batch = Batch(id: id, samples: samples,
                          run: SquadRun(sampleCount: samples.count, criteria: settings.criteria, threshold: settings.threshold,
                                       acceptance: settings.acceptance, acceptanceMargin: settings.acceptanceMargin,
                                       acceptanceMargins: settings.acceptanceMargins))
        for i in batch.samples.indices {
            batch.samples[i].envelope.batch.id = id
            batch.samples[i].envelope.batch.size = UInt32(samples.count)
            batch.samples[i].envelope.batch.threshold = settings.threshold
        }
        stats.batches += 1
        batches[id] = batch
        startStep(of: id)
    }

    /// Turns the policy's current step into jobs, or finishes the batch.
    private func startStep(of batchID: UInt64) {
        guard var batch = batches.removeValue(forKey: batchID) else { return }
        batch.stepScores = [:]
        batch.stepChanged = []
        if case .align = batch.run.step { batch.previousResponses = [:] }
        let step = batch.run.step
        if case .finished = step {
            finish(batch)
            return
        }
        batches[batchID] = batch
        switch step {
        case .inspect(let criteria, let samples):
            for service in settings.combinedInspection ? [ServiceName.inspectAll] : criteria.map(ServiceName.inspect) {
                for chunk in samples.chunked(settings.jobSize) {
                    enqueue(service: service, envelopes: [], owner: .batch(batchID, Array(chunk)))
                }
            }
        case .align(let criterion, let samples):
            metrics.count("aligners_aligner_passes_total", [("criterion", criterion)], by: samples.count)
            for chunk in samples.chunked(settings.jobSize) {
                enqueue(service: ServiceName.align(criterion), envelopes: [], owner: .batch(batchID, Array(chunk)))
            }
        case .finished:
            break
        }
    }

    private func finish(_ batch: Batch) {
        let order = batch.run.order
        let notAligned = batch.run.criteria.filter { !batch.run.aligns($0) }
        var byClient: [Identity: [Envelope]] = [:]
        let now = unixNanos()
        for var sample in batch.samples {
            sample.envelope.batch.order = order
            sample.envelope.batch.notAligned = notAligned
            sample.envelope.completedUnixNs = now
            byClient[sample.client, default: []].append(sample.envelope)
        }
        for (client, envelopes) in byClient { send(envelopes, to: client, countsAgainstCredit: true) }
    }

    /// Returns finished envelopes to their client (and the tap), and gives the credit back.
    private func send(_ envelopes: [Envelope], to client: Identity, countsAgainstCredit: Bool) {
        var deliver = Aligners_V1_Deliver()
        deliver.envelopes = envelopes
        let bytes = stamped(WireMessage(.deliver(deliver)))
        if countsAgainstCredit {
            let failed = envelopes.filter { $0.hasError }.count
            metrics.count("aligners_samples_total", [("stage", "router"), ("event", "delivered")], by: envelopes.count)
            metrics.count("aligners_samples_total", [("stage", "router"), ("event", "failed")], by: failed)
            stats.delivered += envelopes.count
            stats.failed += failed
            stats.inFlight -= envelopes.count
        }
        if let tap { _ = try? tap.send([bytes], dontWait: true) }
        guard var state = clients[client] else { return }
        let sent = (try? frontend.send([client.bytes, bytes], dontWait: true)) ?? false
        if !sent { logger.warning("client gone; results dropped", metadata: ["client": "\(client)", "envelopes": "\(envelopes.count)"]) }
        if countsAgainstCredit {
            state.inFlight -= envelopes.count
            clients[client] = state
            if sent && !isDraining { grantCredit(client, envelopes.count) }
        }
    }

    // MARK: Jobs

    private func enqueue(service: String, envelopes: [Envelope], owner: Job.Owner) {
        let id = nextJobID
        nextJobID += 1
        jobs[id] = Job(id: id, attempt: 1, service: service, envelopes: envelopes, owner: owner,
                       worker: nil, queuedAt: monotonicNanos())
        services[service, default: ServiceQueue()].queue.append(id)
        if case .batch(let batchID, _) = owner { batches[batchID]?.outstanding.insert(id) }
        stats.jobs += 1
    }

    private func enqueueGeneration(_ sample: Sample, now: UInt64) {
        if pendingGeneration.isEmpty { pendingGenerationSince = now }
        pendingGeneration.append(sample)
        if pendingGeneration.count >= settings.jobSize { flushGeneration() }
    }

    /// One generation job per client among the pending samples.
    private func flushGeneration() {
        var byClient: [(Identity, [Envelope])] = []
        for s in pendingGeneration {
            if let i = byClient.firstIndex(where: { $0.0 == s.client }) { byClient[i].1.append(s.envelope) } else { byClient.append((s.client, [s.envelope])) }
        }
        pendingGeneration = []
        for (client, envelopes) in byClient { enqueue(service: ServiceName.generate, envelopes: envelopes, owner: .generation(client)) }
    }

    /// Hands queued jobs to ready workers, least recently used first, within each worker's credit.
    private func dispatch() {
        for name in services.keys {
            while let jobID = services[name]!.queue.first, let workerID = services[name]!.ready.first {
                services[name]!.ready.removeFirst()
                guard var worker = workers[workerID], worker.canTakeWork else { continue }
                guard var job = jobs[jobID] else {
                    services[name]!.queue.removeFirst()
                    services[name]!.ready.insert(workerID, at: 0)
                    continue
                }
                var wire = Aligners_V1_Job()
                wire.id = job.id
                wire.attempt = UInt32(job.attempt)
                wire.service = job.service
                // Each envelope of a job says which dispatch of that job it came in.
                wire.envelopes = envelopes(of: job).map { var e = $0; e.attempt = UInt32(job.attempt); return e }
                let sent = (try? backend.send([workerID.bytes, stamped(WireMessage(.job(wire)))], dontWait: true)) ?? false
                if !sent {
                    // The worker vanished between heartbeats; forget it. The job stays first in line.
                    forgetWorker(workerID, reason: "unreachable")
                    continue
                }
                services[name]!.queue.removeFirst()
                job.worker = workerID
                job.dispatchedAt = monotonicNanos()
                job.dispatches = job.attempt
                jobs[jobID] = job
                worker.held[jobID] = job.attempt
                workers[workerID] = worker
                if worker.canTakeWork { services[name]!.ready.append(workerID) }
                stats.dispatched += 1
            }
        }
    }

    /// Puts a worker back in its service's line if it may take another job (and is not there yet).
    private func offerWork(to id: Identity) {
        guard let worker = workers[id], worker.canTakeWork, !(services[worker.service]?.ready.contains(id) ?? false) else { return }
        services[worker.service, default: ServiceQueue()].ready.append(id)
    }

    /// A job's envelopes as they stand now: a batch job's come from its batch (so a re-queued job
    /// carries every score merged since), a generation job holds its own.
    private func envelopes(of job: Job) -> [Envelope] {
        switch job.owner {
        case .generation: return job.envelopes
        case .batch(let batchID, let indices):
            guard let batch = batches[batchID] else { return [] }
            return indices.map { batch.samples[$0].envelope }
        }
    }

    private func jobIDs(of job: Job) -> [String] {
        switch job.owner {
        case .generation: return job.envelopes.map(\.id)
        case .batch(let batchID, let indices):
            guard let batch = batches[batchID] else { return [] }
            return indices.map { batch.samples[$0].envelope.id }
        }
    }

    // MARK: Back end (workers)

    private func handleBackend(_ frames: [[UInt8]], key: String) throws {
        guard frames.count == 2, let message = WireMessage.decode(frames[1]) else {
            stats.rejectedFrames += 1
            return
        }
        let id = Identity(frames[0])
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
            return
        }
        guard workers[id] != nil else {
            // A worker we do not know (we restarted, or purged it): ask it to register again.
            _ = try? backend.send([id.bytes, stamped(.disconnect("unknown worker: send Ready"))], dontWait: true)
            return
        }
        workers[id]!.lastSeen = now
        switch message.kind {
        case .result(let result) where message.routerIncarnation != 0 && message.routerIncarnation != incarnation:
            // An answer to a job of the router we replaced: ours never gave it (its id may even
            // name one of ours).
            stats.lateResults += 1
            metrics.count("aligners_late_results_total", [("service", workers[id]!.service)])
            logger.info("answer to a previous router's job ignored", metadata: ["worker": "\(workers[id]!.name)", "job": "\(result.id)"])
        case .result(let result):
            complete(result, from: id)
        case .disconnect(let d):
            if d.reason == "draining" {
                workers[id]!.draining = true
                services[workers[id]!.service]?.ready.removeAll { $0 == id }
                logger.info("worker draining", metadata: ["worker": "\(workers[id]!.name)"])
            } else {
                forgetWorker(id, reason: d.reason.isEmpty ? "disconnected" : d.reason)
            }
        case .heartbeat, .none:
            break
        default:
            stats.rejectedFrames += 1
        }
    }

    private func register(_ id: Identity, _ ready: Aligners_V1_Ready, now: UInt64, key: String) {
        guard !ready.service.isEmpty, ready.credit > 0 else {
            stats.rejectedFrames += 1
            return
        }
        if workers[id] != nil { forgetWorker(id, reason: "registered again") }
        // A worker that found us silent reconnects on a new socket: its old registration goes (and
        // the jobs it held are requeued) instead of counting it twice until its heartbeats expire.
        if !ready.worker.isEmpty {
            for (other, w) in workers where w.name == ready.worker && w.service == ready.service {
                forgetWorker(other, reason: "reconnected")
            }
        }
        let credit = Int(min(ready.credit, 1024))
        let name = ready.worker.isEmpty ? "\(id)" : ready.worker
        // Its heartbeats are expected at its own interval if slower than ours (a worker of an older
        // build announces none: ours then).
        let timing = ready.hasHeartbeat ? HeartbeatSettings(ready.heartbeat) : nil
        let expiry = settings.heartbeat.expiryNs(peer: timing)
        workers[id] = WorkerState(service: ready.service, name: name, model: ready.model, key: key, credit: credit,
                                  expiryNs: expiry, lastSeen: now)
        services[ready.service, default: ServiceQueue()].ready.append(id)
        services[ready.service]!.everServed = true
        services[ready.service]!.lastWorkerSeen = now
        // Our timing at once, so the worker need not wait a heartbeat to learn it.
        _ = try? backend.send([id.bytes, stamped(.heartbeat(settings.heartbeat))], dontWait: true)
        var metadata: Logger.Metadata = ["worker": "\(name)", "service": "\(ready.service)",
                                         "model": "\(ready.model)", "credit": "\(credit)"]
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
        guard var worker = workers[workerID] else { return }
        // An id the router never issued is no late answer: the worker is broken or hostile.
        guard result.id > 0, result.id < nextJobID else {
            dropWorker(workerID, reason: "answered job \(result.id), which the router never dispatched")
            return
        }
        // Exactly once: only the worker holding the job's current attempt answers it.
        let attempt = Int(result.attempt)
        let current = jobs[result.id].map { $0.worker == workerID && $0.attempt == attempt } ?? false
        if current, let job = jobs[result.id], let problem = problem(with: result, for: job) {
            dropWorker(workerID, reason: problem)   // the job is still held, so it goes back to its queue
            return
        }
        // The answer ends the worker's hold on that attempt, current or not: it is free for more work.
        if worker.held[result.id] == attempt {
            worker.held[result.id] = nil
            worker.overdue.remove(result.id)
            workers[workerID] = worker
            offerWork(to: workerID)
        }
        guard current, let job = jobs[result.id] else {
            // An attempt that ended (past its deadline, or its worker presumed dead) and ran again
            // elsewhere, or a duplicate: the job's current attempt still decides.
            stats.lateResults += 1
            metrics.count("aligners_late_results_total", [("service", worker.service)])
            logger.info("late result ignored", metadata: [
                "worker": "\(worker.name)", "service": "\(worker.service)", "job": "\(result.id)", "attempt": "\(attempt)",
                "current_attempt": "\(jobs[result.id].map { "\($0.attempt)" } ?? "none (finished)")"])
            return
        }
        jobs[result.id] = nil
        metrics.time("aligners_stage_latency_seconds", [("service", job.service)], nanoseconds: monotonicNanos() - job.dispatchedAt)
        if result.hasError {
            fail(job, result.error)
            return
        }
        switch job.owner {
        case .generation(let client):
            for (delta, sent) in zip(result.envelopes, job.envelopes) {
                var envelope = sent
                envelope.noteDispatches(of: job)
                if delta.hasError {
                    envelope.error = delta.error
                    send([envelope], to: client, countsAgainstCredit: true)
                } else {
                    envelope.response = delta.response
                    envelope.originalResponse = delta.response
                    envelope.generated = true
                    addToBatch(Sample(envelope: envelope, client: client), now: monotonicNanos())
                }
            }
        case .batch(let batchID, let indices):
            guard var batch = batches.removeValue(forKey: batchID) else { return }
            for i in indices { batch.samples[i].envelope.noteDispatches(of: job) }
            merge(result.envelopes, indices: indices, service: job.service, into: &batch)
            batch.outstanding.remove(job.id)
            batches[batchID] = batch
            if batch.outstanding.isEmpty { completeStep(of: batchID) }
        }
    }

    /// What makes a worker's answer to `job` unusable, or nil when nothing does. Such an answer is the
    /// worker's fault (a bug, a hostile peer), not the samples': the worker is dropped and the job
    /// runs elsewhere. (Stages clamp their scores, but the router must not count on it.)
    private func problem(with result: Aligners_V1_JobResult, for job: Job) -> String? {
        if result.hasError { return nil }   // a failure report is an answer
        let expected = jobIDs(of: job)
        guard result.envelopes.count == expected.count else {
            return "returned \(result.envelopes.count) envelopes for a job of \(expected.count)"
        }
        for (delta, id) in zip(result.envelopes, expected) where delta.id != id {
            return "returned envelope '\(delta.id.prefix(64))' in place of the job's '\(id)'"
        }
        let service = StageService(name: job.service)
        let criterion = service?.criterion ?? ""
        var required: [String] = []
        switch service {
        case .inspectAll:
            if case .batch(let batchID, _) = job.owner, case .inspect(let criteria, _)? = batches[batchID]?.run.step { required = criteria }
        case .inspect(let c): required = [c]
        default: break
        }
        for delta in result.envelopes where !delta.hasError {
            for record in delta.scores where !(record.score.isFinite && (0...1).contains(record.score)) {
                return "scored \(record.criterion) \(record.score) for envelope '\(delta.id)' (a score is a number in [0, 1])"
            }
            if let missing = required.first(where: { c in !delta.scores.contains { $0.criterion == c } }) {
                return "returned no \(missing) score for envelope '\(delta.id)'"
            }
            if case .align? = service, let step = delta.steps.first(where: { $0.criterion != criterion }) {
                return "recorded a step for '\(step.criterion.prefix(64))' in a job for \(criterion)"
            }
        }
        return nil
    }

    /// Folds a worker's deltas (what the stage added, see `JobResult`) into the batch's envelopes
    /// and the step's tallies, mutating them in place.
    private func merge(_ deltas: [Envelope], indices: [Int], service: String, into batch: inout Batch) {
        let typed = StageService(name: service)
        let isInspect = typed?.isInspection ?? false
        let criterion = typed?.criterion ?? ""
        var inspected: Set<String> = [criterion]
        if typed == .inspectAll, case .inspect(let criteria, _) = batch.run.step { inspected = Set(criteria) }
        for (delta, index) in zip(deltas, indices) {
            if delta.hasError {
                batch.samples[index].envelope.error = delta.error
                batch.run.drop([index])
                continue
            }
            if isInspect {
                let pass = UInt32(batch.samples[index].envelope.steps.count)
                for var record in delta.scores where inspected.contains(record.criterion) {
                    let criterion = record.criterion
                    record.pass = pass
                    batch.samples[index].envelope.scores.append(record)
                    batch.stepScores[index, default: [:]][criterion] = record.score
                    metrics.record("aligners_inspector_score", [("criterion", criterion)], record.score)
                    // The re-inspection after a pass is that pass's "after" score.
                    if let last = batch.samples[index].envelope.steps.indices.last,
                       batch.samples[index].envelope.steps[last].criterion == criterion,
                       batch.samples[index].envelope.steps[last].scoreAfter.isNaN {
                        batch.samples[index].envelope.steps[last].scoreAfter = record.score
                    }
                }
            } else {
                let before = batch.run.scores[index][criterion] ?? .nan
                for var step in delta.steps {
                    step.scoreBefore = before
                    step.scoreAfter = .nan
                    batch.samples[index].envelope.steps.append(step)
                }
                if !delta.response.isEmpty && delta.response != batch.samples[index].envelope.response {
                    batch.previousResponses[index] = batch.samples[index].envelope.response
                    batch.samples[index].envelope.response = delta.response
                    batch.stepChanged.insert(index)
                }
            }
        }
    }

    private func completeStep(of batchID: UInt64) {
        guard var batch = batches.removeValue(forKey: batchID) else { return }
        switch batch.run.step {
        case .inspect:
            batch.run.recordScores(batch.stepScores)
            for index in batch.run.reverted { revertLastPass(of: index, in: &batch) }
        case .align:
            batch.run.recordAlignment(changed: batch.stepChanged)
        case .finished:
            break
        }
        batches[batchID] = batch
        startStep(of: batchID)
    }

    /// Puts back the response from before the sample's last aligner pass and drops that pass's
    /// inspection records (they scored a response that is gone); the step stays, marked.
    private func revertLastPass(of index: Int, in batch: inout Batch) {
        guard let previous = batch.previousResponses[index], let last = batch.samples[index].envelope.steps.indices.last else { return }
        var envelope = batch.samples[index].envelope
        let pass = UInt32(envelope.steps.count)
        let criterion = envelope.steps[last].criterion
        envelope.response = previous
        envelope.scores.removeAll { $0.pass == pass }
        envelope.steps[last].changed = false
        let before = envelope.steps[last].scoreBefore, after = envelope.steps[last].scoreAfter
        let why = after < before ? "lowered the \(criterion) score"
            : batch.run.acceptance == .improvement && after >= before + batch.run.margin(for: criterion) ? "made another criterion fail"
            : "did not raise the \(criterion) score by \(batch.run.margin(for: criterion))"
        envelope.steps[last].note = "reverted: the rewrite \(why) "
            + "(\((before * 100).rounded() / 100) → \((after * 100).rounded() / 100)); kept the answer from before this pass"
        batch.samples[index].envelope = envelope
        metrics.count("aligners_reverted_passes_total", [("criterion", criterion)])
    }

    /// The job's samples carry `error` from here on and leave the squad.
    private func fail(_ job: Job, _ error: EnvelopeError) {
        jobs[job.id] = nil
        let count: Int
        switch job.owner {
        case .generation: count = job.envelopes.count
        case .batch(_, let indices): count = indices.count
        }
        logger.warning("job failed", metadata: ["service": "\(job.service)", "envelopes": "\(count)", "error": "\(error.message)"])
        switch job.owner {
        case .generation(let client):
            let failed = job.envelopes.map { var e = $0; e.error = error; e.noteDispatches(of: job); return e }
            send(failed, to: client, countsAgainstCredit: true)
        case .batch(let batchID, let indices):
            guard var batch = batches.removeValue(forKey: batchID) else { return }
            for i in indices {
                batch.samples[i].envelope.error = error
                batch.samples[i].envelope.noteDispatches(of: job)
            }
            batch.run.drop(indices)
            batch.outstanding.remove(job.id)
            batches[batchID] = batch
            if batch.outstanding.isEmpty { completeStep(of: batchID) }
        }
    }

    // MARK: Liveness

    private func sendHeartbeats() {
        let beat = stamped(.heartbeat(settings.heartbeat))
        for id in workers.keys { _ = try? backend.send([id.bytes, beat], dontWait: true) }
        for (id, client) in clients where !client.gone { _ = try? frontend.send([id.bytes, beat], dontWait: true) }
    }

    private func purgeDeadPeers(now: UInt64) {
        let expiry = settings.heartbeat.expiryNs
        for (id, worker) in workers where now - worker.lastSeen > worker.expiryNs {
            forgetWorker(id, reason: "silent for \(worker.expiryNs / 1_000_000) ms (\(settings.heartbeat.liveness) heartbeats)")
        }
        for (id, client) in clients where client.inFlight == 0 && (client.gone || now - client.lastSeen > expiry * 10) {
            clients[id] = nil
        }
        // A worker stuck past a job deadline does not serve its service (see `failStarvedJobs`).
        for worker in workers.values where worker.overdue.isEmpty { services[worker.service]?.lastWorkerSeen = now }
    }

    /// Drops a worker that cannot be trusted: its jobs go back to their queues, it is told why, and
    /// what it sends on this connection is ignored. (It may connect again; with CURVE, only while
    /// its key is allowlisted.)
    private func dropWorker(_ id: Identity, reason: String) {
        _ = try? backend.send([id.bytes, stamped(.disconnect("dropped: \(reason)"))], dontWait: true)
        stats.droppedWorkers += 1
        metrics.count("aligners_workers_dropped_total")
        forgetWorker(id, reason: reason, dropped: true)
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
        for (id, worker) in workers where !allowlists.allows(worker.key, as: .worker) {
            dropWorker(id, reason: "its key was removed from the workers' allowlist")
        }
        for (id, client) in clients where !allowlists.allows(client.key, as: .client) {
            logger.warning("client dropped", metadata: ["client": "\(id)", "key": "\(client.key)", "in_flight": "\(client.inFlight)",
                                                        "reason": "its key was removed from the clients' allowlist"])
            clients[id] = nil
            ignoreFromNowOn(id)
        }
    }

    /// Removes a worker; the jobs it held go back to the front of their queue for another worker.
    private func forgetWorker(_ id: Identity, reason: String, dropped: Bool = false) {
        guard let worker = workers.removeValue(forKey: id) else { return }
        services[worker.service]?.ready.removeAll { $0 == id }
        // Only the attempts it still holds as current: a job whose attempt passed its deadline
        // already went back to its queue.
        let current = worker.held.filter { jobs[$0.key]?.worker == id && jobs[$0.key]?.attempt == $0.value }.keys
        var metadata: Logger.Metadata = ["worker": "\(worker.name)", "service": "\(worker.service)",
                                         "reason": "\(reason)", "requeued_jobs": "\(current.count)"]
        if !worker.key.isEmpty { metadata["key"] = "\(worker.key)" }
        if dropped {
            logger.error("worker dropped", metadata: metadata)
        } else {
            logger.log(level: reason == "stopped" && current.isEmpty ? .info : .warning,
                       reason == "stopped" ? "worker left" : "worker lost", metadata: metadata)
        }
        // Back to the front of the queue, oldest first.
        for jobID in current.sorted().reversed() {
            requeue(jobID, because: dropped ? "its worker was dropped (\(reason))" : "its worker was lost (\(reason))")
        }
    }

    /// Ends the job's current attempt: the job goes to the front of its queue for another worker,
    /// or fails once it has been dispatched `maxAttempts` times.
    private func requeue(_ jobID: UInt64, because why: String) {
        guard var job = jobs[jobID] else { return }
        job.worker = nil
        job.attempt += 1
        if job.attempt > settings.maxAttempts {
            fail(job, EnvelopeError(.retriesExhausted,
                                    "\(job.service) was dispatched \(settings.maxAttempts) times (--max-attempts) and no attempt was "
                                        + "answered; the last one ended because \(why). Check the \(job.service) workers' logs",
                                    stage: job.service))
            return
        }
        jobs[jobID] = job
        services[job.service, default: ServiceQueue()].queue.insert(jobID, at: 0)
        stats.requeued += 1
    }

    /// Re-queues jobs not answered within `jobTimeoutMs` of their dispatch. Their workers keep the
    /// attempt (they are still busy with it: answering frees them, the answer itself is ignored) and
    /// get no more work until then, so a worker that heartbeats but never answers stops taking jobs.
    private func expireOverdueJobs(now: UInt64) {
        guard let timeoutMs = settings.jobTimeoutMs else { return }
        let timeout = UInt64(timeoutMs) * 1_000_000
        for (jobID, job) in jobs.sorted(by: { $0.key > $1.key }) {
            guard let workerID = job.worker, now - job.dispatchedAt > timeout else { continue }
            let name = workers[workerID]?.name ?? "\(workerID)"
            if var worker = workers[workerID] {
                worker.overdue.insert(jobID)
                workers[workerID] = worker
                services[worker.service]?.ready.removeAll { $0 == workerID }
            }
            stats.expiredDeadlines += 1
            metrics.count("aligners_job_deadlines_expired_total", [("service", job.service)])
            logger.warning("job passed its deadline; re-queued", metadata: [
                "worker": "\(name)", "service": "\(job.service)", "job": "\(jobID)", "attempt": "\(job.attempt)",
                "job_timeout_ms": "\(timeoutMs)",
                "note": "the worker gets no more work until it answers; raise --job-timeout-ms if its model is just slow"])
            requeue(jobID, because: "\(name) did not answer within --job-timeout-ms \(timeoutMs)")
        }
    }

    /// Fails queued jobs whose service has had no worker for `serviceTimeoutMs`. Workers stuck past
    /// a job deadline do not count: with only those, work would wait (and a drain last) forever.
    private func failStarvedJobs(now: UInt64) {
        let timeout = UInt64(settings.serviceTimeoutMs) * 1_000_000
        for (name, service) in services where !service.queue.isEmpty && service.ready.isEmpty {
            let serving = workers.values.filter { $0.service == name }
            if serving.contains(where: { $0.overdue.isEmpty }) { continue }
            let since = service.everServed ? service.lastWorkerSeen : (jobs[service.queue[0]]?.queuedAt ?? now)
            guard now - since > timeout else { continue }
            let typed = StageService(name: name)
            let start = "start one with `aligners worker --role \(typed?.role ?? "aligner")"
                + (typed?.criterion.map { " --criterion \($0)`" } ?? (typed == .inspectAll ? " --criteria …`" : "`"))
            let message = serving.isEmpty ? "no worker serves '\(name)'; \(start)"
                : "every worker serving '\(name)' (\(serving.map(\.name).sorted().joined(separator: ", "))) has held a job past "
                    + "--job-timeout-ms \(settings.jobTimeoutMs ?? 0) without answering: restart it (a stuck model?), or \(start)"
            // Taken off the queue first: failing a job can start its batch's next step.
            let starved = service.queue
            services[name]!.queue.removeAll()
            for jobID in starved {
                if let job = jobs[jobID] { fail(job, EnvelopeError(.noWorker, message, stage: name)) }
            }
        }
    }
}

/// What the router has done so far (for status lines and metrics).
public struct RouterStats: Sendable, Equatable {
    public var received = 0
    public var delivered = 0
    public var failed = 0
    public var inFlight = 0
    public var batches = 0
    public var dispatched = 0
    public var jobs = 0
    public var requeued = 0
    /// Jobs re-queued because their worker did not answer within `jobTimeoutMs`.
    public var expiredDeadlines = 0
    /// Answers to attempts that had ended (a job re-queued and run elsewhere), ignored.
    public var lateResults = 0
    public var rejectedFrames = 0
    /// Workers dropped for answers that were not valid, or whose key left the allowlist.
    public var droppedWorkers = 0
    /// CURVE handshakes refused (keys not on the allowlist).
    public var refusedPeers = 0
    public var workers = 0
    public var queued = 0
    /// CPU time the router's thread has used (its own cost, whatever else shares the cores).
    public var cpuNanos: UInt64 = 0
}

/// CPU time consumed by the calling thread.
func threadCPUNanos() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts)
    return UInt64(ts.tv_sec) &* 1_000_000_000 &+ UInt64(ts.tv_nsec)
}

// MARK: Router state

struct Identity: Hashable, CustomStringConvertible {
    let bytes: [UInt8]
    init(_ bytes: [UInt8]) { self.bytes = bytes }
    var description: String { bytes.map { String(format: "%02x", $0) }.joined() }
}

struct Sample {
    var envelope: Envelope
    let client: Identity
}

struct Client {
    var lastSeen: UInt64
    /// The CURVE public key it connected with ("" without CURVE).
    var key = ""
    var inFlight = 0
    var gone = false
}

struct WorkerState {
    let service: String
    let name: String
    let model: String
    /// The CURVE public key it connected with ("" without CURVE).
    let key: String
    /// Jobs it may hold at once.
    let credit: Int
    /// Silence after which it counts as dead (our liveness at the slower of our and its interval).
    let expiryNs: UInt64
    var lastSeen: UInt64
    /// The jobs it was given and has not answered, with the attempt each was given as. An attempt
    /// past its deadline stays held (the worker is still busy with it) while the job runs elsewhere.
    var held: [UInt64: Int] = [:]
    /// Held attempts past their deadline: until it answers them, it gets no more work.
    var overdue: Set<UInt64> = []
    var draining = false

    var canTakeWork: Bool { !draining && overdue.isEmpty && held.count < credit }
}

struct ServiceQueue {
    var queue: [UInt64] = []
    /// Workers with credit, least recently given work first.
    var ready: [Identity] = []
    var everServed = false
    var lastWorkerSeen: UInt64 = 0
}

struct Job {
    enum Owner {
        case generation(Identity)
        case batch(UInt64, [Int])
    }
    let id: UInt64
    /// The current attempt, from 1; one more each time the job goes back to its queue.
    var attempt: Int
    let service: String
    /// Only for generation jobs; a batch job's envelopes are read from its batch when sent.
    let envelopes: [Envelope]
    let owner: Owner
    /// The worker holding the current attempt; nil while queued.
    var worker: Identity?
    let queuedAt: UInt64
    /// When the current attempt was dispatched (its deadline runs from here).
    var dispatchedAt: UInt64 = 0
    /// Times the job has been sent to a worker (its attempts so far; 0 while never dispatched).
    var dispatches = 0
}

extension Envelope {
    /// A delivered envelope's `attempt`: the most dispatches any of its jobs needed (1 when every
    /// job ran once; a job re-queued after a lost worker or a deadline counts each dispatch).
    mutating func noteDispatches(of job: Job) {
        attempt = max(attempt, UInt32(clamping: job.dispatches))
    }
}

struct Batch {
    let id: UInt64
    var samples: [Sample]
    var run: SquadRun
    var outstanding: Set<UInt64> = []
    var stepScores: [Int: [String: Double]] = [:]
    var stepChanged: Set<Int> = []
    /// Responses from before the current aligner pass, of the samples it changed.
    var previousResponses: [Int: String] = [:]
}

extension Array {
    func chunked(_ size: Int) -> [ArraySlice<Element>] {
        stride(from: 0, to: count, by: Swift.max(1, size)).map { self[$0..<Swift.min($0 + Swift.max(1, size), count)] }
    }
}
