import AlignersCore
import AlignersSchema
import Foundation

/// Whose work a job is.
enum JobOwner {
    /// Prompt-only samples of one client, to be answered by the generator (the job holds them).
    case generation(Identity, [Envelope])
    /// Samples of a squad batch, by index (their envelopes are read from the batch when sent, so a
    /// re-queued job carries every score merged since).
    case batch(UInt64, [Int])
}

/// The squad half of the router: forms batches, drives each batch's `SquadRun`, turns its steps
/// into job requests and folds the workers' answers back in (scores, rewrites, reverts). It owns
/// no socket and no worker: it emits `JobRequest`s and `Delivery`s for the router to act on, and
/// is tested like `SquadRun` (`SquadExecutorTests`).
struct SquadExecutor {
    struct JobRequest {
        let service: StageService
        let owner: JobOwner
    }
    /// Finished (or failed) envelopes for one client.
    struct Delivery {
        let client: Identity
        let envelopes: [Envelope]
    }

    let settings: RouterSettings
    private let metrics: PipelineMetrics
    private var batches: [UInt64: Batch] = [:]
    private var forming: [Sample] = []
    private var formingSince: UInt64 = 0
    /// Prompt-only samples waiting to go to the generator together (one job of up to `jobSize`), so
    /// that their answers come back together and join one squad batch.
    private var pendingGeneration: [Sample] = []
    private var pendingGenerationSince: UInt64 = 0
    private var nextBatchID: UInt64 = 1
    private var requests: [JobRequest] = []
    private var deliveries: [Delivery] = []
    private(set) var batchesStarted = 0

    init(settings: RouterSettings, metrics: PipelineMetrics = .shared) {
        self.settings = settings
        self.metrics = metrics
    }

    /// Nothing waits and no batch is under way.
    var isIdle: Bool { batches.isEmpty && forming.isEmpty && pendingGeneration.isEmpty }
    /// Samples wait for a batch window or a generation job to close (poll more often).
    var hasWaitingSamples: Bool { !forming.isEmpty || !pendingGeneration.isEmpty }

    /// Jobs to queue, in the order they were decided.
    mutating func takeJobRequests() -> [JobRequest] {
        defer { requests = [] }
        return requests
    }

    /// Envelopes ready to go back to their clients.
    mutating func takeDeliveries() -> [Delivery] {
        defer { deliveries = [] }
        return deliveries
    }

    // MARK: Samples in

    /// A sample admitted from `client`: to the generator first when it has no response.
    mutating func admit(_ envelope: Envelope, from client: Identity, now: UInt64) {
        var envelope = envelope
        if envelope.receivedUnixNs == 0 { envelope.receivedUnixNs = unixNanos() }
        envelope.attempt = 0
        let sample = Sample(envelope: envelope, client: client)
        if envelope.response.isEmpty {
            if pendingGeneration.isEmpty { pendingGenerationSince = now }
            pendingGeneration.append(sample)
            if pendingGeneration.count >= settings.jobSize { flushGeneration() }
        } else {
            addToBatch(sample, now: now)
        }
    }

    /// Starts what has waited long enough (a partial batch past its window, pending prompts), or
    /// everything that waits when draining.
    mutating func tick(now: UInt64, draining: Bool) {
        let window = UInt64(settings.batchWindowMs) * 1_000_000
        if draining {
            if !pendingGeneration.isEmpty { flushGeneration() }
            if !forming.isEmpty { startBatch(now: now) }
        }
        if !forming.isEmpty && (forming.count >= settings.batchSize || now - formingSince >= window) { startBatch(now: now) }
        if !pendingGeneration.isEmpty && now - pendingGenerationSince >= window { flushGeneration() }
    }

    private mutating func addToBatch(_ sample: Sample, now: UInt64) {
        if forming.isEmpty { formingSince = now }
        forming.append(sample)
        if forming.count >= settings.batchSize { startBatch(now: now) }
    }

