import AlignersCore
import Foundation
import AlignersKernels
import AlignersEngine
import AlignersSquadModels

/// One training sequence: its tokens, and from which position on they are targets.
public struct TrainingSequence: Sendable, Hashable, Codable {
    public var tokens: [Int]
    /// Tokens at positions ≥ `lossStart` (and ≥ 1) are predicted from the position before and count
    /// in the loss: for `x [INIT] y [ALIGNED] y' [DONE]`, the first token of y'.
    public var lossStart: Int
    public init(tokens: [Int], lossStart: Int) { self.tokens = tokens; self.lossStart = lossStart }
    public var lossTokens: Int { max(0, tokens.count - max(lossStart, 1)) }
}

/// A sequence judged by its last token: label 1 (meets the criterion) or 0, with a loss weight.
public struct VerdictSequence: Sendable, Hashable {
    public var tokens: [Int]
    public var label: Float
    public var weight: Float
    public init(tokens: [Int], label: Float, weight: Float) { self.tokens = tokens; self.label = label; self.weight = weight }
    /// As the blocks see it (no language-model loss positions).
    var sequence: TrainingSequence { TrainingSequence(tokens: tokens, lossStart: tokens.count) }
}

/// The two answer tokens a verdict compares.
public struct VerdictTokens: Sendable, Hashable, Codable {
    public var yes: Int
    public var no: Int
    public init(yes: Int, no: Int) { self.yes = yes; self.no = no }
}

/// The frozen base of a Llama decoder, dequantized once to F32 from the GGUF as shipped, for the
/// training products. Why F32 with BLAS: on 2 Zen 4 cores, sgemm runs the forward and the input-
/// gradient products at 80–90 GFLOP/s per core at training's row counts (hundreds of tokens), while
/// a transposed quantized kernel for dx = dy·W would have to be written anew and the VNNI gemm
/// quantizes activations to int16 (a gradient error the reference check would not accept).
/// Memory: 4 bytes per parameter (540 MB for SmolLM2-135M).
public final class FrozenLlama: @unchecked Sendable {
    public let config: DecoderConfig
    /// Q, K and V stacked as one matrix [qDim + 2·kvDim × embedding], gate and up as one
    /// [2·feedForward × embedding]: one product (one packing of the activations) for each group.
    struct Block {
        let attnNorm, ffnNorm: [Float]
        let wqkv, wo, wgu, down: UnsafeMutablePointer<Float>
    }
    let blocks: [Block]
    let embedding: UnsafeMutablePointer<Float>   // [vocabulary × embedding]
    let output: UnsafeMutablePointer<Float>      // the embedding when tied
    let outputNorm: [Float]
    let ropeCos: [Float], ropeSin: [Float]       // [position × headDim/2]
    private var owned: [UnsafeMutablePointer<Float>] = []

    public convenience init(path: String, pool: ComputePool, maxPositions: Int = 2048) throws {
        try self.init(gguf: GGUFFile(path: path), pool: pool, maxPositions: maxPositions)
    }

    public init(gguf: GGUFFile, pool: ComputePool, maxPositions: Int = 2048) throws {
        let c = try DecoderConfig(gguf: gguf)
        guard c.architecture == "llama" else {
            throw DecoderError.unsupportedArchitecture(c.architecture, supported: ["llama"])
        }
        var owned: [UnsafeMutablePointer<Float>] = []
        func dense(_ name: String, rows: Int, cols: Int) throws -> UnsafeMutablePointer<Float> {
            let t = try gguf.tensor(name)
            guard t.rows == rows, t.cols == cols else {
                throw GGUFError.shapeMismatch(path: gguf.url.path, tensor: name, expected: [cols, rows], found: [t.cols, t.rows])
            }
            let p = QuantKernels.dequantize(t, pool: pool)
            owned.append(p)
            return p
        }
        /// Several tensors' rows, one after another, in one F32 matrix.
        func stacked(_ parts: [(String, Int)], cols: Int) throws -> UnsafeMutablePointer<Float> {
            let p = UnsafeMutablePointer<Float>.allocate(capacity: parts.reduce(0) { $0 + $1.1 } * cols)
            owned.append(p)
            var row = 0
            for (name, rows) in parts {
                let t = try gguf.tensor(name)
                guard t.rows == rows, t.cols == cols else {
                    throw GGUFError.shapeMismatch(path: gguf.url.path, tensor: name, expected: [cols, rows], found: [t.cols, t.rows])
                }
                let base = p + row * cols
                pool.parallelFor(rows, granule: 64) { rs in for r in rs { QuantKernels.dequantizeRow(t, r, into: base + r * cols) } }
                row += rows
            }
            return p
        }
        func vector(_ name: String, _ n: Int) throws -> [Float] {
            let p = try dense(name, rows: 1, cols: n)
            return Array(UnsafeBufferPointer(start: p, count: n))
        }
        var bs: [Block] = []
        for i in 0..<c.layers {
            let p = "blk.\(i)."
            bs.append(Block(attnNorm: try vector(p + "attn_norm.weight", c.embedding), ffnNorm: try vector(p + "ffn_norm.weight", c.embedding),
                            wqkv: try stacked([(p + "attn_q.weight", c.qDim), (p + "attn_k.weight", c.kvDim), (p + "attn_v.weight", c.kvDim)],
                                              cols: c.embedding),
                            wo: try dense(p + "attn_output.weight", rows: c.embedding, cols: c.qDim),
                            wgu: try stacked([(p + "ffn_gate.weight", c.feedForward), (p + "ffn_up.weight", c.feedForward)], cols: c.embedding),
                            down: try dense(p + "ffn_down.weight", rows: c.embedding, cols: c.feedForward)))
        }
        let vocab = try gguf.tensor("token_embd.weight").rows
        var cfg = c
        cfg.vocabulary = vocab
        config = cfg
        embedding = try dense("token_embd.weight", rows: vocab, cols: c.embedding)
        output = gguf.tensorInfo("output.weight") != nil ? try dense("output.weight", rows: vocab, cols: c.embedding) : embedding
        outputNorm = try vector("output_norm.weight", c.embedding)
        blocks = bs
        let half = c.headDim / 2
        var cs = [Float](repeating: 0, count: maxPositions * half), sn = cs
        for p in 0..<maxPositions {
            for i in 0..<half {
                let a = Float(p) * Float(pow(Double(c.ropeBase), -2.0 * Double(i) / Double(c.headDim)))
                cs[p * half + i] = cos(a); sn[p * half + i] = sin(a)
            }
        }
        ropeCos = cs; ropeSin = sn
        self.owned = owned
    }
    deinit { for p in owned { p.deallocate() } }
    public var maxPositions: Int { ropeCos.count / (config.headDim / 2) }
}

