import Foundation
import Logging

/// The Majordomo half of the router: services, their workers and queued jobs, each job's attempts,
/// and liveness. It owns no socket: the router feeds it what peers said and sends what it decides,
/// so its bookkeeping is tested directly (`BrokerTests`).
///
/// Every job is tracked by attempt: each dispatch is a new attempt, held by exactly one worker, and
/// only that worker's answer to that attempt counts. An attempt ends when it is answered, when its
/// worker is lost (silent past its heartbeat expiry, gone, dropped) or when it passes the job
/// deadline; the job then goes back to the front of its queue, or fails after `maxAttempts`
/// dispatches (collected in `takeFailed()`). A late answer to an ended attempt frees its worker
/// and is otherwise ignored, so a job is neither lost nor done twice.
struct Broker {
    struct Settings {
        var maxAttempts = 3
        var jobTimeoutMs: Int?
        var serviceTimeoutMs = 60_000
        var heartbeat = HeartbeatSettings()
        /// The squad's criteria (what an inspect worker must score; named in advice).
        var criteria: [String] = []
    }

    /// What became of a worker's answer.
    enum Answer {
        /// The answer to the job's current attempt: the job is done and leaves the broker.
        case current(Job)
        /// An answer to an attempt that had ended (or a duplicate); `currentAttempt` is nil when
        /// the job itself is finished.
        case late(service: StageService, currentAttempt: Int?)
        /// A sender the broker does not know (it must register first).
        case unknownWorker
        /// Not a valid answer (an id never issued, or `validate` found fault): the worker goes.
        case invalid(String)
    }

    let settings: Settings
    private let logger: Logger
    private let metrics: PipelineMetrics
    private(set) var workers: [Identity: WorkerState] = [:]
    private var services: [StageService: ServiceQueue] = [:]
    private(set) var jobs: [UInt64: Job] = [:]
    private var nextJobID: UInt64 = 1
    /// Jobs that ran out of attempts or workers, for the owner to fail.
    private var failed: [(Job, EnvelopeError)] = []
    private(set) var dispatched = 0
    private(set) var submitted = 0
    private(set) var requeued = 0
    private(set) var expiredDeadlines = 0
    private(set) var lateResults = 0

    init(settings: Settings, logger: Logger, metrics: PipelineMetrics = .shared) {
        self.settings = settings
        self.logger = logger
        self.metrics = metrics
    }

    var isIdle: Bool { jobs.isEmpty }
    var queued: Int { services.values.reduce(0) { $0 + $1.queue.count } }

    // MARK: Jobs

    /// Queues a job for `service`; it waits for a worker of that service.
    @discardableResult
    mutating func submit(_ service: StageService, owner: JobOwner, now: UInt64) -> UInt64 {
        let id = nextJobID
        nextJobID += 1
        jobs[id] = Job(id: id, attempt: 1, service: service, owner: owner, worker: nil, queuedAt: now)
        services[service, default: ServiceQueue()].queue.append(id)
        submitted += 1
        return id
    }

    /// The next (job, worker) pair to dispatch: the oldest queued job of a service with a ready
    /// worker, least recently used worker first. Nothing changes until the caller reports
    /// `dispatched` (the send worked) or `unreachable` (it did not: the job stays first in line).
    mutating func nextDispatch() -> (job: Job, worker: Identity)? {
        for service in services.keys {
            while let jobID = services[service]!.queue.first, let workerID = services[service]!.ready.first {
                guard let worker = workers[workerID], worker.canTakeWork else {
                    services[service]!.ready.removeFirst()
                    continue
                }
                guard let job = jobs[jobID] else {
                    services[service]!.queue.removeFirst()
                    continue
                }
                return (job, workerID)
            }
        }
        return nil
    }

    /// The job's current attempt went to `worker`.
    mutating func dispatched(_ jobID: UInt64, to workerID: Identity, now: UInt64) {
        guard var job = jobs[jobID], var worker = workers[workerID] else { return }
        services[job.service]!.queue.removeAll { $0 == jobID }
        services[job.service]!.ready.removeAll { $0 == workerID }
        job.worker = workerID
        job.dispatchedAt = now
        job.dispatches = job.attempt
        jobs[jobID] = job
        worker.held[jobID] = job.attempt
        workers[workerID] = worker
        if worker.canTakeWork { services[job.service]!.ready.append(workerID) }
        dispatched += 1
    }

