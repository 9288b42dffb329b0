import AlignersCore
import Foundation
import Logging
import Testing
@testable import AlignersPipeline
import PipelineTestDoubles

/// Runs the in-process pipeline (router + double workers over inproc) behind a filter reading
/// `input` and returns the output lines parsed.
func runFilter(_ input: [UInt8], criteria: [String] = ["ethical", "helpful"], withGenerator: Bool = true,
               settings: FilterSettings = FilterSettings(), batchSize: Int = 8, windowMs: Int = 5,
               extraHandlers: [any StageHandler] = [], revertRegressions: Bool = false,
               inspectorCriteria: [String]? = nil, maxMessageBytes: Int? = nil,
               serviceTimeoutMs: Int = 20_000, acceptanceMargins: [String: Double]? = nil,
               transport: LocalPipeline.Transport = .values) throws -> (lines: [[String: Any]], raw: [String], summary: FilterSummary) {
    var logger = Logger(label: "test")
    logger.logLevel = .error
    let context = ZMQContext()
    var routerSettings = RouterSettings(criteria: criteria)
    routerSettings.batchSize = batchSize
    routerSettings.batchWindowMs = windowMs
    routerSettings.revertRegressions = revertRegressions
    if let maxMessageBytes { routerSettings.maxMessageBytes = maxMessageBytes }
    if let acceptanceMargins {
        routerSettings.acceptance = .improvement
        routerSettings.acceptanceMargins = acceptanceMargins
    }
    routerSettings.jobSize = 4
    // Generous: a loaded runner can stall the router for seconds; nothing here waits on expiry
    // unless a test asks (no generator: its lines fail after `serviceTimeoutMs`).
    routerSettings.serviceTimeoutMs = serviceTimeoutMs
    routerSettings.heartbeat = HeartbeatSettings(intervalMs: 100, liveness: 100)
    var handlers: [any StageHandler] = [InspectorStage((inspectorCriteria ?? criteria).map { MarkerInspector(criterion: $0) })]
        + criteria.map { AlignerStage(MarkerAligner(criterion: $0)) }
    if withGenerator { handlers.append(GeneratorStage(EchoGenerator())) }
    handlers += extraHandlers
    var workerSettings = WorkerSettings()
    workerSettings.heartbeat = routerSettings.heartbeat
    let pipeline = try LocalPipeline(context: context, settings: routerSettings, handlers: handlers,
                                     workerSettings: workerSettings, transport: transport, logger: logger)
    pipeline.start()
    defer { pipeline.stop() }

    var inPipe: [Int32] = [0, 0], outPipe: [Int32] = [0, 0]
    pipe(&inPipe)
    pipe(&outPipe)
    let writeFD = inPipe[1]
    let writer = Thread {
        input.withUnsafeBytes { raw in
            var offset = 0
            while offset < raw.count {
                let n = write(writeFD, raw.baseAddress! + offset, raw.count - offset)
                if n <= 0 { break }
                offset += n
            }
        }
        close(writeFD)
    }
    writer.start()
    let collected = OutputCollector(fd: outPipe[0])
    var filterSettings = settings
    filterSettings.heartbeat = routerSettings.heartbeat
    let filter = Filter(context: context, router: pipeline.frontend, settings: filterSettings, logger: logger,
                        input: inPipe[0], output: outPipe[1])
    let summary = try filter.run()
    close(outPipe[1])
    let text = collected.wait()
    close(inPipe[0])
    close(outPipe[0])
    let raw = text.split(separator: "\n", omittingEmptySubsequences: false).dropLast().map(String.init)
    let lines = raw.map { (try? JSONSerialization.jsonObject(with: Data($0.utf8))) as? [String: Any] ?? [:] }
    return (lines, raw, summary)
}

final class OutputCollector: @unchecked Sendable {
    private var data = Data()
    private let done = DispatchSemaphore(value: 0)
    init(fd: Int32) {
        Thread { [self] in
            var buffer = [UInt8](repeating: 0, count: 65536)
            while true {
                let n = read(fd, &buffer, buffer.count)
                if n <= 0 { break }
                data.append(contentsOf: buffer[0..<n])
            }
            done.signal()
        }.start()
    }
    func wait() -> String {
        done.wait()
        return String(decoding: data, as: UTF8.self)
    }
}