/// The Llama decoder's forward and backward with LoRA adapters on its projections: the loss of a
/// batch of sequences and the gradients of the adapters' matrices (the base stays frozen). The
/// sequences are packed as rows of one matrix; attention stays per sequence. Activations are kept
/// (≈ 28 KB per token and layer for SmolLM2-135M, ~0.85 MB per token in all), P = softmax(QKᵀ) is
/// recomputed in the backward; logits exist only for loss rows, 256 rows at a time. One `run` at a
/// time per instance (its tape is reused).
public final class LlamaLoRA: @unchecked Sendable {
    public let base: FrozenLlama
    public let pool: ComputePool
    public var config: DecoderConfig { base.config }
    /// Rows of logits computed at once for the loss (256 × 49,152 floats = 50 MB). Each chunk packs the
    /// 49,152 × 576 output matrix again; 256 rows instead of 64 made a step 1–2% faster (paired runs).
    public var logitChunk = 256

    public init(base: FrozenLlama, pool: ComputePool) {
        self.base = base
        self.pool = pool
    }

    /// Σ cross-entropy over the batch's loss tokens, and `gradients += lossScale · ∂Σ/∂θ`.
    /// With `gradients` nil, the forward only (validation). `dropoutSeed` picks LoRA dropout masks.
    public func run(_ batch: [TrainingSequence], parameters p: LoRAParameters, gradients: UnsafeMutablePointer<Float>?,
                    lossScale: Float = 1, dropoutSeed: UInt64 = 0) throws -> Double {
        guard let pass = try forward(batch, parameters: p, dropoutSeed: dropoutSeed) else { return 0 }
        var lossRows: [Int] = [], targets: [Int] = []
        for (s, start) in zip(batch, pass.starts) {
            for i in max(s.lossStart, 1)..<max(s.tokens.count, max(s.lossStart, 1)) { lossRows.append(start + i - 1); targets.append(s.tokens[i]) }
        }
        let total = try head(pass, rows: lossRows, backward: gradients != nil) { hf, dhf in
            try languageModelLoss(hf, rows: lossRows.count, targets: targets, lossScale: lossScale, dh: dhf)
        }
        if let gradients { backward(pass, parameters: p, gradients: gradients) }
        return total
    }