    /// A worker's answer to attempt `attempt` of job `jobID`. `validate` checks a current answer's
    /// content (nil: usable); an unusable one drops the worker and its jobs go back to their queues.
    mutating func answer(_ jobID: UInt64, attempt: Int, from workerID: Identity, validate: (Job) -> String?) -> Answer {
        guard var worker = workers[workerID] else { return .unknownWorker }
        // An id the broker never issued is no late answer: the worker is broken or hostile.
        guard jobID > 0, jobID < nextJobID else { return .invalid("answered job \(jobID), which the router never dispatched") }
        let current = jobs[jobID].map { $0.worker == workerID && $0.attempt == attempt } ?? false
        if current, let job = jobs[jobID], let problem = validate(job) { return .invalid(problem) }
        // The answer ends the worker's hold on that attempt, current or not: it is free for more work.
        if worker.held[jobID] == attempt {
            worker.held[jobID] = nil
            worker.overdue.remove(jobID)
            workers[workerID] = worker
            offerWork(to: workerID)
        }
        guard current, let job = jobs.removeValue(forKey: jobID) else {
            lateResults += 1
            return .late(service: worker.service, currentAttempt: jobs[jobID]?.attempt)
        }
        return .current(job)
    }

    /// Ends the job's current attempt: it goes to the front of its queue for another worker, or
    /// fails once it has been dispatched `maxAttempts` times.
    mutating func requeue(_ jobID: UInt64, because why: String) {
        guard var job = jobs[jobID] else { return }
        job.worker = nil
        job.attempt += 1
        if job.attempt > settings.maxAttempts {
            jobs[jobID] = nil
            failed.append((job, EnvelopeError(.retriesExhausted,
                                              "\(job.service.name) was dispatched \(settings.maxAttempts) times (--max-attempts) and "
                                                  + "no attempt was answered; the last one ended because \(why). Check the "
                                                  + "\(job.service.name) workers' logs",
                                              stage: job.service.name)))
            return
        }
        jobs[jobID] = job
        services[job.service, default: ServiceQueue()].queue.insert(jobID, at: 0)
        requeued += 1
    }

    /// Jobs that failed since the last call (out of attempts, or no worker for their service).
    mutating func takeFailed() -> [(Job, EnvelopeError)] {
        defer { failed = [] }
        return failed
    }

    // MARK: Workers

    /// Registers a worker (again: its old registration goes first). A worker that found the router
    /// silent reconnects on a new socket under the same name: that old registration goes too.
    mutating func register(_ id: Identity, _ worker: WorkerState, now: UInt64) {
        if workers[id] != nil { forget(id, reason: "registered again") }
        for (other, w) in workers where w.name == worker.name && w.service == worker.service {
            forget(other, reason: "reconnected")
        }
        workers[id] = worker
        services[worker.service, default: ServiceQueue()].ready.append(id)
        services[worker.service]!.everServed = true
        services[worker.service]!.lastWorkerSeen = now
    }

    /// Notes a message from a known worker; false for one the broker does not know.
    mutating func heard(from id: Identity, now: UInt64) -> Bool {
        guard workers[id] != nil else { return false }
        workers[id]!.lastSeen = now
        return true
    }

    /// A worker finishing what it holds before it stops: it gets no more work.
    mutating func draining(_ id: Identity) {
        guard workers[id] != nil else { return }
        workers[id]!.draining = true
        services[workers[id]!.service]?.ready.removeAll { $0 == id }
    }

    /// Removes a worker; the attempts it still holds as current go back to the front of their
    /// queue, oldest first. Returns how many went back.
    @discardableResult
    mutating func forget(_ id: Identity, reason: String, dropped: Bool = false) -> Int {
        guard let worker = workers.removeValue(forKey: id) else { return 0 }
        services[worker.service]?.ready.removeAll { $0 == id }
        // A job whose attempt passed its deadline already went back to its queue.
        let current = worker.held.filter { jobs[$0.key]?.worker == id && jobs[$0.key]?.attempt == $0.value }.keys
        var metadata: Logger.Metadata = ["worker": "\(worker.name)", "service": "\(worker.service.name)",
                                         "reason": "\(reason)", "requeued_jobs": "\(current.count)"]
        if !worker.key.isEmpty { metadata["key"] = "\(worker.key)" }
        if dropped {
            logger.error("worker dropped", metadata: metadata)
        } else {
            logger.log(level: reason == "stopped" && current.isEmpty ? .info : .warning,
                       reason == "stopped" ? "worker left" : "worker lost", metadata: metadata)
        }
        for jobID in current.sorted().reversed() {
            requeue(jobID, because: dropped ? "its worker was dropped (\(reason))" : "its worker was lost (\(reason))")
        }
        return current.count
    }

