import AlignersSchema
import Foundation
import Logging
import Synchronization
import Testing
@testable import AlignersPipeline
import PipelineTestDoubles

// Router and client liveness (issue 14): job deadlines, attempts, heartbeat timing, incarnations.
// Waits are bounded by events (a job received, a count reached, a run finished) with timeouts that
// only matter when something is broken; no test asks a loaded runner to be fast.

/// Log messages (with their metadata), kept for the test to read.
final class LogCapture: Sendable {
    private let lines = Locked<[String]>([])
    var all: [String] { lines.value }
    func count(_ text: String) -> Int { all.filter { $0.contains(text) }.count }

    func logger(_ label: String, level: Logger.Level = .info) -> Logger {
        var logger = Logger(label: label) { [self] _ in Handler(capture: self) }
        logger.logLevel = level
        return logger
    }

    fileprivate func append(_ line: String) { lines.update { $0.append(line) } }

    private struct Handler: LogHandler {
        let capture: LogCapture
        var metadata: Logger.Metadata = [:]
        var logLevel: Logger.Level = .info
        subscript(metadataKey key: String) -> Logger.Metadata.Value? {
            get { metadata[key] }
            set { metadata[key] = newValue }
        }
        func log(event: LogEvent) {
            let fields = (event.metadata ?? [:]).sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
            capture.append("\(event.level) \(event.message) \(fields)")
        }
    }
}

/// A router on inproc endpoints, on a thread of its own, with its stats as of its last turn and its log.
final class RouterOnThread: @unchecked Sendable {
    let context = ZMQContext()
    let router: Router
    let logs = LogCapture()
    private let latest = Locked(RouterStats())
    private let finished = DispatchSemaphore(value: 0)
    private var workers: [Worker] = []

    init(_ configure: (inout RouterSettings) -> Void = { _ in }) throws {
        var settings = RouterSettings(criteria: ["ethical"])
        settings.batchWindowMs = 5
        settings.jobSize = 2
        settings.heartbeat = HeartbeatSettings(intervalMs: 100, liveness: 100)   // nothing expires unless a test asks
        configure(&settings)
        let tag = UUID().uuidString
        router = try Router(context: context, frontend: "inproc://front-\(tag)", backend: "inproc://back-\(tag)",
                            settings: settings, logger: logs.logger("router"))
        router.onTick = { [latest] stats in latest.update { $0 = stats } }
        Thread { [router, finished] in
            try? router.run()
            finished.signal()
        }.start()
    }

    var stats: RouterStats { latest.value }

    /// A worker on a thread of its own (drained by `stop`).
    @discardableResult
    func worker(_ handler: any StageHandler, heartbeat: HeartbeatSettings? = nil, credit: Int = 2) throws -> Worker {
        var settings = WorkerSettings()
        settings.heartbeat = heartbeat ?? router.settings.heartbeat
        settings.credit = credit
        settings.name = "\(handler.service)-\(workers.count)"
        let worker = try Worker(context: context, endpoint: router.backendEndpoint, handler: handler, settings: settings,
                                logger: logs.logger("worker"))
        workers.append(worker)
        Thread { try? worker.run() }.start()
        return worker
    }

    /// Runs a filter over `lines` on a thread of its own; `wait` gives its outcome once it ends.
    func startFilter(_ lines: [String]) throws -> FilterRun {
        var settings = FilterSettings()
        // The router's interval, but patient: a stalled runner must not make the filter reconnect.
        settings.heartbeat = HeartbeatSettings(intervalMs: router.settings.heartbeat.intervalMs, liveness: 100)
        settings.routerTimeoutMs = 600_000
        let filter = Filter(context: context, endpoint: router.frontendEndpoint, settings: settings, logger: logs.logger("filter"),
                            input: try fileDescriptor(for: lines), output: open("/dev/null", O_WRONLY))
        return FilterRun(filter)
    }

    /// Drains the router and waits for it to return; false if it did not within `seconds`.
    func stop(seconds: Double = 60) -> Bool {
        router.drain()
        let drained = finished.wait(timeout: .now() + seconds) == .success
        for w in workers { w.drain() }
        if !drained { context.shutdown() }   // end every blocked thread, so a failed test does not hang
        return drained
    }
}