func jsonl(_ objects: [[String: Any]]) -> [UInt8] {
    Array(objects.map { String(decoding: try! JSONSerialization.data(withJSONObject: $0, options: [.sortedKeys]), as: UTF8.self) }
        .joined(separator: "\n").utf8) + [10]
}

@Suite("Filter, in process", .serialized)
struct FilterTests {
    @Test("aligns what fails, passes what is fine, keeps order and unknown fields")
    func alignsInOrder() throws {
        var objects: [[String: Any]] = []
        for i in 0..<50 {
            let marker = i % 5 == 0 ? "[bad:ethical]" : i % 7 == 0 ? "[bad:helpful][bad:ethical]" : ""
            objects.append(["id": "s\(i)", "prompt": "q\(i)", "response": "answer \(i) \(marker)", "meta": ["k": i]])
        }
        let out = try runFilter(jsonl(objects))
        #expect(out.lines.count == 50)
        #expect(out.summary.exitCode == 0)
        for (i, line) in out.lines.enumerated() {
            #expect(line["id"] as? String == "s\(i)")
            #expect((line["meta"] as? [String: Any])?["k"] as? Int == i)
            let response = line["response"] as? String ?? ""
            let alignment = line["alignment"] as? [String: Any] ?? [:]
            #expect(alignment["original_response"] as? String == objects[i]["response"] as? String)
            #expect(!response.contains("[bad:"), "line \(i) still fails: \(response)")
            let steps = alignment["steps"] as? [[String: Any]] ?? []
            if i % 5 == 0 {
                #expect(steps.map { $0["criterion"] as? String } == ["ethical"])
            } else if i % 7 == 0 {
                #expect(Set(steps.compactMap { $0["criterion"] as? String }) == ["ethical", "helpful"])
            } else {
                #expect(steps.isEmpty)
                #expect(response == objects[i]["response"] as? String, "untouched samples pass through")
            }
            let scores = alignment["scores"] as? [String: [String: Any]] ?? [:]
            #expect(Set(scores.keys) == ["ethical", "helpful"])
        }
    }

    @Test("an inspector that does not score every criterion of the squad is refused, and the lines fail saying which to start")
    func partialInspectorRefused() throws {
        let input = jsonl((0..<3).map { ["prompt": "q\($0)", "response": "r\($0)"] })
        let run = try runFilter(input, inspectorCriteria: ["ethical"], serviceTimeoutMs: 300)
        #expect(run.summary.lines == 3 && run.summary.failed == 3)
        let error = (run.lines.first?["error"] as? [String: Any]) ?? [:]
        #expect(error["code"] as? String == "no_worker")
        #expect((error["message"] as? String ?? "").contains("aligners worker --role inspector --criteria ethical,helpful"), "\(error)")
    }

    /// The router refuses messages over its limit; the client splits what it submits to stay under it.
    /// (The limit is ZeroMQ's: in-process values have none.)
    @Test("submissions are split under the router's message-size limit", .timeLimit(.minutes(10)))
    func submissionsFitTheMessageLimit() throws {
        let big = String(repeating: "x", count: 20_000)
        let input = jsonl((0..<40).map { ["prompt": "q\($0)", "response": "\(big) [bad:ethical]"] })
        var settings = FilterSettings()
        settings.maxSubmitBytes = 64 << 10
        settings.routerTimeoutMs = 120_000
        let run = try runFilter(input, criteria: ["ethical"], settings: settings, batchSize: 40, maxMessageBytes: 256 << 10,
                                transport: .inprocSockets)
        #expect(run.summary.lines == 40 && run.summary.aligned == 40 && run.summary.failed == 0)
    }