    /// One generation job per client among the pending samples.
    private mutating func flushGeneration() {
        var byClient: [(Identity, [Envelope])] = []
        for s in pendingGeneration {
            if let i = byClient.firstIndex(where: { $0.0 == s.client }) { byClient[i].1.append(s.envelope) } else { byClient.append((s.client, [s.envelope])) }
        }
        pendingGeneration = []
        for (client, envelopes) in byClient { requests.append(JobRequest(service: .generate, owner: .generation(client, envelopes))) }
    }

    // MARK: Batches and the squad policy

    private mutating func startBatch(now: UInt64) {
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
        batchesStarted += 1
        batches[id] = batch
        startStep(of: id)
    }

    /// Turns the policy's current step into job requests, or finishes the batch.
    private mutating func startStep(of batchID: UInt64) {
        guard var batch = batches.removeValue(forKey: batchID) else { return }
        batch.stepScores = [:]
        batch.stepChanged = []
        if case .align = batch.run.step { batch.previousResponses = [:] }
        let step = batch.run.step
        let service: StageService
        let samples: [Int]
        switch step {
        case .finished:
            finish(batch)
            return
        case .inspect(_, let indices):
            // One job per chunk scores every criterion (the inspect workers announce them all).
            service = .inspect
            samples = indices
        case .align(let criterion, let indices):
            metrics.count("aligners_aligner_passes_total", [("criterion", criterion)], by: indices.count)
            service = .align(criterion)
            samples = indices
        }
        for chunk in samples.chunked(settings.jobSize) {
            requests.append(JobRequest(service: service, owner: .batch(batchID, Array(chunk))))
            batch.outstanding += 1
        }
        batches[batchID] = batch
    }

    private mutating func finish(_ batch: Batch) {
        let order = batch.run.order
        let notAligned = batch.run.criteria.filter { !batch.run.aligns($0) }
        var byClient: [(Identity, [Envelope])] = []
        let now = unixNanos()
        for var sample in batch.samples {
            sample.envelope.batch.order = order
            sample.envelope.batch.notAligned = notAligned
            sample.envelope.completedUnixNs = now
            if let i = byClient.firstIndex(where: { $0.0 == sample.client }) { byClient[i].1.append(sample.envelope) } else { byClient.append((sample.client, [sample.envelope])) }
        }
        for (client, envelopes) in byClient { deliveries.append(Delivery(client: client, envelopes: envelopes)) }
    }

    // MARK: Jobs out and answers in

    /// A job's envelopes as they stand now.
    func envelopes(of owner: JobOwner) -> [Envelope] {
        switch owner {
        case .generation(_, let envelopes): return envelopes
        case .batch(let batchID, let indices):
            guard let batch = batches[batchID] else { return [] }
            return indices.map { batch.samples[$0].envelope }
        }
    }

    /// What makes a worker's answer to a job unusable, or nil when nothing does. Such an answer is
    /// the worker's fault (a bug, a hostile peer), not the samples'. (Stages clamp their scores,
    /// but the router must not count on it.)
    func problem(with result: Aligners_V1_JobResult, for job: Job) -> String? {
        if result.hasError { return nil }   // a failure report is an answer
        let expected = envelopes(of: job.owner).map(\.id)
        guard result.envelopes.count == expected.count else {
            return "returned \(result.envelopes.count) envelopes for a job of \(expected.count)"
        }
        for (delta, id) in zip(result.envelopes, expected) where delta.id != id {
            return "returned envelope '\(delta.id.prefix(64))' in place of the job's '\(id)'"
        }
        let criterion = job.service.criterion ?? ""
        var required: [String] = []
        if job.service == .inspect, case .batch(let batchID, _) = job.owner, case .inspect(let criteria, _)? = batches[batchID]?.run.step {
            required = criteria
        }
        for delta in result.envelopes where !delta.hasError {
            for record in delta.scores where !(record.score.isFinite && (0...1).contains(record.score)) {
                return "scored \(record.criterion) \(record.score) for envelope '\(delta.id)' (a score is a number in [0, 1])"
            }
            if let missing = required.first(where: { c in !delta.scores.contains { $0.criterion == c } }) {
                return "returned no \(missing) score for envelope '\(delta.id)'"
            }
            if case .align = job.service, let step = delta.steps.first(where: { $0.criterion != criterion }) {
                return "recorded a step for '\(step.criterion.prefix(64))' in a job for \(criterion)"
            }
        }
        return nil
    }

