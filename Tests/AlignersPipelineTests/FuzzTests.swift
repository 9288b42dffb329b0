import AlignersSchema
import Foundation
import Logging
import Testing
@testable import AlignersPipeline
import PipelineTestDoubles

/// A small seeded generator so every fuzz run is reproducible.
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

func randomBytes(_ n: Int, _ rng: inout SplitMix64) -> [UInt8] { (0..<n).map { _ in UInt8.random(in: 0...255, using: &rng) } }

/// Lines a person or a broken program might send: valid samples, truncations, junk, odd Unicode.
func fuzzLine(_ rng: inout SplitMix64) -> [UInt8] {
    let valid = #"{"prompt":"p","response":"r [bad:ethical]","x":[1,{"y":null}]}"#
    switch Int.random(in: 0..<8, using: &rng) {
    case 0: return Array(valid.utf8)
    case 1: return Array(valid.utf8.prefix(Int.random(in: 0..<valid.utf8.count, using: &rng)))
    case 2: return randomBytes(Int.random(in: 0..<200, using: &rng), &rng).filter { $0 != 10 }
    case 3: return Array(#"{"messages":[{"role":"user","content":"ñ 中文 🙂 \u0000"},{"role":"assistant","content":"a"}]}"#.utf8)
    case 4: return Array(#"{"prompt":"\#(String(repeating: "é", count: Int.random(in: 0..<500, using: &rng)))"}"#.utf8)
    case 5: return Array(#"{"messages":[{"role":5}]}"#.utf8)
    case 6: return Array(String(repeating: "[", count: Int.random(in: 1..<3000, using: &rng)).utf8)  // deep nesting
    default:
        var bytes = Array(valid.utf8)
        for _ in 0..<3 { bytes[Int.random(in: 0..<bytes.count, using: &rng)] = UInt8.random(in: 0...255, using: &rng) }
        return bytes.filter { $0 != 10 }
    }
}

@Suite("Fuzz", .serialized)
struct FuzzTests {
    @Test("random lines and bytes through the filter: one record per line, no crash, no hang",
          .timeLimit(.minutes(10)), arguments: [1, 2, 3, 4])
    func filterFuzz(seed: UInt64) throws {
        var rng = SplitMix64(state: seed)
        var input: [UInt8] = []
        var lines = 0
        for _ in 0..<400 {
            input += fuzzLine(&rng) + [10]
            lines += 1
        }
        // A final line without a newline counts as a line.
        input += randomBytes(50, &rng).filter { $0 != 10 }
        lines += 1
        let out = try runFilter(input, criteria: ["ethical"])
        #expect(out.raw.count == lines)
        #expect(out.lines.allSatisfy { !$0.isEmpty }, "every output line is a JSON object")
        #expect(out.summary.lines == lines)
    }

    @Test("random bytes into the envelope decoder never crash it", arguments: [7, 8])
    func decoderFuzz(seed: UInt64) {
        var rng = SplitMix64(state: seed)
        var valid = Envelope()
        valid.id = "x"
        valid.response = "hello"
        valid.conversation = [Aligners_V1_Turn.with { $0.role = "user"; $0.content = "q" }]
        let good = (try? valid.serializedBytes()) ?? [UInt8]()
        var decoded = 0
        for i in 0..<20_000 {
            var bytes = i % 2 == 0 ? randomBytes(Int.random(in: 0..<64, using: &rng), &rng) : good
            if i % 2 == 1 { bytes[Int.random(in: 0..<bytes.count, using: &rng)] ^= UInt8.random(in: 1...255, using: &rng) }
            if (try? Envelope(serializedBytes: bytes)) != nil { decoded += 1 }
            _ = WireMessage.decode(bytes)
        }
        #expect(decoded > 0)
    }

    /// A started in-process pipeline for the ethical criterion on the marker doubles.
    static func ethicalPipeline(heartbeat: HeartbeatSettings) throws -> (ZMQContext, LocalPipeline, Logger) {
        var logger = Logger(label: "fuzz")
        logger.logLevel = .critical
        let context = ZMQContext()
        var settings = RouterSettings(criteria: ["ethical"])
        settings.batchWindowMs = 5
        settings.heartbeat = heartbeat
        let pipeline = try LocalPipeline(context: context, settings: settings,
                                         handlers: [InspectorStage(MarkerInspector(criterion: "ethical")),
                                                    AlignerStage(MarkerAligner(criterion: "ethical"))],
                                         logger: logger)
        pipeline.start()
        return (context, pipeline, logger)
    }

    @Test("a worker registering again from a new socket replaces its old registration", .timeLimit(.minutes(10)))
    func reconnectedWorkerCountsOnce() throws {
        // Nothing expires during the test.
        let (context, pipeline, logger) = try Self.ethicalPipeline(heartbeat: HeartbeatSettings(intervalMs: 60_000, liveness: 5))
        var sockets: [ZMQSocket] = []
        for name in ["twin", "twin", "other"] {
            let s = try ZMQSocket(context, .dealer)
            try s.connect(pipeline.router.backendEndpoint)
            var ready = Aligners_V1_Ready()
            ready.service = "align.unused"
            ready.worker = name
            ready.credit = 1
            _ = try s.send([WireMessage(.ready(ready)).bytes()], dontWait: false)
            sockets.append(s)
        }
        // A stream through the pipeline afterwards (the registrations are handled by then).
        let filter = Filter(context: context, endpoint: pipeline.frontend, settings: FilterSettings(), logger: logger,
                            input: try fileDescriptor(for: (0..<5).map { #"{"prompt":"q","response":"r\#($0)"}"# }),
                            output: open("/dev/null", O_WRONLY))
        #expect(try filter.run().lines == 5)
        pipeline.stop()
        for s in sockets { s.close() }
        // The pipeline's own inspector and aligner, one "twin" and one "other".
        #expect(pipeline.router.stats.workers == 4)
    }

    @Test("junk on the router's sockets is ignored and the pipeline keeps working", .timeLimit(.minutes(10)))
    func routerSocketFuzz() throws {
        let (context, pipeline, logger) = try Self.ethicalPipeline(heartbeat: HeartbeatSettings(intervalMs: 100, liveness: 5))
        defer { pipeline.stop() }
        var rng = SplitMix64(state: 99)
        let backendEndpoint = pipeline.router.backendEndpoint
        for endpoint in [pipeline.frontend, backendEndpoint] {
            let junk = try ZMQSocket(context, .dealer)
            try junk.connect(endpoint)
            for i in 0..<2000 {
                let frames = (0..<Int.random(in: 1...3, using: &rng)).map { _ in randomBytes(Int.random(in: 0..<100, using: &rng), &rng) }
                if i % 10 == 0 {
                    // Well-formed messages in the wrong place or with nonsense fields.
                    var job = Aligners_V1_JobResult()
                    job.id = UInt64.random(in: 0...10, using: &rng)
                    job.attempt = 1
                    _ = try junk.send([WireMessage(.result(job)).bytes()], dontWait: true)
                    var ready = Aligners_V1_Ready()
                    ready.service = "align.nonexistent"
                    ready.credit = 0
                    _ = try junk.send([WireMessage(.ready(ready)).bytes()], dontWait: true)
                }
                _ = try junk.send(frames, dontWait: true)
            }
            junk.close()
        }
        // A real client afterwards gets every sample back.
        let filter = Filter(context: context, endpoint: pipeline.frontend, settings: FilterSettings(), logger: logger,
                            input: try fileDescriptor(for: (0..<20).map { #"{"prompt":"q","response":"r\#($0) [bad:ethical]"}"# }),
                            output: open("/dev/null", O_WRONLY))
        let summary = try filter.run()
        #expect(summary.lines == 20)
        #expect(summary.aligned == 20)
        #expect(pipeline.router.stats.rejectedFrames > 0)
    }
}

/// A readable descriptor holding `lines` (through a temporary file).
func fileDescriptor(for lines: [String]) throws -> Int32 {
    let url = FileManager.default.temporaryDirectory.appendingPathComponent("aligners-\(UUID().uuidString).jsonl")
    try (lines.joined(separator: "\n") + "\n").write(to: url, atomically: true, encoding: .utf8)
    defer { try? FileManager.default.removeItem(at: url) }
    return open(url.path, O_RDONLY)
}