    /// Verdicts read at each sequence's last token: z = (E[yes] − E[no]) · norm(h_last), the logit of
    /// "yes" against "no" under the (tied) output projection, so a pretrained chat model starts as a
    /// zero-shot judge and LoRA fine-tunes it. Returns Σ wᵢ · BCE(σ(zᵢ), yᵢ) and every zᵢ, and with
    /// `gradients`, `gradients += lossScale · ∂Σ/∂θ`.
    public func runVerdicts(_ batch: [VerdictSequence], answers: VerdictTokens, parameters p: LoRAParameters,
                            gradients: UnsafeMutablePointer<Float>?, lossScale: Float = 1,
                            dropoutSeed: UInt64 = 0) throws -> (loss: Double, logits: [Float]) {
        let V = config.vocabulary
        guard (0..<V).contains(answers.yes), (0..<V).contains(answers.no) else {
            throw TrainingError.data("verdict tokens \(answers.yes), \(answers.no) outside the vocabulary")
        }
        guard let pass = try forward(batch.map(\.sequence), parameters: p, dropoutSeed: dropoutSeed) else { return (0, []) }
        let d = config.embedding
        let rows = zip(batch, pass.starts).map { $1 + $0.tokens.count - 1 }
        // u = E[yes] − E[no]: the two output rows that matter.
        var u = [Float](repeating: 0, count: d)
        for i in 0..<d { u[i] = base.output[answers.yes * d + i] - base.output[answers.no * d + i] }
        var logits = [Float](repeating: 0, count: batch.count)
        let total = try head(pass, rows: rows, backward: gradients != nil) { hf, dhf in
            var sum = 0.0
            for (j, e) in batch.enumerated() {
                var z: Float = 0
                for i in 0..<d { z += hf[j * d + i] * u[i] }
                logits[j] = z
                let y = e.label, w = e.weight
                // BCE with logits, stable: max(z, 0) − z·y + log(1 + e^−|z|).
                sum += Double(w) * (Double(max(z, 0) - z * y) + log1p(exp(-Double(abs(z)))))
                if let dhf {
                    let g = w * (1 / (1 + exp(-z)) - y) * lossScale
                    for i in 0..<d { dhf[j * d + i] += g * u[i] }
                }
            }
            if !sum.isFinite { throw TrainingError.data("the verdict loss is not finite (\(sum))") }
            return sum
        }
        if let gradients { backward(pass, parameters: p, gradients: gradients) }
        return (total, logits)
    }

    /// What the forward leaves for the head and the backward.
    struct Pass {
        var batch: [TrainingSequence]
        var starts: [Int]
        var positions: [Int]
        var rows: Int
        var tape: Tape
        var drop: DropoutMasks
    }

    /// The blocks' forward over the packed batch into the tape (nil for an empty batch).
    func forward(_ batch: [TrainingSequence], parameters p: LoRAParameters, dropoutSeed: UInt64) throws -> Pass? {
        let c = config, d = c.embedding, qd = c.qDim, kvd = c.kvDim, ff = c.feedForward, L = c.layers, V = c.vocabulary
        let W = qd + 2 * kvd   // a row of q|k|v
        for s in batch {
            guard s.tokens.count <= base.maxPositions else {
                throw TrainingError.data("a sequence of \(s.tokens.count) tokens is longer than the \(base.maxPositions) positions training was set up for")
            }
            for t in s.tokens where t < 0 || t >= V { throw DecoderError.tokenOutOfRange(t, vocabulary: V) }
        }
        let N = batch.reduce(0) { $0 + $1.tokens.count }
        if N == 0 { return nil }
        var starts: [Int] = [], positions = [Int](repeating: 0, count: N)
        var at = 0
        for s in batch {
            starts.append(at)
            for i in s.tokens.indices { positions[at + i] = i }
            at += s.tokens.count
        }

        // Tape: what the backward reads, per layer (kept between calls: fresh pages cost).
        let tape = tape(rows: N, rank: p.config.rank, slots: p.slots.count)
        let xs = tape.xs
        positions.withUnsafeBufferPointer { pos in
            pool.parallelFor(N) { rows in
                for i in rows { (xs[0] + i * d).update(from: self.base.embedding + batchToken(batch, starts, i, pos) * d, count: d) }
            }
        }
        let scratchA = tape.ffScratch[0]
        let drop = DropoutMasks(p: p.config.dropout, seed: dropoutSeed)

        positions.withUnsafeBufferPointer { posBuf in
            let pos = posBuf.baseAddress!
            for l in 0..<L {
                let b = base.blocks[l], t = tape.layers[l]
                rmsNorm(xs[l], b.attnNorm, rows: N, h: t.h1, r: t.r1)
                linear(t.h1, N, b.wqkv, out: t.qkv, rows: W, cols: d)
                lora(p, l, .q, x: t.h1, N, out: t.qkv, ld: W, tape: tape, drop: drop)
                lora(p, l, .k, x: t.h1, N, out: t.qkv + qd, ld: W, tape: tape, drop: drop)
                lora(p, l, .v, x: t.h1, N, out: t.qkv + qd + kvd, ld: W, tape: tape, drop: drop)
                rope(t.qkv, N, heads: c.heads, stride: W, pos, inverse: false)
                rope(t.qkv + qd, N, heads: c.kvHeads, stride: W, pos, inverse: false)
                attention(batch, starts, qkv: t.qkv, out: t.att)
                t.x1.update(from: xs[l], count: N * d)
                linear(t.att, N, b.wo, out: t.x1, rows: d, cols: qd, accumulate: true)
                lora(p, l, .o, x: t.att, N, out: t.x1, ld: d, tape: tape, drop: drop)
                rmsNorm(t.x1, b.ffnNorm, rows: N, h: t.h2, r: t.r2)
                linear(t.h2, N, b.wgu, out: t.gu, rows: 2 * ff, cols: d)
                lora(p, l, .gate, x: t.h2, N, out: t.gu, ld: 2 * ff, tape: tape, drop: drop)
                lora(p, l, .up, x: t.h2, N, out: t.gu + ff, ld: 2 * ff, tape: tape, drop: drop)
                swiglu(t.gu, N, into: scratchA)
                xs[l + 1].update(from: t.x1, count: N * d)
                linear(scratchA, N, b.down, out: xs[l + 1], rows: d, cols: ff, accumulate: true)
                lora(p, l, .down, x: scratchA, N, out: xs[l + 1], ld: d, tape: tape, drop: drop)
            }
        }
        return Pass(batch: batch, starts: starts, positions: positions, rows: N, tape: tape, drop: drop)
    }

