import AlignersCore
import AlignersSchema
import Logging
import Testing
@testable import AlignersPipeline

// The router's three parts without sockets: their bookkeeping step by step, with no waiting.

private let quiet = Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() })
private let ms: UInt64 = 1_000_000

private func worker(_ service: StageService, _ name: String, credit: Int = 1, now: UInt64 = 0) -> WorkerState {
    WorkerState(service: service, name: name, model: "m", key: "", credit: credit, expiryNs: 3000 * ms, lastSeen: now)
}

@Suite("Broker")
struct BrokerTests {
    let client = Identity([9])

    func broker(maxAttempts: Int = 3, jobTimeoutMs: Int? = nil) -> Broker {
        Broker(settings: Broker.Settings(maxAttempts: maxAttempts, jobTimeoutMs: jobTimeoutMs, serviceTimeoutMs: 60_000), logger: quiet)
    }

    /// Dispatches everything that can go now; returns (job id, worker) pairs.
    func dispatchAll(_ b: inout Broker, now: UInt64 = 0) -> [(UInt64, Identity)] {
        var out: [(UInt64, Identity)] = []
        while let (job, w) = b.nextDispatch() {
            b.dispatched(job.id, to: w, now: now)
            out.append((job.id, w))
        }
        return out
    }

    @Test("jobs go to ready workers within their credit, least recently used first")
    func dispatchOrder() {
        var b = broker()
        let w1 = Identity([1]), w2 = Identity([2])
        b.register(w1, worker(.align("a"), "w1"), now: 0)
        b.register(w2, worker(.align("a"), "w2"), now: 0)
        let jobs = (0..<3).map { _ in b.submit(.align("a"), owner: .batch(1, [0]), now: 0) }
        b.submit(.align("other"), owner: .batch(1, [1]), now: 0)
        let first = dispatchAll(&b)
        #expect(first.map(\.0) == [jobs[0], jobs[1]] && first.map(\.1) == [w1, w2], "one job each; the third waits")
        #expect(b.queued == 2)
        guard case .current(let done) = b.answer(jobs[1], attempt: 1, from: w2, validate: { _ in nil }) else {
            Issue.record("the holder's answer is current")
            return
        }
        #expect(done.id == jobs[1] && done.dispatches == 1)
        let next = dispatchAll(&b)
        #expect(next.map { $0.0 } == [jobs[2]], "w2 is free again and takes the waiting job")
        #expect(b.dispatched == 3 && b.jobs.count == 3, "the job for a service nobody serves stays queued")
    }

    @Test("a lost worker's jobs go back first in line, and fail after maxAttempts dispatches")
    func requeueAndRetriesExhausted() {
        var b = broker(maxAttempts: 2)
        let w1 = Identity([1]), w2 = Identity([2])
        b.register(w1, worker(.generate, "w1", credit: 2), now: 0)
        let a = b.submit(.generate, owner: .generation(client, []), now: 0)
        let c = b.submit(.generate, owner: .generation(client, []), now: 0)
        let dispatched = dispatchAll(&b)
        #expect(dispatched.count == 2)
        let requeued = b.forget(w1, reason: "silent")
        #expect(requeued == 2)
        #expect(b.jobs[a]?.attempt == 2 && b.jobs[a]?.worker == nil && b.requeued == 2)
        b.register(w2, worker(.generate, "w2"), now: 0)
        let second = dispatchAll(&b)
        #expect(second.map(\.0) == [a], "oldest first; credit 1")
        b.forget(w2, reason: "silent")
        let failed = b.takeFailed()
        #expect(failed.map(\.0.id) == [a], "a was dispatched twice: out of attempts")
        #expect(failed.first?.1.code == .retriesExhausted)
        #expect(failed.first?.1.message.contains("--max-attempts") == true)
        #expect(b.jobs[a] == nil && b.jobs[c]?.attempt == 2)
        let none = b.takeFailed()
        #expect(none.isEmpty)
    }