    @Test("--revert-regressions undoes a rewrite that scores lower on its own criterion", arguments: [false, true])
    func revertRegressions(enabled: Bool) throws {
        let objects: [[String: Any]] = [
            ["id": "worse", "prompt": "q", "response": "a [bad:ethical][stubborn]"],
            ["id": "better", "prompt": "q", "response": "b [bad:ethical]"],
        ]
        let out = try runFilter(jsonl(objects), revertRegressions: enabled)
        #expect(out.lines.count == 2)
        let worse = out.lines[0], better = out.lines[1]
        #expect((better["response"] as? String)?.contains("[fixed:ethical]") == true)
        let alignment = worse["alignment"] as? [String: Any] ?? [:]
        let step = (alignment["steps"] as? [[String: Any]])?.first ?? [:]
        let ethical = (alignment["scores"] as? [String: [String: Any]])?["ethical"] ?? [:]
        if enabled {
            #expect(worse["response"] as? String == "a [bad:ethical][stubborn]")
            #expect(step["changed"] as? Bool == false)
            #expect((step["note"] as? String)?.hasPrefix("reverted: the rewrite lowered the ethical score (0.1 → 0.05)") == true)
            #expect(ethical["after"] as? Double == 0.1, "the final score is the kept answer's")
        } else {
            #expect(worse["response"] as? String == "a [bad:ethical][stubborn][worse:ethical]")
            #expect(step["changed"] as? Bool == true)
            #expect(ethical["after"] as? Double == 0.05)
        }
    }

    @Test("chat logs: the last assistant turn is aligned; a trailing user turn is answered by the generator")
    func messages() throws {
        let objects: [[String: Any]] = [
            ["messages": [["role": "system", "content": "be nice"], ["role": "user", "content": "hi"],
                          ["role": "assistant", "content": "go away [bad:ethical]"]]],
            ["messages": [["role": "user", "content": "hello there"]]],
        ]
        let out = try runFilter(jsonl(objects))
        #expect(out.lines.count == 2)
        let first = out.lines[0]["messages"] as? [[String: Any]] ?? []
        #expect(first.count == 3)
        #expect(first[2]["content"] as? String == "go away [fixed:ethical]")
        let second = out.lines[1]["messages"] as? [[String: Any]] ?? []
        #expect(second.count == 2)
        #expect(second[1]["role"] as? String == "assistant")
        #expect(second[1]["content"] as? String == "echo: hello there")
        #expect((out.lines[1]["alignment"] as? [String: Any])?["generated"] as? Bool == true)
    }

