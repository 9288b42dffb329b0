import Foundation
import Synchronization
import AlignersKernels

/// Llama-architecture decoder (SmolLM2, Llama 2/3, …) over GGUF weights read in place: the
/// architecture's math only (which tensor is which, the order of operations); the products,
/// attention, norms and rotary embedding are the engine's (`Engine/`).
///
/// Per block: RMSNorm → Q/K/V projections → RoPE → grouped-query attention over the KV cache →
/// output projection + residual → RMSNorm → SwiGLU feed-forward + residual; then a final RMSNorm
/// and the output projection (the token embedding when the file has no `output.weight`).
public final class LlamaModel: CausalLM, @unchecked Sendable {
    public let config: DecoderConfig
    public let gguf: GGUFFile
    public let pool: ComputePool
    /// Which kernel each product takes (the context's plan; tests change it to reach every path).
    public var plan: KernelPlan

    struct Block {
        let attnNorm: [Float]
        let ffnNorm: [Float]
        let wq, wk, wv, wo, gate, up, down: Linear
    }

    let blocks: [Block]
    let tokenEmbedding: QuantTensor
    let output: Linear
    let outputNorm: [Float]
    let rotary: Rotary
    let attention: CausalAttention
    /// One forward at a time: the scratch arena and int16 activations are shared between calls.
    private let busy = Mutex(())
    private let scratch = Scratch()
    private let int16 = Int16Activations()

    public convenience init(path: String, context: ComputeContext) throws {
        try self.init(gguf: GGUFFile(path: path), context: context)
    }

    public init(gguf: GGUFFile, context: ComputeContext) throws {
        self.gguf = gguf
        pool = context.pool
        plan = context.plan
        var c = try DecoderConfig(gguf: gguf)
        func vector(_ name: String, _ n: Int) throws -> [Float] {
            let t = try gguf.tensor(name)
            guard t.rows * t.cols == n else { throw GGUFError.shapeMismatch(path: gguf.url.path, tensor: name, expected: [n], found: [t.cols, t.rows]) }
            var out = [Float](repeating: 0, count: n)
            out.withUnsafeMutableBufferPointer { QuantKernels.dequantizeRow(QuantTensor(type: t.type, rows: 1, cols: n, data: t.data, owner: t.owner), 0, into: $0.baseAddress!) }
            return out
        }
        func matrix(_ name: String, rows: Int, cols: Int) throws -> Linear {
            let t = try gguf.tensor(name)
            guard t.rows == rows, t.cols == cols else {
                throw GGUFError.shapeMismatch(path: gguf.url.path, tensor: name, expected: [cols, rows], found: [t.cols, t.rows])
            }
            guard cols % 32 == 0 || t.type == .f32 || t.type == .f16 else {
                throw DecoderError.shape("tensor \(name): \(cols) columns is not a multiple of the block size 32")
            }
            return Linear(t)
        }
        var bs: [Block] = []
        for i in 0..<c.layers {
            let p = "blk.\(i)."
            bs.append(Block(
                attnNorm: try vector(p + "attn_norm.weight", c.embedding),
                ffnNorm: try vector(p + "ffn_norm.weight", c.embedding),
                wq: try matrix(p + "attn_q.weight", rows: c.qDim, cols: c.embedding),
                wk: try matrix(p + "attn_k.weight", rows: c.kvDim, cols: c.embedding),
                wv: try matrix(p + "attn_v.weight", rows: c.kvDim, cols: c.embedding),
                wo: try matrix(p + "attn_output.weight", rows: c.embedding, cols: c.qDim),
                gate: try matrix(p + "ffn_gate.weight", rows: c.feedForward, cols: c.embedding),
                up: try matrix(p + "ffn_up.weight", rows: c.feedForward, cols: c.embedding),
                down: try matrix(p + "ffn_down.weight", rows: c.embedding, cols: c.feedForward)))
        }
        blocks = bs
        tokenEmbedding = try gguf.tensor("token_embd.weight")
        guard tokenEmbedding.cols == c.embedding else {
            throw GGUFError.shapeMismatch(path: gguf.url.path, tensor: "token_embd.weight", expected: [c.embedding, c.vocabulary],
                                          found: [tokenEmbedding.cols, tokenEmbedding.rows])
        }
        c.vocabulary = tokenEmbedding.rows
        config = c
        if gguf.tensorInfo("output.weight") != nil {
            output = try matrix("output.weight", rows: tokenEmbedding.rows, cols: c.embedding)
        } else {
            output = Linear(tokenEmbedding)
        }
        outputNorm = try vector("output_norm.weight", c.embedding)
        rotary = Rotary(headDim: c.headDim, base: c.ropeBase)
        attention = CausalAttention(heads: c.heads, kvHeads: c.kvHeads, headDim: c.headDim, threads: context.pool.threads)
    }