    /// The final norm of the last layer at `rows`, a loss over them (`loss(h, dh)`, dh nil without a
    /// backward), and its gradient back through the norm into the tape's dx.
    func head(_ pass: Pass, rows lossRows: [Int], backward: Bool,
              loss: (UnsafePointer<Float>, UnsafeMutablePointer<Float>?) throws -> Double) throws -> Double {
        let d = config.embedding, R = lossRows.count
        let xsL = pass.tape.xs[config.layers], dx = pass.tape.dx
        dx.initialize(repeating: 0, count: pass.rows * d)
        guard R > 0 else { return 0 }
        let xf = UnsafeMutablePointer<Float>.allocate(capacity: R * d * 3 + R)
        defer { xf.deallocate() }
        let hf = xf + R * d, dhf = hf + R * d, rf = dhf + R * d
        for (j, row) in lossRows.enumerated() { (xf + j * d).update(from: xsL + row * d, count: d) }
        rmsNorm(xf, base.outputNorm, rows: R, h: hf, r: rf)
        dhf.initialize(repeating: 0, count: R * d)
        let total = try loss(hf, backward ? dhf : nil)
        guard backward else { return total }
        let dxf = UnsafeMutablePointer<Float>.allocate(capacity: R * d)
        defer { dxf.deallocate() }
        dxf.initialize(repeating: 0, count: R * d)
        base.outputNorm.withUnsafeBufferPointer { w in
            Backprop.rmsNormBackward(dhf, xf, w.baseAddress!, rf, rows: R, dim: d, dx: dxf)
        }
        for (j, row) in lossRows.enumerated() {
            let src = dxf + j * d, dst = dx + row * d
            for i in 0..<d { dst[i] += src[i] }
        }
        return total
    }

    /// Cross-entropy of the tied output projection at `rows` normed hidden rows, logits `logitChunk`
    /// rows at a time (never 49k logits for every prompt token).
    func languageModelLoss(_ hf: UnsafePointer<Float>, rows R: Int, targets: [Int], lossScale: Float,
                           dh dhf: UnsafeMutablePointer<Float>?) throws -> Double {
        let d = config.embedding, V = config.vocabulary
        let chunk = max(1, logitChunk)
        let logits = UnsafeMutablePointer<Float>.allocate(capacity: min(chunk, R) * V)
        defer { logits.deallocate() }
        var total = 0.0
        try targets.withUnsafeBufferPointer { tg in
            var j0 = 0
            while j0 < R {
                let m = min(chunk, R - j0)
                total += Backprop.crossEntropy(hf + j0 * d, rows: m, dim: d, output: base.output, vocabulary: V, targets: tg.baseAddress! + j0,
                                               lossScale: lossScale, dh: dhf.map { $0 + j0 * d }, logits: logits, pool: pool)
                j0 += m
            }
            if !total.isFinite { throw TrainingError.data("the loss is not finite (\(total))") }
        }
        return total
    }