    /// Puts a worker back in its service's line if it may take another job (and is not there yet).
    private mutating func offerWork(to id: Identity) {
        guard let worker = workers[id], worker.canTakeWork, !(services[worker.service]?.ready.contains(id) ?? false) else { return }
        services[worker.service, default: ServiceQueue()].ready.append(id)
    }

    // MARK: Liveness (once per heartbeat interval)

    /// Forgets workers silent past their expiry.
    mutating func purgeDeadWorkers(now: UInt64) {
        for (id, worker) in workers where now - worker.lastSeen > worker.expiryNs {
            forget(id, reason: "silent for \(worker.expiryNs / 1_000_000) ms (\(settings.heartbeat.liveness) heartbeats)")
        }
        // A worker stuck past a job deadline does not serve its service (see `failStarvedJobs`).
        for worker in workers.values where worker.overdue.isEmpty { services[worker.service]?.lastWorkerSeen = now }
    }

    /// Re-queues jobs not answered within `jobTimeoutMs` of their dispatch. Their workers keep the
    /// attempt (they are still busy with it: answering frees them, the answer itself is ignored) and
    /// get no more work until then, so a worker that heartbeats but never answers stops taking jobs.
    mutating func expireOverdueJobs(now: UInt64) {
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
            expiredDeadlines += 1
            metrics.count("aligners_job_deadlines_expired_total", [("service", job.service.name)])
            logger.warning("job passed its deadline; re-queued", metadata: [
                "worker": "\(name)", "service": "\(job.service.name)", "job": "\(jobID)", "attempt": "\(job.attempt)",
                "job_timeout_ms": "\(timeoutMs)",
                "note": "the worker gets no more work until it answers; raise --job-timeout-ms if its model is just slow"])
            requeue(jobID, because: "\(name) did not answer within --job-timeout-ms \(timeoutMs)")
        }
    }

    /// Fails queued jobs whose service has had no worker for `serviceTimeoutMs`. Workers stuck past
    /// a job deadline do not count: with only those, work would wait (and a drain last) forever.
    mutating func failStarvedJobs(now: UInt64) {
        let timeout = UInt64(settings.serviceTimeoutMs) * 1_000_000
        for (service, queue) in services where !queue.queue.isEmpty && queue.ready.isEmpty {
            let serving = workers.values.filter { $0.service == service }
            if serving.contains(where: { $0.overdue.isEmpty }) { continue }
            let since = queue.everServed ? queue.lastWorkerSeen : (jobs[queue.queue[0]]?.queuedAt ?? now)
            guard now - since > timeout else { continue }
            let start = "start one with `aligners worker --role \(service.role)"
                + (service.criterion.map { " --criterion \($0)`" }
                    ?? (service == .inspect ? " --criteria \(settings.criteria.joined(separator: ","))`" : "`"))
            let message = serving.isEmpty ? "no worker serves '\(service.name)'; \(start)"
                : "every worker serving '\(service.name)' (\(serving.map(\.name).sorted().joined(separator: ", "))) has held a job past "
                    + "--job-timeout-ms \(settings.jobTimeoutMs ?? 0) without answering: restart it (a stuck model?), or \(start)"
            services[service]!.queue.removeAll()
            for jobID in queue.queue {
                if let job = jobs.removeValue(forKey: jobID) { failed.append((job, EnvelopeError(.noWorker, message, stage: service.name))) }
            }
        }
    }
}

/// A peer's ZeroMQ routing id.
struct Identity: Hashable, CustomStringConvertible {
    let bytes: [UInt8]
    init(_ bytes: [UInt8]) { self.bytes = bytes }
    var description: String { bytes.map { String(format: "%02x", $0) }.joined() }
}

struct WorkerState {
    let service: StageService
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
    let id: UInt64
    /// The current attempt, from 1; one more each time the job goes back to its queue.
    var attempt: Int
    let service: StageService
    /// Whose work it is (the squad executor's bookkeeping; the broker only carries it).
    let owner: JobOwner
    /// The worker holding the current attempt; nil while queued.
    var worker: Identity?
    let queuedAt: UInt64
    /// When the current attempt was dispatched (its deadline runs from here).
    var dispatchedAt: UInt64 = 0
    /// Times the job has been sent to a worker (its attempts so far; 0 while never dispatched).
    var dispatches = 0
}
