import ArgumentParser
import Foundation
import AlignersKernels
import AlignersEngine
import AlignersSquadModels

/// `aligners generate-bench`: decoder throughput (prompt processing, single-stream decode,
/// aggregate batched decode) and the memory-bandwidth bound for single-stream decode.
/// `scripts/bench/decoder_bench.sh` runs it next to llama.cpp and prints the ratios.
struct GenerateBenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "generate-bench",
        abstract: "Benchmark the embedded decoder (see scripts/bench/decoder_bench.sh for the comparison with llama.cpp).")

    @Option(help: "GGUF model path (default: the SmolLM2 model under the models directory).") var model: String?
    @Option(help: "Prompt length for prompt processing.") var promptTokens = 500
    @Option(help: "Tokens decoded in the single-stream test.") var decodeTokens = 128
    @Option(help: "Tokens decoded per sequence in the batched tests.") var batchTokens = 32
    @Option(help: "Batch sizes, comma-separated.") var batches = "8,32,64"
    @Option(help: "Prompt tokens per sequence in the batched tests (the aligners' prompts are ~1,000).") var batchPromptTokens = 24
    @Option(help: "Repetitions (best is reported).") var repeats = 3
    @Option(help: "A LoRA adapter directory (PEFT format) applied to every sequence: its cost against the base model.")
    var adapter: String?
    @Flag(help: "Print one JSON object instead of a table.") var json = false
    @Flag(help: "Only time the kernels, one thread: matrix-vector, and 64-row products by VNNI gemm and sgemm (GFLOP/s per CPU-second).") var kernels = false
    @Flag(help: "With --kernels: the float (dequantize-FMA) kernels instead of the integer ones.") var floatKernels = false

    func run() throws {
        let path = try model ?? ModelLocator.locate(TextGenerator.defaultModel).path
        let compute = ComputeContext.forCommand()
        let gen = try TextGenerator(path: path, context: compute)
        guard let llama = gen.model as? LlamaModel else { throw ValidationError("benchmark expects a llama model") }
        let cfg = llama.config
        var results: [String: Double] = [:]
        let lora = try adapter.map { try PEFTAdapter.load(directory: $0, model: cfg) }

        if kernels {
            // Thread CPU time, not wall time: on a shared machine the thread is not always running.
            func cpuNow() -> Double {
                var ts = timespec()
                clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts)
                return Double(ts.tv_sec) + Double(ts.tv_nsec) * 1e-9
            }
            for (name, t) in [("q4_1_1536x576", try gen.gguf.tensor("blk.0.ffn_gate.weight")),
                              ("q4_1_576x1536", try gen.gguf.tensor("blk.0.ffn_down.weight")),
                              ("q8_0_49152x576", try gen.gguf.tensor("token_embd.weight"))] {
                let x = [Float](repeating: 0.5, count: t.cols)
                var y = [Float](repeating: 0, count: t.rows)
                let reps = max(20, 200_000_000 / (t.rows * t.cols))
                var bestK = 0.0
                for _ in 0..<3 {
                    let t0 = cpuNow()
                    x.withUnsafeBufferPointer { xp in
                        y.withUnsafeMutableBufferPointer { yp in
                            for _ in 0..<reps { QuantKernels.matvec(t, x: xp.baseAddress!, y: yp.baseAddress!, rows: 0..<t.rows, integer: !floatKernels) }
                        }
                    }
                    bestK = max(bestK, 2.0 * Double(t.rows * t.cols * reps) / (cpuNow() - t0) / 1e9)
                }
                results[name + "_gflops"] = bestK
            }
            // The batched products at 64 rows, one thread: VNNI gemm on interleaved weights against
            // sgemm on F32 copies (the two batched paths), same matrices.
            let one = ComputePool(threads: 1)
            let m = 64
            for (name, t) in [("q4_1_1536x576", try gen.gguf.tensor("blk.0.ffn_gate.weight")),
                              ("q4_1_576x1536", try gen.gguf.tensor("blk.0.ffn_down.weight"))] {
                let x = (0..<(m * t.cols)).map { Float(sin(Double($0) * 0.1)) }
                var y = [Float](repeating: 0, count: m * t.rows)
                let reps = max(5, 2_000_000_000 / (m * t.rows * t.cols))
                let dense = QuantKernels.dequantize(t, pool: one)
                defer { dense.deallocate() }
                let acts = Int16Activations()
                var paths: [(String, () -> Void)] = [("sgemm", {
                    x.withUnsafeBufferPointer { xp in y.withUnsafeMutableBufferPointer { yp in
                        BLAS.gemmNT(m: m, n: t.rows, k: t.cols, x: xp.baseAddress!, w: dense, y: yp.baseAddress!, pool: one)
                    } }
                })]
                if QuantKernels.vnniSupported && QuantKernels.interleavable(t) {
                    let w = InterleavedWeights(t, pool: one)
                    paths.append(("vnni_gemm", {
                        x.withUnsafeBufferPointer { xp in y.withUnsafeMutableBufferPointer { yp in
                            acts.reset(m: m, k: t.cols)
                            acts.quantize(xp.baseAddress!, rows: 0..<m)
                            QuantKernels.gemm(w, acts, y: yp.baseAddress!, ldy: t.rows, groups: 0..<t.rows / 16, accumulate: false)
                        } }
                    }))
                }
                for (path, body) in paths {
                    var bestK = 0.0
                    for _ in 0..<3 {
                        let t0 = cpuNow()
                        for _ in 0..<reps { body() }
                        bestK = max(bestK, 2.0 * Double(m * t.rows * t.cols * reps) / (cpuNow() - t0) / 1e9)
                    }
                    results["\(name)_m\(m)_\(path)_gflops"] = bestK
                }
            }
            for (k, v) in results.sorted(by: { $0.key < $1.key }) { print(k.padding(toLength: 36, withPad: " ", startingAt: 0) + String(format: "%8.1f", v)) }
            return
        }

        // Deterministic token streams (ids of ordinary text tokens).
        func tokens(_ n: Int, salt: Int) -> [Int] {
            let base = gen.tokenizer.encode(String(repeating: "The quick brown fox jumps over the lazy dog near the river bank. ", count: n / 10 + 2))
            return (0..<n).map { base[($0 + salt * 7) % base.count] }
        }
        var logits = [Float](repeating: 0, count: cfg.vocabulary * 64)

        // Prompt processing.
        llama.prepareBatchedWeights()
        var best = 0.0
        for _ in 0..<repeats {
            let cache = KVCache(config: cfg, capacity: promptTokens + 1)
            let t0 = Date()
            try logits.withUnsafeMutableBufferPointer { try llama.forward([DecoderSegment(cache: cache, tokens: tokens(promptTokens, salt: 0), adapter: lora)], logits: $0.baseAddress!) }
            best = max(best, Double(promptTokens) / Date().timeIntervalSince(t0))
        }
        results["prompt_tps"] = best

        // Single-stream decode (greedy, fused kernels).
        best = 0
        for _ in 0..<repeats {
            let cache = KVCache(config: cfg, capacity: 16 + decodeTokens + 1)
            try logits.withUnsafeMutableBufferPointer { try llama.forward([DecoderSegment(cache: cache, tokens: tokens(16, salt: 1), adapter: lora)], logits: $0.baseAddress!) }
            var next = 0
            let t0 = Date()
            for _ in 0..<decodeTokens {
                try logits.withUnsafeMutableBufferPointer { l in
                    try llama.forward([DecoderSegment(cache: cache, tokens: [next], adapter: lora)], logits: l.baseAddress!)
                    var bi = 0
                    for i in 0..<cfg.vocabulary where l[i] > l[bi] { bi = i }
                    next = bi
                }
            }
            best = max(best, Double(decodeTokens) / Date().timeIntervalSince(t0))
        }
        results["decode_tps"] = best

        // Aggregate decode through the continuous-batching scheduler (prefill excluded).
        for b in batches.split(separator: ",").compactMap({ Int($0) }) {
            var bestB = 0.0
            for _ in 0..<max(1, repeats - 1) {
                let sched = BatchScheduler(model: llama, tokenizer: gen.tokenizer, maxBatch: b)
                for s in 0..<b {
                    sched.add(GenerationRequest(prompt: tokens(batchPromptTokens, salt: s + 3), maxNewTokens: batchTokens, adapter: lora)) { _ in }
                }
                try sched.step()  // prefill (in chunks for long prompts) + first token of every sequence
                while sched.prefillingCount > 0 { try sched.step() }
                let t0 = Date()
                try sched.runUntilIdle()
                bestB = max(bestB, Double(b * (batchTokens - 1)) / Date().timeIntervalSince(t0))
            }
            results["batch\(b)_tps"] = bestB
        }

        // Read bandwidth (both threads summing a 512 MiB buffer) and the decode bound it implies.
        let n = 128 << 20
        let buf = UnsafeMutablePointer<Float>.allocate(capacity: n)
        defer { buf.deallocate() }
        compute.pool.parallelFor(n, granule: 1 << 16) { r in for i in r { buf[i] = Float(i & 7) } }
        var bw = 0.0
        for _ in 0..<3 {
            let t0 = Date()
            var sink = [Float](repeating: 0, count: compute.pool.threads)
            sink.withUnsafeMutableBufferPointer { s in
                let sp = s.baseAddress!
                compute.pool.run { t in
                    let per = n / compute.pool.threads
                    sp[t] = QuantKernels.dotF32(buf + t * per, buf + t * per, per)
                }
            }
            bw = max(bw, Double(n * 4) / Date().timeIntervalSince(t0))
        }
        results["read_gbps"] = bw / 1e9
        results["weight_mb_per_token"] = Double(llama.weightBytesPerToken) / 1e6
        results["bandwidth_bound_tps"] = bw / Double(llama.weightBytesPerToken)

        if json {
            let data = try JSONSerialization.data(withJSONObject: results, options: [.sortedKeys])
            print(String(decoding: data, as: UTF8.self))
        } else {
            for (k, v) in results.sorted(by: { $0.key < $1.key }) { print(String(format: "%-22@ %10.1f", k as NSString, v)) }
        }
    }
}