    /// Backward through the blocks from the tape's dx, adding the LoRA gradients.
    func backward(_ pass: Pass, parameters p: LoRAParameters, gradients grads: UnsafeMutablePointer<Float>) {
        let c = config, d = c.embedding, qd = c.qDim, kvd = c.kvDim, ff = c.feedForward, L = c.layers
        let W = qd + 2 * kvd
        let tape = pass.tape, batch = pass.batch, starts = pass.starts, N = pass.rows, drop = pass.drop
        let xs = tape.xs, dx = tape.dx, scratchA = tape.ffScratch[0]
        let da = tape.ffScratch[1], dgu = tape.dgu
        let dh = tape.dh, datt = tape.datt, dqkv = tape.dqkv
        pass.positions.withUnsafeBufferPointer { posBuf in
            let pos = posBuf.baseAddress!
            for l in stride(from: L - 1, through: 0, by: -1) {
                let b = base.blocks[l], t = tape.layers[l]
                // Feed-forward: xs[l+1] = x1 + down(swiglu(gate(h2), up(h2))).
                swiglu(t.gu, N, into: scratchA)
                linearBackward(dx, N, b.down, dx: da, rows: d, cols: ff, accumulate: false)
                loraBackward(p, l, .down, dy: dx, ld: d, x: scratchA, N, dx: da, tape: tape, drop: drop, grads: grads)
                pool.parallelFor(N) { rs in
                    for r in rs {
                        Backprop.swigluBackward(da + r * ff, t.gu + r * 2 * ff, t.gu + r * 2 * ff + ff, count: ff,
                                                dg: dgu + r * 2 * ff, du: dgu + r * 2 * ff + ff)
                    }
                }
                linearBackward(dgu, N, b.wgu, dx: dh, rows: 2 * ff, cols: d, accumulate: false)
                loraBackward(p, l, .gate, dy: dgu, ld: 2 * ff, x: t.h2, N, dx: dh, tape: tape, drop: drop, grads: grads)
                loraBackward(p, l, .up, dy: dgu + ff, ld: 2 * ff, x: t.h2, N, dx: dh, tape: tape, drop: drop, grads: grads)
                rmsNormBackward(dh, t.x1, b.ffnNorm, t.r2, rows: N, dx: dx)
                // Attention: x1 = xs[l] + o(attention(rope(q(h1)), rope(k(h1)), v(h1))).
                linearBackward(dx, N, b.wo, dx: datt, rows: d, cols: qd, accumulate: false)
                loraBackward(p, l, .o, dy: dx, ld: d, x: t.att, N, dx: datt, tape: tape, drop: drop, grads: grads)
                attentionBackward(batch, starts, qkv: t.qkv, dOut: datt, dqkv: dqkv)
                rope(dqkv, N, heads: c.heads, stride: W, pos, inverse: true)
                rope(dqkv + qd, N, heads: c.kvHeads, stride: W, pos, inverse: true)
                linearBackward(dqkv, N, b.wqkv, dx: dh, rows: W, cols: d, accumulate: false)
                loraBackward(p, l, .q, dy: dqkv, ld: W, x: t.h1, N, dx: dh, tape: tape, drop: drop, grads: grads)
                loraBackward(p, l, .k, dy: dqkv + qd, ld: W, x: t.h1, N, dx: dh, tape: tape, drop: drop, grads: grads)
                loraBackward(p, l, .v, dy: dqkv + qd + kvd, ld: W, x: t.h1, N, dx: dh, tape: tape, drop: drop, grads: grads)
                rmsNormBackward(dh, xs[l], b.attnNorm, t.r1, rows: N, dx: dx)
            }
        }
    }

    private var tapeCache: Tape?

    /// A tape for at least `rows` rows (not thread-safe: one `run` at a time per instance).
    func tape(rows: Int, rank: Int, slots: Int) -> Tape {
        if let t = tapeCache, t.capacity >= rows, t.rank == rank, t.slots == slots { return t }
        let old = tapeCache?.capacity ?? 0
        tapeCache = nil   // let go of the old one before the new one is allocated
        let t = Tape(N: max(rows, old), c: config, rank: rank, slots: slots)
        tapeCache = t
        return t
    }

    // MARK: pieces

    /// y[N × rows] (+)= x[N × cols] · Wᵀ.
    func linear(_ x: UnsafePointer<Float>, _ n: Int, _ w: UnsafePointer<Float>, out: UnsafeMutablePointer<Float>, rows: Int, cols: Int,
                accumulate: Bool = false) {
        BLAS.gemm(transposeA: false, transposeB: true, m: n, n: rows, k: cols, a: x, lda: cols, b: w, ldb: cols, c: out, ldc: rows,
                  beta: accumulate ? 1 : 0, pool: pool)
    }

    /// dx[N × cols] (+)= dy[N × rows] · W.
    func linearBackward(_ dy: UnsafePointer<Float>, _ n: Int, _ w: UnsafePointer<Float>, dx: UnsafeMutablePointer<Float>, rows: Int, cols: Int,
                        accumulate: Bool) {
        BLAS.gemm(transposeA: false, transposeB: false, m: n, n: cols, k: rows, a: dy, lda: rows, b: w, ldb: cols, c: dx, ldc: cols,
                  beta: accumulate ? 1 : 0, pool: pool)
    }

    func rmsNorm(_ x: UnsafePointer<Float>, _ w: [Float], rows: Int, h: UnsafeMutablePointer<Float>, r: UnsafeMutablePointer<Float>) {
        let d = config.embedding, eps = config.rmsEpsilon
        w.withUnsafeBufferPointer { wp in
            pool.parallelFor(rows) { rs in
                Backprop.rmsNorm(x + rs.lowerBound * d, wp.baseAddress!, rows: rs.count, dim: d, eps: eps, h: h + rs.lowerBound * d,
                                 r: r + rs.lowerBound)
            }
        }
    }

    func rmsNormBackward(_ dh: UnsafePointer<Float>, _ x: UnsafePointer<Float>, _ w: [Float], _ r: UnsafePointer<Float>, rows: Int,
                         dx: UnsafeMutablePointer<Float>) {
        let d = config.embedding
        w.withUnsafeBufferPointer { wp in
            pool.parallelFor(rows) { rs in
                Backprop.rmsNormBackward(dh + rs.lowerBound * d, x + rs.lowerBound * d, wp.baseAddress!, r + rs.lowerBound, rows: rs.count,
                                         dim: d, dx: dx + rs.lowerBound * d)
            }
        }
    }