    /// A job's answer (what the stage added to each envelope, see `JobResult`), already checked by
    /// `problem(with:for:)`. `dispatches`: how many times the job was sent.
    mutating func complete(_ job: Job, deltas: [Envelope]) {
        switch job.owner {
        case .generation(let client, let sent):
            for (delta, sent) in zip(deltas, sent) {
                var envelope = sent
                envelope.noteDispatches(job.dispatches)
                if delta.hasError {
                    envelope.error = delta.error
                    deliveries.append(Delivery(client: client, envelopes: [envelope]))
                } else {
                    envelope.response = delta.response
                    envelope.originalResponse = delta.response
                    envelope.generated = true
                    addToBatch(Sample(envelope: envelope, client: client), now: monotonicNanos())
                }
            }
        case .batch(let batchID, let indices):
            guard var batch = batches.removeValue(forKey: batchID) else { return }
            for i in indices { batch.samples[i].envelope.noteDispatches(job.dispatches) }
            merge(deltas, indices: indices, service: job.service, into: &batch)
            batch.outstanding -= 1
            batches[batchID] = batch
            if batch.outstanding == 0 { completeStep(of: batchID) }
        }
    }

    /// The job's samples carry `error` from here on and leave the squad.
    mutating func fail(_ job: Job, _ error: EnvelopeError) {
        switch job.owner {
        case .generation(let client, let sent):
            let failed = sent.map { var e = $0; e.error = error; e.noteDispatches(job.dispatches); return e }
            deliveries.append(Delivery(client: client, envelopes: failed))
        case .batch(let batchID, let indices):
            guard var batch = batches.removeValue(forKey: batchID) else { return }
            for i in indices {
                batch.samples[i].envelope.error = error
                batch.samples[i].envelope.noteDispatches(job.dispatches)
            }
            batch.run.drop(indices)
            batch.outstanding -= 1
            batches[batchID] = batch
            if batch.outstanding == 0 { completeStep(of: batchID) }
        }
    }

    /// Folds a worker's deltas into the batch's envelopes and the step's tallies.
    private func merge(_ deltas: [Envelope], indices: [Int], service: StageService, into batch: inout Batch) {
        let criterion = service.criterion ?? ""
        var inspected: Set<String> = []
        if service == .inspect, case .inspect(let criteria, _) = batch.run.step { inspected = Set(criteria) }
        for (delta, index) in zip(deltas, indices) {
            if delta.hasError {
                batch.samples[index].envelope.error = delta.error
                batch.run.drop([index])
                continue
            }
            if service == .inspect {
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

    private mutating func completeStep(of batchID: UInt64) {
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
}

struct Sample {
    var envelope: Envelope
    let client: Identity
}

struct Batch {
    let id: UInt64
    var samples: [Sample]
    var run: SquadRun
    /// Jobs of the current step not yet answered or failed.
    var outstanding = 0
    var stepScores: [Int: [String: Double]] = [:]
    var stepChanged: Set<Int> = []
    /// Responses from before the current aligner pass, of the samples it changed.
    var previousResponses: [Int: String] = [:]
}

extension Envelope {
    /// A delivered envelope's `attempt`: the most dispatches any of its jobs needed (1 when every
    /// job ran once; a job re-queued after a lost worker or a deadline counts each dispatch).
    mutating func noteDispatches(_ dispatches: Int) {
        attempt = max(attempt, UInt32(clamping: dispatches))
    }
}

extension Array {
    func chunked(_ size: Int) -> [ArraySlice<Element>] {
        stride(from: 0, to: count, by: Swift.max(1, size)).map { self[$0..<Swift.min($0 + Swift.max(1, size), count)] }
    }
}