    /// Bytes of weights one decode step reads (all matrices + the embedding row).
    public var weightBytesPerToken: Int {
        blocks.reduce(0) { $0 + [$1.wq, $1.wk, $1.wv, $1.wo, $1.gate, $1.up, $1.down].reduce(0) { $0 + $1.q.byteCount } } + output.q.byteCount
    }

    /// Makes the weight copies the batched path uses (interleaved or F32) now rather than on first use.
    public func prepareBatchedWeights() {
        let products = LinearProducts(pool: pool, plan: plan, activations: int16)
        for l in blocks.flatMap({ [$0.wq, $0.wk, $0.wv, $0.wo, $0.gate, $0.up, $0.down] }) + [output] { products.prepare(l) }
    }

    // MARK: forward

    public func forward(_ segments: [DecoderSegment], logits: UnsafeMutablePointer<Float>) throws {
        try busy.withLock { _ in try forwardAlone(segments, logits: logits) }
    }

    private func forwardAlone(_ segments: [DecoderSegment], logits: UnsafeMutablePointer<Float>) throws {
        let c = config
        let batch = try DecoderBatch(segments, config: c)
        if batch.rows == 0 { return }
        let T = batch.rows, d = c.embedding, qd = c.qDim, kvd = c.kvDim, ff = c.feedForward

        // Activations live in a scratch arena kept between calls.
        let slices = scratch.slices([T * d, T * max(d, qd), T * qd, T * kvd, T * kvd, T * qd, T * ff, T * ff])
        let x = slices[0], h = slices[1], q = slices[2], k = slices[3], v = slices[4], att = slices[5], g = slices[6], u = slices[7]
        let products = LinearProducts(pool: pool, plan: plan, activations: int16)
        func addLoRA(_ layer: Int, _ target: LoRATarget, x: UnsafeMutablePointer<Float>, into out: UnsafeMutablePointer<Float>) {
            batch.addLoRA(layer, target, x: x, into: out, pool: pool)
        }

        batch.embed(tokenEmbedding, into: x, pool: pool)

        let eps = c.rmsEpsilon
        for (li, b) in blocks.enumerated() {
            Norms.rms(x, weight: b.attnNorm, eps: eps, rows: T, into: h)
            products.project(h, rows: T, [(b.wq, q), (b.wk, k), (b.wv, v)])
            addLoRA(li, .q, x: h, into: q); addLoRA(li, .k, x: h, into: k); addLoRA(li, .v, x: h, into: v)
            batch.positions.withUnsafeBufferPointer { pos in
                rotary.apply(q, heads: c.heads, rows: T, positions: pos.baseAddress!)
                rotary.apply(k, heads: c.kvHeads, rows: T, positions: pos.baseAddress!)
            }
            attention.store(layer: li, batch, k: k, v: v)
            attention(layer: li, batch, q: q, out: att, pool: pool, blasThreshold: plan.blasAttentionThreshold)
            products.project(att, rows: T, [(b.wo, x)], accumulate: true)
            addLoRA(li, .o, x: att, into: x)
            Norms.rms(x, weight: b.ffnNorm, eps: eps, rows: T, into: h)
            if batch.adapted.isEmpty {
                products.project(h, rows: T, [(b.gate, g), (b.up, u)], swiglu: true)
            } else {
                // The adapters' deltas go in before the activation, so SwiGLU is not fused here.
                products.project(h, rows: T, [(b.gate, g), (b.up, u)])
                addLoRA(li, .gate, x: h, into: g); addLoRA(li, .up, x: h, into: u)
                pool.parallelFor(T) { rs in VectorMath.swiglu(g + rs.lowerBound * ff, u + rs.lowerBound * ff, count: rs.count * ff) }
            }
            products.project(g, rows: T, [(b.down, x)], accumulate: true)
            addLoRA(li, .down, x: g, into: x)
        }

        // Final norm and logits for the segments that want them.
        let R = batch.logitRows.count
        if R > 0 {
            for (j, row) in batch.logitRows.enumerated() { (h + j * d).update(from: x + row * d, count: d) }
            Norms.rms(h, weight: outputNorm, eps: eps, rows: R, into: h)
            products.project(h, rows: R, [(output, logits)])
        }
        batch.advanceCaches()
    }
}