    /// a = silu(g) ⊙ u for rows of g|u [n × 2·ff].
    func swiglu(_ gu: UnsafePointer<Float>, _ n: Int, into a: UnsafeMutablePointer<Float>) {
        let ff = config.feedForward
        pool.parallelFor(n) { rs in
            for r in rs { Backprop.swiglu(gu + r * 2 * ff, gu + r * 2 * ff + ff, count: ff, into: a + r * ff) }
        }
    }

    func rope(_ x: UnsafeMutablePointer<Float>, _ n: Int, heads: Int, stride width: Int, _ pos: UnsafePointer<Int>, inverse: Bool) {
        let hd = config.headDim
        base.ropeCos.withUnsafeBufferPointer { cs in
            base.ropeSin.withUnsafeBufferPointer { sn in
                pool.parallelFor(n) { rs in
                    Backprop.rope(x + rs.lowerBound * width, rows: rs.count, heads: heads, headDim: hd, stride: width,
                                  positions: pos + rs.lowerBound, cos: cs.baseAddress!, sin: sn.baseAddress!, inverse: inverse)
                }
            }
        }
    }

    /// Each (sequence, KV head) with its slice of q|k|v rows, on the pool.
    private func attentionItems(_ batch: [TrainingSequence], _ starts: [Int],
                                _ body: (_ slice: Backprop.AttentionSlice, _ row0: Int, _ p: UnsafeMutablePointer<Float>,
                                         _ dp: UnsafeMutablePointer<Float>) -> Void) {
        let c = config, w = c.qDim + 2 * c.kvDim
        Backprop.forEachAttentionItem(lengths: batch.map(\.tokens.count), kvHeads: c.kvHeads, pool: pool) { s, kv, p, dp in
            let slice = Backprop.AttentionSlice(n: batch[s].tokens.count, headDim: c.headDim, group: c.heads / c.kvHeads, kvHead: kv,
                                                qStride: w, kvStride: w, outStride: c.qDim)
            body(slice, starts[s], p, dp)
        }
    }

    /// Rows of q|k|v [N × qDim + 2·kvDim] → attention output [N × qDim].
    func attention(_ batch: [TrainingSequence], _ starts: [Int], qkv: UnsafePointer<Float>, out: UnsafeMutablePointer<Float>) {
        let qd = config.qDim, kvd = config.kvDim, w = qd + 2 * kvd
        attentionItems(batch, starts) { s, r0, p, _ in
            let row = qkv + r0 * w
            Backprop.attention(s, q: row, k: row + qd, v: row + qd + kvd, out: out + r0 * qd, p: p)
        }
    }

    /// dq|dk|dv [N × qDim + 2·kvDim] from dOut (dk and dv sum over each group's heads).
    func attentionBackward(_ batch: [TrainingSequence], _ starts: [Int], qkv: UnsafePointer<Float>, dOut: UnsafePointer<Float>,
                           dqkv: UnsafeMutablePointer<Float>) {
        let qd = config.qDim, kvd = config.kvDim, w = qd + 2 * kvd
        let n = batch.reduce(0) { $0 + $1.tokens.count }
        dqkv.initialize(repeating: 0, count: n * w)
        attentionItems(batch, starts) { s, r0, p, dp in
            let row = qkv + r0 * w, drow = dqkv + r0 * w
            Backprop.attentionBackward(s, q: row, k: row + qd, v: row + qd + kvd, dOut: dOut + r0 * qd, dq: drow, dk: drow + qd,
                                       dv: drow + qd + kvd, p: p, dp: dp)
        }
    }

    /// out += scale · dropout(x)·Aᵀ·Bᵀ for the slot, keeping t = dropout(x)·Aᵀ on the tape.
    func lora(_ p: LoRAParameters, _ layer: Int, _ target: LoRATarget, x: UnsafePointer<Float>, _ n: Int, out: UnsafeMutablePointer<Float>,
              ld: Int, tape: Tape, drop: DropoutMasks) {
        guard let i = p.slotIndex(layer: layer, target) else { return }
        let s = p.slots[i], r = p.config.rank
        let t = tape.t(i)
        let xin = drop.active ? drop.apply(x, rows: n, cols: s.inputs, stream: streamID(layer, target), into: tape.dropped, pool: pool) : x
        p.values.withUnsafeBufferPointer { v in
            BLAS.gemm(transposeA: false, transposeB: true, m: n, n: r, k: s.inputs, a: xin, lda: s.inputs, b: v.baseAddress! + s.a, ldb: s.inputs,
                      c: t, ldc: r, pool: pool)
            BLAS.gemm(transposeA: false, transposeB: true, m: n, n: s.outputs, k: r, a: t, lda: r, b: v.baseAddress! + s.b, ldb: r,
                      c: out, ldc: ld, alpha: p.config.scale, beta: 1, pool: pool)
        }
    }