/// A filter running on its own thread: what it delivered, by line.
final class FilterRun: Sendable {
    private let outcome = Locked<Result<FilterSummary, any Error>?>(nil)
    let delivered = Locked<[Envelope]>([])
    private let done = DispatchSemaphore(value: 0)

    init(_ filter: Filter) {
        Thread { [outcome, delivered, done] in
            let result = Result { try filter.run { _, envelope in if let envelope { delivered.update { $0.append(envelope) } } } }
            outcome.update { $0 = result }
            done.signal()
        }.start()
    }

    /// The summary once the run ends; nil if it has not within `seconds`.
    func wait(seconds: Double = 60) throws -> FilterSummary? {
        guard done.wait(timeout: .now() + seconds) == .success else { return nil }
        return try outcome.value?.get()
    }
}

/// A worker socket driven by the test: it registers, heartbeats while it waits, and answers only
/// when told to.
final class HandWorker {
    let socket: ZMQSocket
    let service: String
    let criteria: [String]
    let credit: Int
    let heartbeat: HeartbeatSettings
    /// The router's, which answers carry (as a worker's do).
    let routerIncarnation: UInt64
    private var lastBeat: UInt64 = 0
    /// Computes correct answers (the worker's own code, without its sockets).
    private let answerer: Worker

    init(_ pipeline: RouterOnThread, handler: any StageHandler, credit: Int) throws {
        socket = try ZMQSocket(pipeline.context, .dealer)
        try socket.connect(pipeline.router.backendEndpoint)
        service = handler.service.name
        criteria = handler.criteria
        self.credit = credit
        heartbeat = pipeline.router.settings.heartbeat
        routerIncarnation = pipeline.router.incarnation
        answerer = try Worker(context: pipeline.context, endpoint: pipeline.router.backendEndpoint, handler: handler,
                              logger: Logger(label: "hand") { _ in SwiftLogNoOpLogHandler() })
        register()
    }

    func register() {
        var ready = Aligners_V1_Ready()
        ready.service = service
        ready.criteria = criteria
        ready.credit = UInt32(credit)
        ready.worker = "hand"
        ready.heartbeat = heartbeat.timing
        send(WireMessage(.ready(ready)))
    }

    func send(_ message: WireMessage) { _ = try? socket.send([message.bytes()]) }

    /// The right answer to `job`, as a worker would give it, addressed to `incarnation` (default: the router's).
    func answer(_ job: Aligners_V1_Job, to incarnation: UInt64? = nil) {
        var message = WireMessage(.result(answerer.answer(job)))
        message.routerIncarnation = incarnation ?? routerIncarnation
        send(message)
    }

    /// Heartbeats and reads until a message matches `match` (returned) or `seconds` pass (nil).
    /// Every job received on the way is passed to `onJob`.
    func next(seconds: Double = 60, onJob: (Aligners_V1_Job) -> Void = { _ in },
              until match: (WireMessage) -> Bool) -> WireMessage? {
        let deadline = Date().addingTimeInterval(seconds)
        var poller = ZMQPoller([socket])
        while Date() < deadline {
            let now = monotonicNanos()
            if now - lastBeat >= heartbeat.intervalNs {
                send(.heartbeat(heartbeat))
                lastBeat = now
            }
            guard (try? poller.poll(timeoutMs: 20))?.first == true else { continue }
            while let frames = try? socket.receive(dontWait: true), let message = frames.last.flatMap(WireMessage.decode) {
                if case .job(let job) = message.kind { onJob(job) }
                if match(message) { return message }
            }
        }
        return nil
    }

    func nextJob(seconds: Double = 60) -> Aligners_V1_Job? {
        guard case .job(let job)? = next(seconds: seconds, until: { if case .job = $0.kind { true } else { false } })?.kind else { return nil }
        return job
    }

    /// Heartbeats until `condition` holds (true) or `seconds` pass (false); jobs received go to `onJob`.
    func wait(seconds: Double = 60, onJob: (Aligners_V1_Job) -> Void = { _ in }, until condition: () -> Bool) -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        while !condition() {
            if Date() > deadline { return false }
            _ = next(seconds: 0.05, onJob: onJob) { _ in false }
        }
        return true
    }
}