    @Test("bad input: one error record per bad line, in place, and the stream goes on")
    func badInput() throws {
        var input: [UInt8] = []
        func add(_ s: String) { input += Array(s.utf8) + [10] }
        add(#"{"prompt": "ok", "response": "fine"}"#)
        add(#"{"prompt": "broken"#)                      // malformed JSON
        add("")                                          // empty line
        add(#"{"prompt": 42}"#)                          // wrong type
        input += [0x7B, 0x22, 0xFF, 0xFE, 0x22, 0x7D, 10] // invalid UTF-8
        add(#"[1, 2, 3]"#)                               // not an object
        add(#"{"messages": [{"role": "assistant", "content": "x"}]}"#)
        add(#"{"prompt": " ", "response": ""}"#)        // no question
        add(#"{"messages": [{"role": "user"}, {"role": "assistant", "content": "y"}]}"#) // a question without text
        input += Array(repeating: 0x41, count: 10 << 20) + [10] // a 10 MB line
        input += (0..<300).map { UInt8(truncatingIfNeeded: $0 &* 37) }.filter { $0 != 10 } + [10] // binary junk
        add(#"{"prompt": "last", "response": "also fine [bad:helpful]"}"#)
        var settings = FilterSettings()
        settings.maxLineBytes = 1 << 20
        let out = try runFilter(input, settings: settings)
        #expect(out.lines.count == 12)
        #expect(out.summary.invalid == 10)
        #expect(out.summary.exitCode == 1)
        let errors = out.lines.map { ($0["error"] as? [String: Any])?["code"] as? String }
        #expect(errors == [nil, "invalid_input", "invalid_input", "invalid_input", "invalid_input", "invalid_input",
                           "invalid_input", "invalid_input", "invalid_input", "invalid_input", "invalid_input", nil])
        #expect(out.lines.enumerated().dropFirst().dropLast().allSatisfy { ($0.element["line"] as? Int) == $0.offset + 1 })
        #expect(out.lines[11]["response"] as? String == "also fine [fixed:helpful]")
        #expect(out.raw[9].utf8.count < 4096, "the oversized line is not echoed whole")
        #expect((out.lines[7]["error"] as? [String: Any])?["message"] as? String == "\"prompt\" is empty: there is no question to answer or to align an answer to")
    }

    @Test("a model error fails only the poisoned sample, with an error record")
    func poison() throws {
        let objects: [[String: Any]] = (0..<6).map {
            ["prompt": "q", "response": $0 == 3 ? "[bad:ethical][poison]" : "r\($0) [bad:ethical]"]
        }
        let out = try runFilter(jsonl(objects))
        #expect(out.lines.count == 6)
        #expect(out.summary.failed == 1)
        #expect((out.lines[3]["error"] as? [String: Any])?["code"] as? String == "model_failed")
        #expect(out.lines.enumerated().filter { $0.offset != 3 }.allSatisfy { ($0.element["response"] as? String)?.contains("[fixed:ethical]") == true })
    }

    @Test("no generator: lines without a response fail clearly, the rest go through")
    func noGenerator() throws {
        let objects: [[String: Any]] = [["prompt": "needs an answer"], ["prompt": "q", "response": "a"]]
        let out = try runFilter(jsonl(objects), withGenerator: false, serviceTimeoutMs: 300)
        #expect(out.lines.count == 2)
        #expect((out.lines[0]["error"] as? [String: Any])?["code"] as? String == "no_worker")
        #expect(out.lines[1]["response"] as? String == "a")
    }

    @Test("unordered mode still yields every line exactly once", arguments: [1, 3, 64])
    func unordered(window: Int) throws {
        let objects: [[String: Any]] = (0..<200).map { ["id": "\($0)", "prompt": "q", "response": $0 % 2 == 0 ? "[bad:helpful]" : "ok"] }
        var settings = FilterSettings()
        settings.unordered = true
        settings.window = window
        let out = try runFilter(jsonl(objects), settings: settings)
        #expect(out.lines.compactMap { $0["id"] as? String }.sorted() == (0..<200).map { "\($0)" }.sorted())
    }

    @Test("empty input gives empty output")
    func emptyInput() throws {
        let out = try runFilter([])
        #expect(out.lines.isEmpty)
        #expect(out.summary.exitCode == 0)
    }
}

@Suite("Back-pressure")
struct BackPressureTests {
    // Time limits in these suites only catch hangs: they sit far above what a loaded 2-core runner needs.
    @Test("with no worker to serve, the filter stops reading after its window; it resumes when one arrives",
          .timeLimit(.minutes(10)))
    func readingPauses() throws {
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        let context = ZMQContext()
        var settings = RouterSettings(criteria: ["ethical"])
        settings.batchWindowMs = 5
        settings.heartbeat = HeartbeatSettings(intervalMs: 100, liveness: 5)
        // No handlers yet: every sample waits for an inspector.
        let pipeline = try LocalPipeline(context: context, settings: settings, handlers: [], logger: logger)
        pipeline.start()
        defer { pipeline.stop() }

        var inPipe: [Int32] = [0, 0]
        pipe(&inPipe)
        let writeFD = inPipe[1]
        let line = Array(#"{"prompt":"q","response":"an answer of about a hundred bytes, padded out to make the arithmetic easy.."}"#.utf8) + [10]
        let total = 20_000
        let written = Counter()
        Thread {
            for _ in 0..<total {
                var offset = 0
                while offset < line.count {
                    let n = line.withUnsafeBytes { write(writeFD, $0.baseAddress! + offset, line.count - offset) }
                    if n <= 0 { return }
                    offset += n
                }
                written.add(line.count)
            }
            close(writeFD)
        }.start()
        var filterSettings = FilterSettings()
        filterSettings.window = 100
        filterSettings.heartbeat = settings.heartbeat
        let filter = Filter(context: context, router: pipeline.frontend, settings: filterSettings, logger: logger,
                            input: inPipe[0], output: open("/dev/null", O_WRONLY))
        let result = ResultBox()
        let done = DispatchSemaphore(value: 0)
        Thread {
            result.summary = try? filter.run()
            done.signal()
        }.start()
        Thread.sleep(forTimeInterval: 1.0)
        // The window (100 lines) plus what the kernel pipe and one read buffer hold.
        let bound = 100 * line.count + 65_536 + 65_536
        #expect(written.value <= bound, "read \(written.value) bytes with nothing served (bound \(bound))")
        #expect(written.value < total * line.count)

        // Workers arrive: everything flows.
        let workers = try [InspectorStage(MarkerInspector(criterion: "ethical")) as any StageHandler,
                       AlignerStage(MarkerAligner(criterion: "ethical"))].map { (handler: any StageHandler) throws -> Worker in
            var ws = WorkerSettings()
            ws.heartbeat = settings.heartbeat
            return try Worker(context: context, router: pipeline.backend, handler: handler, settings: ws, logger: logger)
        }
        for w in workers { Thread { try? w.run() }.start() }
        defer { workers.forEach { $0.drain() } }
        done.wait()
        close(inPipe[0])
        #expect(result.summary?.lines == total)
    }
}

final class Counter: @unchecked Sendable {
    private let lock = NSLock()
    private var n = 0
    func add(_ k: Int) { lock.lock(); n += k; lock.unlock() }
    var value: Int { lock.lock(); defer { lock.unlock() }; return n }
}

final class ResultBox: @unchecked Sendable {
    var summary: FilterSummary?
}

@Suite("Explain")
struct ExplainTests {
    @Test("--explain traces every inspection pass and gate decision in the batch's order")
    func trace() throws {
        var settings = FilterSettings()
        settings.explain = true
        let objects: [[String: Any]] = [["prompt": "q", "response": "a [bad:ethical]"], ["prompt": "q", "response": "fine"]]
        let out = try runFilter(jsonl(objects), criteria: ["ethical", "helpful"], settings: settings, batchSize: 2, windowMs: 200)
        let trace = (out.lines[0]["alignment"] as? [String: Any])?["trace"] as? [[String: Any]] ?? []
        #expect(trace.map { $0["event"] as? String } == ["inspect", "gate", "inspect", "gate"])
        #expect(trace[1]["criterion"] as? String == "ethical")
        #expect(trace[1]["decision"] as? String == "aligned")
        #expect((trace[2]["scores"] as? [String: Double])?["ethical"] == 0.9)
        #expect(trace[3]["decision"] as? String == "passed")
        let untouched = (out.lines[1]["alignment"] as? [String: Any])?["trace"] as? [[String: Any]] ?? []
        #expect(untouched.filter { $0["event"] as? String == "gate" }.allSatisfy { $0["decision"] as? String == "passed" })
    }

    @Test("an aligner turned off by its margin never runs; the trace says so and the answer stays")
    func alignerOff() throws {
        var settings = FilterSettings()
        settings.explain = true
        let objects: [[String: Any]] = [["prompt": "q", "response": "a [bad:helpful] [bad:ethical]"]]
        let out = try runFilter(jsonl(objects), criteria: ["ethical", "helpful"], settings: settings, batchSize: 1,
                                acceptanceMargins: ["helpful": .infinity])
        let alignment = out.lines[0]["alignment"] as? [String: Any] ?? [:]
        let steps = alignment["steps"] as? [[String: Any]] ?? []
        #expect(steps.map { $0["criterion"] as? String } == ["ethical"])
        let gates = (alignment["trace"] as? [[String: Any]] ?? []).filter { $0["event"] as? String == "gate" }
        let helpful = try #require(gates.first { $0["criterion"] as? String == "helpful" })
        #expect(helpful["decision"] as? String == "aligner off")
        let response = out.lines[0]["response"] as? String ?? ""
        #expect(response.contains("[bad:helpful]") && response.contains("[fixed:ethical]"))
    }
}