    /// From dy = ∂/∂out (rows of stride `ld`): grads of A and B (added), and dx += ∂/∂x.
    func loraBackward(_ p: LoRAParameters, _ layer: Int, _ target: LoRATarget, dy: UnsafePointer<Float>, ld: Int, x: UnsafePointer<Float>, _ n: Int,
                      dx: UnsafeMutablePointer<Float>, tape: Tape, drop: DropoutMasks, grads: UnsafeMutablePointer<Float>) {
        guard let i = p.slotIndex(layer: layer, target) else { return }
        let s = p.slots[i], r = p.config.rank, sc = p.config.scale
        let t = tape.t(i)
        let dt = tape.dt
        let stream = streamID(layer, target)
        p.values.withUnsafeBufferPointer { v in
            let a = v.baseAddress! + s.a, b = v.baseAddress! + s.b
            // dB += sc · dyᵀ·t ; dt = sc · dy·B
            BLAS.gemm(transposeA: true, transposeB: false, m: s.outputs, n: r, k: n, a: dy, lda: ld, b: t, ldb: r,
                      c: grads + s.b, ldc: r, alpha: sc, beta: 1, pool: pool)
            BLAS.gemm(transposeA: false, transposeB: false, m: n, n: r, k: s.outputs, a: dy, lda: ld, b: b, ldb: r,
                      c: dt, ldc: r, alpha: sc, pool: pool)
            // dA += dtᵀ·dropout(x) ; dx += dropout'(dt·A)
            let xin = drop.active ? drop.apply(x, rows: n, cols: s.inputs, stream: stream, into: tape.dropped, pool: pool) : x
            BLAS.gemm(transposeA: true, transposeB: false, m: r, n: s.inputs, k: n, a: dt, lda: r, b: xin, ldb: s.inputs,
                      c: grads + s.a, ldc: s.inputs, beta: 1, pool: pool)
            if drop.active {
                BLAS.gemm(transposeA: false, transposeB: false, m: n, n: s.inputs, k: r, a: dt, lda: r, b: a, ldb: s.inputs,
                          c: tape.dropped, ldc: s.inputs, pool: pool)
                drop.accumulate(tape.dropped, rows: n, cols: s.inputs, stream: stream, into: dx, pool: pool)
            } else {
                BLAS.gemm(transposeA: false, transposeB: false, m: n, n: s.inputs, k: r, a: dt, lda: r, b: a, ldb: s.inputs,
                          c: dx, ldc: s.inputs, beta: 1, pool: pool)
            }
        }
    }

    func streamID(_ layer: Int, _ target: LoRATarget) -> UInt64 { UInt64(layer * 8 + target.index) }
}

@inline(__always) private func batchToken(_ batch: [TrainingSequence], _ starts: [Int], _ row: Int, _ pos: UnsafeBufferPointer<Int>) -> Int {
    // Row → its sequence: the last start at or before it.
    var lo = 0, hi = starts.count - 1
    while lo < hi {
        let mid = (lo + hi + 1) / 2
        if starts[mid] <= row { lo = mid } else { hi = mid - 1 }
    }
    return batch[lo].tokens[pos[row]]
}

/// LoRA dropout (PEFT's `lora_dropout` on the adapter's input): element i of module `stream` is
/// kept when a 32-bit hash of (seed, stream, i) is at least p·2³², so the backward recomputes the
/// same mask instead of storing it. The hash runs 16 lanes at a time (a scalar 64-bit hash per
/// element cost a quarter of a training step).
struct DropoutMasks {
    let p: Float
    let seed: UInt64
    var active: Bool { p > 0 }

    private func key(_ stream: UInt64) -> UInt32 {
        var g = SplitMix64(seed: seed ^ (stream &* 0x9E37_79B9_7F4A_7C15))
        return UInt32(truncatingIfNeeded: g.next())
    }

    /// Keep flags (all ones or zero per lane) of elements i0 ..< i0+16.
    @inline(__always) static func keep(_ key: UInt32, _ i0: Int, _ threshold: UInt32) -> SIMD16<UInt32> {
        var x = SIMD16<UInt32>(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15) &+ UInt32(truncatingIfNeeded: i0)
        x = (x ^ key) &* 0x9E37_79B1
        x ^= x &>> 15; x = x &* 0x85EB_CA6B
        x ^= x &>> 13; x = x &* 0xC2B2_AE35
        x ^= x &>> 16
        // A SIMD mask's lanes are all ones or zero (its storage is the integer vector).
        return unsafeBitCast(x .>= SIMD16<UInt32>(repeating: threshold), to: SIMD16<UInt32>.self)
    }

    private var threshold: UInt32 { UInt32(min(Double(p) * 4_294_967_296, 4_294_967_295)) }