func badLines(_ n: Int, from first: Int = 0) -> [String] {
    (first..<first + n).map { #"{"id":"s\#($0)","prompt":"q\#($0)","response":"a\#($0) [bad:ethical]"}"# }
}

/// Every line came out once, aligned and without error.
func allAligned(_ envelopes: [Envelope], ids: [String]) -> Bool {
    envelopes.map(\.id).sorted() == ids.sorted()
        && envelopes.allSatisfy { !$0.hasError && $0.response.contains("[fixed:ethical]") && !$0.response.contains("[bad:") }
}

@Suite("Liveness", .serialized)
struct LivenessTests {
    /// The issue's report, scaled down: workers heartbeating every second and taking 0.4 s a job, a
    /// router expecting a beat every 100 ms. Before, the router declared them dead between beats and
    /// threw their answers away: every line failed ("dispatched 20 times"), or, when a late answer
    /// released the hold of the attempt that replaced it, jobs stayed in flight forever and the
    /// drain never ended.
    @Test("slow, slow-heartbeating workers: every line once, and the router drains on SIGTERM", .timeLimit(.minutes(10)))
    func slowWorkersLoseNothing() throws {
        let group = try ProcessGroup()
        let front = "ipc://\(group.logDir.path)/front", back = "ipc://\(group.logDir.path)/back"
        let router = try group.start(builtExecutable("aligners"), [
            "router", "--frontend", front, "--backend", back, "--criteria", "ethical", "--batch-size", "8", "--job-size", "4",
            "--window-ms", "20", "--heartbeat-ms", "100", "--liveness", "3", "--max-attempts", "20", "--log-level", "info"], name: "router")
        for service in ["inspect", "align.ethical"] {
            for i in 0..<2 {
                try group.start(builtExecutable("aligners-testworker"), ["--service", service, "--connect", back,
                                                                         "--heartbeat-ms", "1000", "--delay-ms", "400"], name: "\(service)-\(i)")
            }
        }
        let count = 40
        let input = group.logDir.appendingPathComponent("in.jsonl"), output = group.logDir.appendingPathComponent("out.jsonl")
        try (badLines(count).joined(separator: "\n") + "\n").write(to: input, atomically: true, encoding: .utf8)
        let filter = try group.start(builtExecutable("aligners"), ["filter", "--connect", front, "--log-level", "warning"],
                                     name: "filter", stdin: input, stdout: output)
        // Bounded only to fail instead of hanging (the run takes seconds).
        #expect(waitUntil(seconds: 300) { !filter.isRunning }, "the filter never finished: \(group.log("router").suffix(2000))")
        if filter.isRunning { kill(filter.processIdentifier, SIGKILL) }
        filter.waitUntilExit()
        #expect(filter.terminationStatus == 0, "\(group.log("filter"))")
        let lines = try String(contentsOf: output, encoding: .utf8).split(separator: "\n").map {
            try JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] ?? [:]
        }
        #expect(lines.map { $0["id"] as? String ?? "?" } == (0..<count).map { "s\($0)" }, "every line once, in order")
        #expect(lines.allSatisfy { $0["error"] == nil && ($0["response"] as? String)?.contains("[fixed:ethical]") == true },
                "every line aligned: \(lines.filter { $0["error"] != nil }.prefix(3))")
        kill(router.processIdentifier, SIGTERM)
        #expect(waitUntil(seconds: 120) { !router.isRunning }, "the router's drain never ended: \(group.log("router").suffix(2000))")
        if router.isRunning { kill(router.processIdentifier, SIGKILL) }
        router.waitUntilExit()
        #expect(router.terminationStatus == 0)
        #expect(group.log("router").contains("router drained"))
        #expect(group.log("router").contains("worker heartbeat settings differ from the router's"))
    }

    /// A worker that heartbeats but never answers: past the deadline its job runs on another worker,
    /// and it gets no more work (though it has credit left) until it answers; its late answer is
    /// ignored, and then it takes work again.
    @Test("a job past its deadline runs elsewhere; the stuck worker gets nothing more until it answers", .timeLimit(.minutes(10)))
    func deadlineRequeues() throws {
        let pipeline = try RouterOnThread {
            $0.jobTimeoutMs = 1000
            $0.maxAttempts = 10   // a loaded runner may stall the good worker past a deadline too: that costs only an attempt
            $0.batchSize = 8
        }
        let stuck = try HandWorker(pipeline, handler: InspectorStage(MarkerInspector(criterion: "ethical")), credit: 2)
        #expect(stuck.wait { pipeline.stats.workers == 1 })
        try pipeline.worker(InspectorStage(MarkerInspector(criterion: "ethical")))
        try pipeline.worker(AlignerStage(MarkerAligner(criterion: "ethical")))
        #expect(stuck.wait { pipeline.stats.workers == 3 })

        // One line: its inspection goes to the stuck worker (first in line), which keeps it.
        let first = try pipeline.startFilter(badLines(1))
        let held = try #require(stuck.nextJob(), "the stuck worker got the first job")
        var more: [Aligners_V1_Job] = []
        #expect(stuck.wait(onJob: { more.append($0) }) { pipeline.stats.delivered == 1 }, "the job ran elsewhere: \(pipeline.stats)")
        #expect(try first.wait() != nil)
        #expect(allAligned(first.delivered.value, ids: ["s0"]))
        // Delivered envelopes report the dispatches their jobs took (they said 0 before).
        #expect((first.delivered.value.first?.attempt ?? 0) >= 2, "s0's inspection ran twice: \(first.delivered.value.map(\.attempt))")
        #expect(pipeline.stats.expiredDeadlines >= 1)

        // More work while it still holds the job: none for it, though it has a free credit.
        let second = try pipeline.startFilter(badLines(8, from: 1))
        #expect(stuck.wait(onJob: { more.append($0) }) { pipeline.stats.delivered == 9 }, "\(pipeline.stats)")
        #expect(try second.wait() != nil)
        #expect(allAligned(second.delivered.value, ids: (1..<9).map { "s\($0)" }))
        #expect(second.delivered.value.allSatisfy { $0.attempt >= 1 }, "\(second.delivered.value.map(\.attempt))")
        #expect(more.isEmpty, "an overdue worker was given jobs \(more.map(\.id))")

        // It answers at last: the answer is ignored (the line is out already), and it works again.
        stuck.answer(held)
        #expect(stuck.wait { pipeline.stats.lateResults == 1 })
        let third = try pipeline.startFilter(badLines(8, from: 9))
        #expect(stuck.wait(onJob: { stuck.answer($0); more.append($0) }) { pipeline.stats.delivered == 17 }, "\(pipeline.stats)")
        #expect(try third.wait() != nil)
        #expect(allAligned(third.delivered.value, ids: (9..<17).map { "s\($0)" }))
        #expect(!more.isEmpty, "the worker takes jobs again once it has answered")
        #expect(pipeline.stats.delivered == 17 && pipeline.stats.failed == 0, "nothing delivered twice: \(pipeline.stats)")
        #expect(pipeline.logs.count("job passed its deadline; re-queued") >= 1)
        #expect(pipeline.stop())
    }

    /// With no other worker, a job past its deadline has nowhere to go: after the service timeout its
    /// samples fail saying which worker is stuck, and the router can drain (before, it waited forever).
    @Test("a service whose only worker is stuck: its lines fail saying so, and the router drains", .timeLimit(.minutes(10)))
    func onlyWorkerStuck() throws {
        let pipeline = try RouterOnThread {
            $0.jobTimeoutMs = 500
            $0.serviceTimeoutMs = 1000
        }
        let stuck = try HandWorker(pipeline, handler: InspectorStage(MarkerInspector(criterion: "ethical")), credit: 1)
        #expect(stuck.wait { pipeline.stats.workers == 1 })
        let run = try pipeline.startFilter(badLines(2))
        #expect(stuck.nextJob() != nil)
        #expect(stuck.wait { pipeline.stats.delivered == 2 }, "\(pipeline.stats)")
        #expect(try run.wait() != nil)
        let envelopes = run.delivered.value
        #expect(envelopes.count == 2 && envelopes.allSatisfy { $0.error.code == .noWorker }, "\(envelopes.map(\.error))")
        // Dispatched once, re-queued at its deadline, never dispatched again: one attempt.
        #expect(envelopes.allSatisfy { $0.attempt == 1 }, "\(envelopes.map(\.attempt))")
        #expect(envelopes.first?.error.message.contains("(hand) has held a job past --job-timeout-ms 500 without answering") == true,
                "\(envelopes.first?.error.message ?? "")")
        #expect(pipeline.stats.expiredDeadlines == 1 && pipeline.stats.inFlight == 0)
        #expect(pipeline.stop(), "the router drains")
    }

    /// The issue's likely cause, step by step: a worker is lost holding attempt 1, registers again and
    /// is given attempt 2 of the same job, then answers attempt 1. Before, that answer released its
    /// hold on attempt 2, so when the worker was lost again the job was not re-queued: in flight
    /// forever, and the router's drain never ended.
    @Test("a late answer to an old attempt neither drops the job nor finishes it twice", .timeLimit(.minutes(10)))
    func lateAnswerToOldAttempt() throws {
        let pipeline = try RouterOnThread { $0.maxAttempts = 5 }
        let hand = try HandWorker(pipeline, handler: InspectorStage(MarkerInspector(criterion: "ethical")), credit: 1)
        #expect(hand.wait { pipeline.stats.workers == 1 })
        try pipeline.worker(AlignerStage(MarkerAligner(criterion: "ethical")))
        let run = try pipeline.startFilter(badLines(2))   // one job of two samples (job size 2)

        let attempt1 = try #require(hand.nextJob())
        #expect(attempt1.attempt == 1)
        hand.send(.disconnect("lost"))   // the router re-queues the job...
        hand.register()                  // ...and gives it back to the worker, registered again
        let attempt2 = try #require(hand.nextJob())
        #expect(attempt2.id == attempt1.id && attempt2.attempt == 2)
        hand.answer(attempt1)            // late: must not count, nor free attempt 2
        #expect(hand.wait { pipeline.stats.lateResults == 1 })
        hand.send(.disconnect("lost"))   // lost again, still holding attempt 2: the job must go back to its queue

        // A good inspector picks it up (attempt 3) and everything finishes.
        try pipeline.worker(InspectorStage(MarkerInspector(criterion: "ethical")))
        let summary = try run.wait()
        #expect(summary != nil, "the job stayed in flight: \(pipeline.stats)")
        #expect(allAligned(run.delivered.value, ids: ["s0", "s1"]))
        #expect(run.delivered.value.allSatisfy { $0.attempt == 3 }, "the inspection took three dispatches: \(run.delivered.value.map(\.attempt))")

        // Attempt 2's answer comes too, after the job was finished elsewhere: ignored.
        hand.register()
        hand.answer(attempt2)
        #expect(hand.wait { pipeline.stats.lateResults == 2 })
        #expect(pipeline.stats.delivered == 2 && pipeline.stats.failed == 0 && pipeline.stats.inFlight == 0, "\(pipeline.stats)")
        #expect(pipeline.stop(), "the router drains")
    }

    enum Mismatch: String, CaseIterable { case slowerWorker, slowerRouter }

    /// Heartbeat settings are exchanged (the worker's in Ready, the router's in every heartbeat):
    /// each side waits for the other at the slower interval and warns about the mismatch, so neither
    /// declares the other dead while it is alive.
    @Test("mismatched heartbeats: a warning, and no live peer declared dead", .timeLimit(.minutes(10)), arguments: Mismatch.allCases)
    func heartbeatMismatch(_ mismatch: Mismatch) throws {
        // The fast side alone would expect a beat within 50 ms × 5; the slow one beats every 1.5 s.
        let fast = HeartbeatSettings(intervalMs: 50, liveness: 5), slow = HeartbeatSettings(intervalMs: 1500, liveness: 5)
        let pipeline = try RouterOnThread { $0.heartbeat = mismatch == .slowerWorker ? fast : slow }
        let workerHeartbeat = mismatch == .slowerWorker ? slow : fast
        try pipeline.worker(InspectorStage(MarkerInspector(criterion: "ethical")), heartbeat: workerHeartbeat)
        try pipeline.worker(AlignerStage(MarkerAligner(criterion: "ethical")), heartbeat: workerHeartbeat)
        #expect(waitUntil { pipeline.stats.workers == 2 })
        // Long enough for the slow side to leave two gaps the fast side's settings would call death.
        Thread.sleep(forTimeInterval: 3.2)
        let run = try pipeline.startFilter(badLines(6))
        #expect(try run.wait() != nil)
        #expect(allAligned(run.delivered.value, ids: (0..<6).map { "s\($0)" }))
        let logs = pipeline.logs
        switch mismatch {
        case .slowerWorker:
            #expect(logs.count("worker heartbeat settings differ from the router's") == 2, "\(logs.all)")
            #expect(logs.all.contains { $0.contains("worker_heartbeat=1500 ms × 5") && $0.contains("router_heartbeat=50 ms × 5") })
        case .slowerRouter:
            #expect(logs.count("router heartbeat settings differ from this worker's") == 2, "\(logs.all)")
        }
        #expect(logs.count("worker lost") == 0 && logs.count("router silent") == 0, "\(logs.all)")
        #expect(logs.count("worker ready") == 2, "each worker registered once: \(logs.all)")
        #expect(pipeline.stats.requeued == 0)
        #expect(pipeline.stop())
    }

    /// A router restarted so fast that the client's socket reconnected by itself: its messages carry a
    /// new incarnation, and the client sends again exactly what the old router held. The new router
    /// here grants a smaller window than the old one, which the client's old guess (a grant beyond
    /// the window means a new router) did not notice: the samples stayed unanswered forever.
    @Test("a new router incarnation: the filter re-sends what the old one held, none lost, none twice", .timeLimit(.minutes(10)))
    func incarnationChange() throws {
        let context = ZMQContext()
        let endpoint = "inproc://fake-router-\(UUID().uuidString)"
        let router = try ZMQSocket(context, .router)
        try router.bind(endpoint)
        var settings = FilterSettings()
        settings.heartbeat = HeartbeatSettings(intervalMs: 100, liveness: 100)
        settings.routerTimeoutMs = 600_000
        let count = 8
        let filter = Filter(context: context, endpoint: endpoint, settings: settings, logger: Logger(label: "f") { _ in SwiftLogNoOpLogHandler() },
                            input: try fileDescriptor(for: badLines(count)), output: open("/dev/null", O_WRONLY))
        let run = FilterRun(filter)
        defer { context.shutdown() }   // ends the filter if the test failed before it finished

        var client: [UInt8] = []
        var poller = ZMQPoller([router])
        func say(_ kind: WireMessage.OneOf_Kind, incarnation: UInt64) {
            var message = WireMessage(kind)
            message.routerIncarnation = incarnation
            _ = try? router.send([client, message.bytes()])
        }
        func credit(_ n: Int) -> WireMessage.OneOf_Kind { .credit(.with { $0.envelopes = UInt32(n) }) }
        func deliver(_ envelopes: [Envelope]) -> WireMessage.OneOf_Kind { .deliver(.with { $0.envelopes = envelopes }) }
        /// Envelopes submitted, until `n` have come (and the client has spoken) or a minute passes;
        /// heartbeats from `incarnation` meanwhile.
        var addressedTo: [UInt64: UInt64] = [:]   // seq → the incarnation its latest submission named
        func submitted(_ n: Int, incarnation: UInt64) -> [Envelope] {
            var got: [Envelope] = []
            let deadline = Date().addingTimeInterval(60)
            while (got.count < n || client.isEmpty) && Date() < deadline {
                guard (try? poller.poll(timeoutMs: 100))?.first == true else {
                    if !client.isEmpty { say(WireMessage.heartbeat(settings.heartbeat).kind!, incarnation: incarnation) }
                    continue
                }
                while let frames = try? router.receive(dontWait: true), frames.count == 2, let message = WireMessage.decode(frames[1]) {
                    client = frames[0]
                    if case .submit(let s) = message.kind {
                        got += s.envelopes
                        for e in s.envelopes { addressedTo[e.seq] = message.routerIncarnation }
                    }
                }
            }
            return got
        }

        let old: UInt64 = 0xA1, new: UInt64 = 0xB2
        _ = submitted(0, incarnation: old)
        try #require(!client.isEmpty, "the client says hello")
        say(credit(count), incarnation: old)
        let sent = submitted(count, incarnation: old)
        #expect(sent.map(\.seq) == Array(1...UInt64(count)))
        #expect(addressedTo.values.allSatisfy { $0 == old }, "submissions name the router that granted the credit")
        // The old router delivers three, then dies before its credit for them goes out.
        say(deliver(Array(sent.prefix(3))), incarnation: old)
        // The new one, knowing nothing, grants its (smaller) window.
        say(credit(2), incarnation: new)
        var resent = submitted(2, incarnation: new)
        #expect(resent.map(\.seq) == [4, 5], "the oldest unanswered first, within the new window")
        say(deliver(resent), incarnation: new)
        say(credit(2), incarnation: new)
        resent += submitted(2, incarnation: new)
        say(deliver(Array(resent.suffix(2))), incarnation: new)
        say(credit(2), incarnation: new)
        resent += submitted(1, incarnation: new)
        #expect(resent.map(\.seq) == [4, 5, 6, 7, 8], "exactly what the old router held, once each")
        #expect(resent.allSatisfy { addressedTo[$0.seq] == new }, "sent again to the new router, by its incarnation")
        say(deliver(Array(resent.suffix(1))), incarnation: new)

        let summary = try run.wait()
        #expect(summary?.lines == count)
        #expect(run.delivered.value.map(\.seq).sorted() == Array(1...UInt64(count)), "every line once")
        router.close()
    }

    /// What a socket queued for a router that restarted reaches its successor: a client's
    /// submission (the client sends it again once it sees the new incarnation) and a worker's answer
    /// to the old router's job (whose id may name one of the new router's). Both name the old
    /// incarnation, and the router ignores them: nothing runs twice, no answer lands on the wrong job.
    @Test("the router ignores submissions and answers meant for a previous incarnation", .timeLimit(.minutes(10)))
    func staleIncarnationIgnored() throws {
        let pipeline = try RouterOnThread()
        let previous = pipeline.router.incarnation &+ 1
        let hand = try HandWorker(pipeline, handler: InspectorStage(MarkerInspector(criterion: "ethical")), credit: 1)
        #expect(hand.wait { pipeline.stats.workers == 1 })
        try pipeline.worker(AlignerStage(MarkerAligner(criterion: "ethical")))
        let run = try pipeline.startFilter(badLines(2))
        let job = try #require(hand.nextJob())
        hand.answer(job, to: previous)
        #expect(hand.wait { pipeline.stats.lateResults == 1 }, "\(pipeline.stats)")
        #expect(pipeline.stats.delivered == 0 && pipeline.stats.droppedWorkers == 0)
        hand.answer(job)   // the same, to this router: taken (and the re-inspection after the aligner, too)
        #expect(hand.wait(onJob: { hand.answer($0) }) { pipeline.stats.delivered == 2 }, "\(pipeline.stats)")
        #expect(try run.wait() != nil)
        #expect(allAligned(run.delivered.value, ids: ["s0", "s1"]))
        hand.send(.disconnect("stopped"))
        try pipeline.worker(InspectorStage(MarkerInspector(criterion: "ethical")))

        let client = try ZMQSocket(pipeline.context, .dealer)
        defer { client.close() }
        try client.connect(pipeline.router.frontendEndpoint)
        try client.send([WireMessage.heartbeat(pipeline.router.settings.heartbeat).bytes()])
        let grant = try #require(try receive(client))
        #expect(grant.routerIncarnation == pipeline.router.incarnation)
        func submit(_ id: String, seq: UInt64, to incarnation: UInt64) throws {
            var envelope = Envelope()
            envelope.id = id
            envelope.seq = seq
            envelope.conversation = [.with { $0.role = "user"; $0.content = "q" }]
            envelope.response = "a [bad:ethical]"
            var message = WireMessage(.submit(.with { $0.envelopes = [envelope] }))
            message.routerIncarnation = incarnation
            try client.send([message.bytes()])
        }
        try submit("queued-for-the-old-router", seq: 1, to: previous)
        try submit("for-this-router", seq: 2, to: pipeline.router.incarnation)
        var delivered: [Envelope] = []
        while delivered.isEmpty, let message = try receive(client) {
            if case .deliver(let d) = message.kind { delivered += d.envelopes }
        }
        #expect(delivered.map(\.id) == ["for-this-router"])
        #expect(allAligned(delivered, ids: ["for-this-router"]))
        #expect(pipeline.stats.received == 3, "the stale submission was not taken: \(pipeline.stats)")
        #expect(pipeline.stop())
    }
}