    @Test("past its deadline a job runs elsewhere; the late answer frees its worker and is ignored")
    func deadlineAndLateAnswer() {
        var b = broker(jobTimeoutMs: 1000)
        let slow = Identity([1]), fast = Identity([2])
        b.register(slow, worker(.inspect, "slow"), now: 0)
        let job = b.submit(.inspect, owner: .batch(1, [0]), now: 0)
        let toSlow = dispatchAll(&b)
        #expect(toSlow.map(\.1) == [slow])
        b.expireOverdueJobs(now: 500 * ms)
        #expect(b.jobs[job]?.attempt == 1, "not yet")
        b.expireOverdueJobs(now: 1500 * ms)
        #expect(b.jobs[job]?.attempt == 2 && b.expiredDeadlines == 1)
        b.register(fast, worker(.inspect, "fast"), now: 1500 * ms)
        let toFast = dispatchAll(&b, now: 1500 * ms)
        #expect(toFast.map(\.1) == [fast], "the overdue worker gets no more work")
        guard case .late(_, let current) = b.answer(job, attempt: 1, from: slow, validate: { _ in "never asked" }) else {
            Issue.record("an ended attempt's answer is late")
            return
        }
        #expect(current == 2 && b.lateResults == 1 && b.workers[slow]?.canTakeWork == true)
        guard case .current = b.answer(job, attempt: 2, from: fast, validate: { _ in nil }) else {
            Issue.record("the current attempt decides")
            return
        }
        guard case .late(_, nil) = b.answer(job, attempt: 2, from: fast, validate: { _ in nil }) else {
            Issue.record("a duplicate answer is late")
            return
        }
        #expect(b.isIdle)
    }

    @Test("answers that are not answers: ids never issued, content the validator rejects, strangers")
    func invalidAnswers() {
        var b = broker()
        let w = Identity([1])
        b.register(w, worker(.align("a"), "w"), now: 0)
        let job = b.submit(.align("a"), owner: .batch(1, [0]), now: 0)
        _ = dispatchAll(&b)
        guard case .invalid(let why) = b.answer(99, attempt: 1, from: w, validate: { _ in nil }) else {
            Issue.record("an id never issued is invalid")
            return
        }
        #expect(why.contains("never dispatched"))
        guard case .invalid("bad scores") = b.answer(job, attempt: 1, from: w, validate: { _ in "bad scores" }) else {
            Issue.record("the validator's verdict stands")
            return
        }
        #expect(b.jobs[job]?.worker == w, "still held until the router drops the worker")
        b.forget(w, reason: "bad scores", dropped: true)
        #expect(b.jobs[job]?.attempt == 2)
        guard case .unknownWorker = b.answer(job, attempt: 1, from: Identity([7]), validate: { _ in nil }) else {
            Issue.record("a stranger is unknown")
            return
        }
    }

    @Test("work for a service nobody serves fails after the service timeout, saying which worker to start")
    func starvedService() {
        var b = Broker(settings: Broker.Settings(serviceTimeoutMs: 1000), logger: quiet)
        let job = b.submit(.align("helpful"), owner: .batch(1, [0, 1]), now: 0)
        b.failStarvedJobs(now: 900 * ms)
        let early = b.takeFailed()
        #expect(early.isEmpty)
        b.failStarvedJobs(now: 1100 * ms)
        let failed = b.takeFailed()
        #expect(failed.map(\.0.id) == [job] && failed[0].1.code == .noWorker)
        #expect(failed[0].1.message.contains("aligners worker --role aligner --criterion helpful"))
        #expect(b.isIdle && b.queued == 0)
    }

    @Test("a worker reconnecting under its name replaces its old registration")
    func reconnectReplaces() {
        var b = broker()
        let old = Identity([1]), new = Identity([2])
        b.register(old, worker(.generate, "gen-1"), now: 0)
        let job = b.submit(.generate, owner: .generation(client, []), now: 0)
        _ = dispatchAll(&b)
        b.register(new, worker(.generate, "gen-1"), now: 0)
        #expect(b.workers.count == 1 && b.workers[new] != nil)
        #expect(b.jobs[job]?.attempt == 2, "the old socket's job runs again")
    }
}

@Suite("Squad executor")
struct SquadExecutorTests {
    let client = Identity([5])

    func envelope(_ id: String, response: String = "answer") -> Envelope {
        var e = Envelope()
        e.id = id
        e.response = response
        var turn = Aligners_V1_Turn()
        turn.role = "user"
        turn.content = "question \(id)"
        e.conversation = [turn]
        return e
    }

    func job(_ request: SquadExecutor.JobRequest, id: UInt64 = 1) -> Job {
        Job(id: id, attempt: 1, service: request.service, owner: request.owner, worker: nil, queuedAt: 0, dispatches: 1)
    }

    /// What an inspector's job returns: per envelope, the delta its stage added (a score per criterion).
    func scored(_ envelopes: [Envelope], _ scores: [String: [Double]]) -> [Envelope] {
        envelopes.enumerated().map { i, e in
            var out = Envelope()
            out.id = e.id
            for (criterion, values) in scores.sorted(by: { $0.key < $1.key }) {
                var r = Aligners_V1_ScoreRecord()
                r.criterion = criterion
                r.score = values[i]
                out.scores.append(r)
            }
            return out
        }
    }

