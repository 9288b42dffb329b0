import Foundation
import Testing
@testable import AlignersModels
import AlignersKernels

@Suite(.enabled(if: DecoderTestModel.available, DecoderTestModel.skipMessage), .serialized)
struct LlamaTests {
    static func fixture() throws -> [String: Any] { try Fixtures.json("llama") }
    static func ints(_ a: Any?) -> [Int] { (a as! [Any]).map { ($0 as! NSNumber).intValue } }
    static func floats(_ a: Any?) -> [Float] { (a as! [Any]).map { ($0 as! NSNumber).floatValue } }

    func logits(_ model: LlamaModel, _ prompt: [Int]) throws -> [Float] {
        let cache = KVCache(config: model.config, capacity: prompt.count + 8)
        var out = [Float](repeating: 0, count: model.config.vocabulary)
        try out.withUnsafeMutableBufferPointer { try model.forward([DecoderSegment(cache: cache, tokens: prompt)], logits: $0.baseAddress!) }
        return out
    }

    /// Every product path: batched from 1 or 4 rows (VNNI gemm where the CPU has it, else sgemm),
    /// sgemm even where it has, and the small-product kernels even for prompts (1000).
    @Test(arguments: [(1, true), (4, true), (1, false), (1000, true)])
    func logitsMatchReference(batchThreshold: Int, vnni: Bool) throws {
        let model = try #require(DecoderTestModel.model)
        let saved = (model.batchThreshold, QuantKernels.vnni)
        model.batchThreshold = batchThreshold
        QuantKernels.vnni = vnni && QuantKernels.vnniSupported
        defer { (model.batchThreshold, QuantKernels.vnni) = saved }
        let j = try Self.fixture()
        let tol = Float((j["tolerance_abs"] as! NSNumber).doubleValue)
        for c in j["logits"] as! [[String: Any]] {
            let out = try logits(model, Self.ints(c["prompt"]))
            let ids = Self.ints(c["top_ids"]), vals = Self.floats(c["top_values"])
            for (i, v) in zip(ids, vals) { #expect(abs(out[i] - v) <= tol, "token \(i): \(out[i]) vs \(v)") }
            #expect(out.indices.max { out[$0] < out[$1] } == ids[0])
            for (i, v) in Self.floats(c["first16"]).enumerated() { #expect(abs(out[i] - v) <= tol) }
        }
    }

    @Test func greedyMatchesReference() throws {
        let model = try #require(DecoderTestModel.model)
        let j = try Self.fixture()
        for c in j["greedy"] as! [[String: Any]] {
            let prompt = Self.ints(c["prompt"]), want = Self.ints(c["continuation"])
            let cache = KVCache(config: model.config, capacity: prompt.count + want.count + 1)
            var out = [Float](repeating: 0, count: model.config.vocabulary)
            var got: [Int] = []
            var next = prompt
            for _ in 0..<want.count {
                try out.withUnsafeMutableBufferPointer { try model.forward([DecoderSegment(cache: cache, tokens: next)], logits: $0.baseAddress!) }
                let t = out.indices.max { out[$0] < out[$1] }!
                got.append(t)
                next = [t]
            }
            #expect(got == want)
        }
    }

    @Test func raggedBatchEqualsSeparateRuns() throws {
        let model = try #require(DecoderTestModel.model)
        let j = try Self.fixture()
        let prompts = (j["logits"] as! [[String: Any]]).map { Self.ints($0["prompt"]) }
        let separate = try prompts.map { try logits(model, $0) }
        // Prefill all three in one forward, then one more decode token each, batched.
        let caches = prompts.map { KVCache(config: model.config, capacity: $0.count + 4) }
        let V = model.config.vocabulary
        var out = [Float](repeating: 0, count: 3 * V)
        try out.withUnsafeMutableBufferPointer { o in
            try model.forward(zip(caches, prompts).map { DecoderSegment(cache: $0, tokens: $1) }, logits: o.baseAddress!)
        }
        for s in 0..<3 {
            for i in stride(from: 0, to: V, by: 97) { #expect(abs(out[s * V + i] - separate[s][i]) < 0.02) }
        }
        #expect(throws: DecoderError.self) {
            try out.withUnsafeMutableBufferPointer { o in
                try model.forward([DecoderSegment(cache: caches[0], tokens: [1, 2, 3, 4, 5])], logits: o.baseAddress!)
            }
        }
    }
}