    /// out = x ⊙ mask / (1 − p); returns out.
    func apply(_ x: UnsafePointer<Float>, rows: Int, cols: Int, stream: UInt64, into out: UnsafeMutablePointer<Float>,
               pool: ComputePool) -> UnsafePointer<Float> {
        let s = 1 / (1 - p), k = key(stream), th = threshold
        pool.parallelFor(rows) { rs in
            Self.masked(rs.lowerBound * cols, rs.upperBound * cols, k, th) { i, m in
                let v: SIMD16<Float> = UnsafeRawPointer(x + i).loadUnaligned(as: SIMD16<Float>.self) * s
                let kept: SIMD16<UInt32> = unsafeBitCast(v, to: SIMD16<UInt32>.self) & m
                UnsafeMutableRawPointer(out + i).storeBytes(of: unsafeBitCast(kept, to: SIMD16<Float>.self), as: SIMD16<Float>.self)
            } tail: { i, keep in out[i] = keep ? x[i] * s : 0 }
        }
        return UnsafePointer(out)
    }

    /// dx += g ⊙ mask / (1 − p).
    func accumulate(_ g: UnsafePointer<Float>, rows: Int, cols: Int, stream: UInt64, into dx: UnsafeMutablePointer<Float>, pool: ComputePool) {
        let s = 1 / (1 - p), k = key(stream), th = threshold
        pool.parallelFor(rows) { rs in
            Self.masked(rs.lowerBound * cols, rs.upperBound * cols, k, th) { i, m in
                let v: SIMD16<Float> = UnsafeRawPointer(g + i).loadUnaligned(as: SIMD16<Float>.self) * s
                let kept: SIMD16<UInt32> = unsafeBitCast(v, to: SIMD16<UInt32>.self) & m
                let d: SIMD16<Float> = UnsafeRawPointer(dx + i).loadUnaligned(as: SIMD16<Float>.self) + unsafeBitCast(kept, to: SIMD16<Float>.self)
                UnsafeMutableRawPointer(dx + i).storeBytes(of: d, as: SIMD16<Float>.self)
            } tail: { i, keep in if keep { dx[i] += g[i] * s } }
        }
    }

    /// Calls `body(i, mask)` for each whole group of 16 from lo (lanes aligned to multiples of 16
    /// of the global index, so any split gives the same masks) and `tail` for the elements around.
    @inline(__always) static func masked(_ lo: Int, _ hi: Int, _ key: UInt32, _ th: UInt32,
                                         body: (Int, SIMD16<UInt32>) -> Void, tail: (Int, Bool) -> Void) {
        var i = lo
        while i < hi && i % 16 != 0 { tail(i, keep(key, i - i % 16, th)[i % 16] != 0); i += 1 }
        while i + 16 <= hi { body(i, keep(key, i, th)); i += 16 }
        while i < hi { tail(i, keep(key, i - i % 16, th)[i % 16] != 0); i += 1 }
    }
}

/// The activations one forward keeps for its backward, and the backward's scratch.
final class Tape {
    struct Layer {
        let h1, qkv, att, x1, h2, gu: UnsafeMutablePointer<Float>   // qkv: q|k|v per row; gu: gate|up per row
        let r1, r2: UnsafeMutablePointer<Float>
    }
    let layers: [Layer]
    let xs: [UnsafeMutablePointer<Float>]   // residual stream entering each layer, and after the last
    let ffScratch: [UnsafeMutablePointer<Float>]
    let dx, dh, datt, dqkv, dgu, dt, dropped: UnsafeMutablePointer<Float>
    private let loraT: UnsafeMutablePointer<Float>
    let capacity: Int, rank: Int, slots: Int
    private var blocks: [UnsafeMutablePointer<Float>] = []

    init(N: Int, c: DecoderConfig, rank: Int, slots: Int) {
        capacity = N; self.rank = rank; self.slots = slots
        let d = c.embedding, qd = c.qDim, kvd = c.kvDim, ff = c.feedForward
        var blocks: [UnsafeMutablePointer<Float>] = []
        func alloc(_ count: Int) -> UnsafeMutablePointer<Float> {
            let p = UnsafeMutablePointer<Float>.allocate(capacity: max(count, 1))
            blocks.append(p)
            return p
        }
        layers = (0..<c.layers).map { _ in
            Layer(h1: alloc(N * d), qkv: alloc(N * (qd + 2 * kvd)), att: alloc(N * qd), x1: alloc(N * d), h2: alloc(N * d),
                  gu: alloc(N * 2 * ff), r1: alloc(N), r2: alloc(N))
        }
        xs = (0...c.layers).map { _ in alloc(N * d) }
        ffScratch = (0..<2).map { _ in alloc(N * ff) }
        dx = alloc(N * d); dh = alloc(N * d); datt = alloc(N * qd); dqkv = alloc(N * (qd + 2 * kvd)); dgu = alloc(N * 2 * ff)
        dt = alloc(N * rank)
        dropped = alloc(N * max(d, qd, ff))
        loraT = alloc(N * rank * slots)
        self.blocks = blocks
    }

    /// t = x·Aᵀ of slot `i` (N × rank).
    func t(_ i: Int) -> UnsafeMutablePointer<Float> { loraT + i * capacity * rank }

    deinit { for b in blocks { b.deallocate() } }
}