    func rewritten(_ envelopes: [Envelope], criterion: String) -> [Envelope] {
        envelopes.map { e in
            var out = Envelope()
            out.id = e.id
            out.response = e.response + " (fixed)"
            var step = Aligners_V1_Step()
            step.criterion = criterion
            step.changed = true
            out.steps.append(step)
            return out
        }
    }

    func settings(acceptance: SquadRun.Acceptance = .always) -> RouterSettings {
        var s = RouterSettings(criteria: ["a", "b"])
        s.batchSize = 2
        s.jobSize = 16
        s.acceptance = acceptance
        return s
    }

    @Test("a batch runs inspect → align the failing criterion → re-inspect, then goes back to its client")
    func fullBatch() {
        var squad = SquadExecutor(settings: settings())
        squad.admit(envelope("s0"), from: client, now: 0)
        let waiting = squad.takeJobRequests()
        #expect(waiting.isEmpty, "the batch waits for a second sample or its window")
        squad.admit(envelope("s1"), from: client, now: 0)
        let inspect = squad.takeJobRequests()
        #expect(inspect.map(\.service) == [.inspect], "one job scores every criterion")
        squad.complete(job(inspect[0]), deltas: scored(squad.envelopes(of: inspect[0].owner), ["a": [0.2, 0.9], "b": [0.8, 0.7]]))
        let align = squad.takeJobRequests()
        #expect(align.map(\.service) == [.align("a")])
        guard case .batch(_, let indices) = align[0].owner else { Issue.record("a batch job"); return }
        #expect(indices == [0], "only the sample that failed a")
        squad.complete(job(align[0], id: 3), deltas: rewritten(squad.envelopes(of: align[0].owner), criterion: "a"))
        let reinspect = squad.takeJobRequests()
        #expect(reinspect.map(\.service) == [.inspect])
        squad.complete(job(reinspect[0], id: 4), deltas: scored(squad.envelopes(of: reinspect[0].owner), ["a": [0.7], "b": [0.8]]))
        let more = squad.takeJobRequests()
        #expect(more.isEmpty)
        let out = squad.takeDeliveries()
        #expect(out.count == 1 && out[0].client == client)
        let envelopes = out[0].envelopes
        #expect(envelopes.map(\.id) == ["s0", "s1"])
        #expect(envelopes[0].response == "answer (fixed)" && envelopes[1].response == "answer")
        #expect(envelopes[0].steps.count == 1 && envelopes[0].steps[0].scoreBefore == 0.2 && envelopes[0].steps[0].scoreAfter == 0.7)
        #expect(envelopes[0].scores.filter { $0.pass == 1 }.count == 2, "the re-inspection is recorded as pass 1")
        #expect(envelopes[0].batch.order == ["a", "b"] && envelopes[0].attempt == 1)
        #expect(squad.isIdle)
    }

    @Test("an inspection answer missing a criterion, out of range or out of order is rejected")
    func inspectionAnswersChecked() {
        var squad = SquadExecutor(settings: settings())
        squad.admit(envelope("s0"), from: client, now: 0)
        squad.admit(envelope("s1"), from: client, now: 0)
        let requests = squad.takeJobRequests()
        #expect(requests.map(\.service) == [.inspect])
        let sent = squad.envelopes(of: requests[0].owner)
        var result = Aligners_V1_JobResult()
        result.envelopes = scored(sent, ["a": [0.9, 0.9]])
        #expect(squad.problem(with: result, for: job(requests[0]))?.contains("no b score") == true)
        result.envelopes = scored(sent, ["a": [0.9, 0.9], "b": [0.9, 1.5]])
        #expect(squad.problem(with: result, for: job(requests[0]))?.contains("a score is a number in [0, 1]") == true)
        result.envelopes = Array(scored(sent, ["a": [0.9, 0.9], "b": [0.9, 0.9]]).reversed())
        #expect(squad.problem(with: result, for: job(requests[0]))?.contains("in place of the job's") == true)
        result.envelopes = scored(sent, ["a": [0.9, 0.9], "b": [0.9, 0.9]])
        #expect(squad.problem(with: result, for: job(requests[0])) == nil)
        squad.complete(job(requests[0]), deltas: result.envelopes)
        let delivered = squad.takeDeliveries()
        #expect(delivered.first?.envelopes.count == 2, "both pass: nothing to align")
    }

