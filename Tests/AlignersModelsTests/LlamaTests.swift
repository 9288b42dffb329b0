import Foundation
import Testing
@testable import AlignersEngine
@testable import AlignersSquadModels
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
        let saved = model.plan
        model.plan.batchThreshold = batchThreshold
        model.plan.vnni = vnni && saved.vnni
        defer { model.plan = saved }
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

    /// The float (dequantize-FMA) kernels, for every row.
    @Test func floatKernelsMatchReference() throws {
        let model = try #require(DecoderTestModel.model)
        let saved = model.plan
        (model.plan.integerDots, model.plan.batchThreshold) = (false, 1000)
        defer { model.plan = saved }
        let j = try Self.fixture()
        let tol = Float((j["tolerance_abs"] as! NSNumber).doubleValue)
        for c in j["logits"] as! [[String: Any]] {
            let out = try logits(model, Self.ints(c["prompt"]))
            for (i, v) in zip(Self.ints(c["top_ids"]), Self.floats(c["top_values"])) { #expect(abs(out[i] - v) <= tol, "token \(i): \(out[i]) vs \(v)") }
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

    /// Caches that read a shared prompt prefix in place (`KVCache.share`) give the logits of caches
    /// that computed it: a prefill after the prefix, then batched decode steps in which the rows
    /// sharing the snapshot form one chunk (beside a row that shares nothing). Float products
    /// throughout (sgemm): with int16 activations a 1e-7 difference in attention can flip a
    /// quantization step and move logits by ~1e-2, which would hide a real error.
    @Test func sharedPrefixEqualsComputedPrefix() throws {
        let model = try #require(DecoderTestModel.model)
        let saved = model.plan
        (model.plan.batchThreshold, model.plan.vnni) = (1, false)
        defer { model.plan = saved }
        let V = model.config.vocabulary
        let prefix = Array(200..<260), suffixes = [Array(300..<320), Array(400..<425), Array(500..<517)]
        let snapshot = KVCache(config: model.config, capacity: prefix.count)
        var out = [Float](repeating: 0, count: 4 * V)
        try out.withUnsafeMutableBufferPointer { o in
            try model.forward([DecoderSegment(cache: snapshot, tokens: prefix, wantsLogits: false)], logits: o.baseAddress!)
        }
        func run(sharing: Bool) throws -> [[Float]] {
            let caches = suffixes.map { _ in KVCache(config: model.config, capacity: 96) }
            let loner = KVCache(config: model.config, capacity: 80)
            var steps: [[Float]] = []
            try out.withUnsafeMutableBufferPointer { o in
                for (cache, suffix) in zip(caches, suffixes) {
                    if sharing {
                        cache.share(snapshot, count: prefix.count)
                        try model.forward([DecoderSegment(cache: cache, tokens: suffix)], logits: o.baseAddress!)
                    } else {
                        try model.forward([DecoderSegment(cache: cache, tokens: prefix + suffix)], logits: o.baseAddress!)
                    }
                    steps.append(Array(o.prefix(V)))
                }
                try model.forward([DecoderSegment(cache: loner, tokens: Array(600..<630))], logits: o.baseAddress!)
                for step in 0..<3 {
                    let segs = (caches + [loner]).enumerated().map { DecoderSegment(cache: $1, tokens: [700 + 10 * step + $0]) }
                    try model.forward(segs, logits: o.baseAddress!)
                    steps.append(Array(o.prefix(4 * V)))
                }
            }
            return steps
        }
        let computed = try run(sharing: false), shared = try run(sharing: true)
        #expect(computed.count == shared.count)
        for (a, b) in zip(computed, shared) {
            let worst = zip(a, b).map { abs($0 - $1) }.max()!
            #expect(worst < 3e-4, "largest logit difference \(worst)")
        }
    }
}