    @Test("under `improvement` a rewrite that lowers its score is undone, with a note saying why")
    func revert() {
        var squad = SquadExecutor(settings: settings(acceptance: .improvement))
        squad.admit(envelope("s0"), from: client, now: 0)
        squad.tick(now: 100 * ms, draining: false)
        for request in squad.takeJobRequests() {
            squad.complete(job(request), deltas: scored(squad.envelopes(of: request.owner), ["a": [0.3], "b": [0.9]]))
        }
        let align = squad.takeJobRequests()
        squad.complete(job(align[0]), deltas: rewritten(squad.envelopes(of: align[0].owner), criterion: "a"))
        for request in squad.takeJobRequests() {
            squad.complete(job(request), deltas: scored(squad.envelopes(of: request.owner), ["a": [0.1], "b": [0.9]]))
        }
        let e = squad.takeDeliveries()[0].envelopes[0]
        #expect(e.response == "answer", "the answer from before the pass")
        #expect(e.steps[0].changed == false && e.steps[0].note.hasPrefix("reverted: the rewrite lowered the a score"))
        #expect(e.scores.allSatisfy { $0.pass == 0 }, "the records of the undone pass are gone")
    }

    @Test("prompt-only samples go to the generator together, then join a batch; a failed job's samples leave with its error")
    func generationAndFailure() {
        var squad = SquadExecutor(settings: settings())
        squad.admit(envelope("p0", response: ""), from: client, now: 0)
        squad.admit(envelope("p1", response: ""), from: client, now: 0)
        let early = squad.takeJobRequests()
        #expect(early.isEmpty, "waits for the window")
        squad.tick(now: 100 * ms, draining: false)
        let generate = squad.takeJobRequests()
        #expect(generate.map(\.service) == [.generate])
        let answered = squad.envelopes(of: generate[0].owner).map { var e = $0; e.response = "generated"; return e }
        squad.complete(job(generate[0]), deltas: answered)
        let inspect = squad.takeJobRequests()
        #expect(inspect.count == 1, "the two answers form one batch")
        squad.fail(job(inspect[0]), EnvelopeError(.noWorker, "nobody inspects", stage: "inspect"))
        let out = squad.takeDeliveries().flatMap(\.envelopes)
        #expect(out.count == 2 && out.allSatisfy { $0.error.code == .noWorker && $0.generated && $0.originalResponse == "generated" })
        #expect(squad.isIdle)
    }

    @Test("draining starts a partial batch at once")
    func drainingFlushes() {
        var squad = SquadExecutor(settings: settings())
        squad.admit(envelope("s0"), from: client, now: 0)
        squad.tick(now: 1 * ms, draining: false)
        let before = squad.takeJobRequests()
        #expect(before.isEmpty && squad.hasWaitingSamples)
        squad.tick(now: 1 * ms, draining: true)
        let after = squad.takeJobRequests()
        #expect(after.count == 1 && !squad.hasWaitingSamples)
    }
}

@Suite("Client gate")
struct ClientGateTests {
    @Test("credit: a window per client, given back as results return, none for a client that is gone")
    func credit() {
        var gate = ClientGate(window: 2)
        let c = Identity([1])
        let first = gate.heard(from: c, key: "", now: 0), again = gate.heard(from: c, key: "", now: 1)
        #expect(first && !again, "a new client gets its window, once")
        let takes = (0..<3).map { _ in gate.take(from: c) }
        #expect(takes == [true, true, false], "over its credit")
        let credit = gate.returned(2, to: c, sent: true)
        #expect(credit == 2)
        let retake = gate.take(from: c), unsent = gate.returned(1, to: c, sent: false)
        #expect(retake && unsent == 0, "results that could not be sent earn no credit")
        gate.left(c)
        #expect(gate.connected.isEmpty)
        gate.purge(now: 2, expiryNs: 100)
        #expect(gate.clients.isEmpty, "forgotten once nothing is in flight")
        let late = gate.returned(1, to: c, sent: true)
        #expect(late == 0)
    }

    @Test("a silent client is kept while it has samples in flight")
    func purgeKeepsInFlight() {
        var gate = ClientGate(window: 4)
        let c = Identity([1])
        _ = gate.heard(from: c, key: "k", now: 0)
        _ = gate.take(from: c)
        gate.purge(now: 1000, expiryNs: 10)
        #expect(gate.clients[c]?.inFlight == 1)
        _ = gate.returned(1, to: c, sent: true)
        gate.purge(now: 1000, expiryNs: 10)
        #expect(gate.clients.isEmpty)
    }
}
