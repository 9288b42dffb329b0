import Foundation
import AlignersKernels
import AlignersEngine
import AlignersSquadModels

/// One training example for the inspectors: an encoded (conversation, answer) pair and, per
/// criterion, a label (1 = meets it, 0 = violates it) and a weight (0 = no label for that criterion).
public struct EncodedVerdicts: Sendable {
    public var encoding: BertEncoding
    public var labels: [Float]
    public var weights: [Float]
    public init(encoding: BertEncoding, labels: [Float], weights: [Float]) {
        self.encoding = encoding; self.labels = labels; self.weights = weights
    }
}

/// The BERT encoder's forward and backward with LoRA adapters on its projections and a logistic
/// head per criterion on the mean-pooled last layer: the weighted binary cross-entropy of a batch
/// and the gradients of the adapters and heads (the encoder stays frozen). Sequences are packed as
/// rows of one matrix; attention stays per sequence. Activations are kept (≈ 25 KB per token and
/// layer for MiniLM-L6); P = softmax(QKᵀ) is recomputed in the backward.
public final class BERTLoRA: @unchecked Sendable {
    public let base: BERTEncoder
    public let pool: ComputePool
    public var config: BERTConfig { base.config }

    public init(base: BERTEncoder, pool: ComputePool) {
        self.base = base
        self.pool = pool
    }

    public struct Result: Sendable {
        /// Σ over examples and criteria of weight · cross-entropy.
        public var loss: Double
        /// Head outputs before the sigmoid, [example][criterion].
        public var logits: [[Float]]
    }

    /// The batch's loss and logits; with `gradients`, also `gradients += lossScale · ∂loss/∂θ`.
    public func run(_ batch: [EncodedVerdicts], parameters p: EncoderInspectorParameters,
                    gradients: UnsafeMutablePointer<Float>?, lossScale: Float = 1) throws -> Result {
        let c = config, h = c.hiddenSize, L = c.numHiddenLayers, C = p.criteria.count
        for e in batch {
            guard e.encoding.ids.count == e.encoding.typeIds.count, e.encoding.ids.count <= c.maxPositionEmbeddings,
                  e.labels.count == C, e.weights.count == C else {
                throw TrainingError.data("an inspector example does not fit the encoder or the \(C) criteria")
            }
            for id in e.encoding.ids where id < 0 || Int(id) >= c.vocabSize { throw TrainingError.data("token id \(id) outside the vocabulary") }
        }
        var starts: [Int] = [0]
        for e in batch { starts.append(starts.last! + e.encoding.ids.count) }
        let n = starts.last!
        if n == 0 { return Result(loss: 0, logits: batch.map { _ in [Float](repeating: 0, count: C) }) }
        let tape = tape(rows: n, slots: p.slots.count, rank: p.config.rank)

        // Embeddings (frozen, below every adapter).
        let x0 = tape.x(0)
        pool.parallelFor(batch.count) { seqs in
            for s in seqs {
                let e = batch[s].encoding
                for t in 0..<e.ids.count {
                    let row = x0 + (starts[s] + t) * h
                    for j in 0..<h {
                        row[j] = base.wordEmb[Int(e.ids[t]) * h + j] + base.posEmb[t * h + j] + base.typeEmb[Int(e.typeIds[t]) * h + j]
                    }
                }
            }
        }
        base.embLNg.withUnsafeBufferPointer { g in
            base.embLNb.withUnsafeBufferPointer { b in
                pool.parallelFor(n, granule: 16) { rs in
                    Dense.layerNorm(x0 + rs.lowerBound * h, rows: rs.count, dim: h, gamma: g.baseAddress!, beta: b.baseAddress!, eps: c.layerNormEps)
                }
            }
        }
        for l in 0..<L { forwardLayer(l, batch, starts, n, p, tape) }

        // Heads on the mean of each sequence's last-layer rows.
        let out = tape.x(L)
        var pooled = [Float](repeating: 0, count: batch.count * h)
        for s in batch.indices {
            let len = Float(starts[s + 1] - starts[s])
            for t in starts[s]..<starts[s + 1] { for j in 0..<h { pooled[s * h + j] += out[t * h + j] } }
            for j in 0..<h { pooled[s * h + j] /= len }
        }
        var loss = 0.0
        var logits = [[Float]](repeating: [], count: batch.count)
        var dz = [Float](repeating: 0, count: batch.count * C)
        for s in batch.indices {
            logits[s] = (0..<C).map { k in
                var z = p.values[p.headBiases + k]
                for j in 0..<h { z += p.values[p.headWeights + k * h + j] * pooled[s * h + j] }
                return z
            }
            for k in 0..<C where batch[s].weights[k] > 0 {
                let z = logits[s][k], y = batch[s].labels[k], w = batch[s].weights[k]
                loss += Double(w) * (Double(max(z, 0) - z * y) + log1p(exp(-Double(abs(z)))))
                dz[s * C + k] = lossScale * w * (1 / (1 + exp(-z)) - y)
            }
        }
        guard let grads = gradients else { return Result(loss: loss, logits: logits) }

        // Heads' gradients, and the gradient of the last layer's rows (the mean spreads it evenly).
        let dX = tape.dX
        for s in batch.indices {
            var dp = [Float](repeating: 0, count: h)
            for k in 0..<C where dz[s * C + k] != 0 {
                let g = dz[s * C + k]
                grads[p.headBiases + k] += g
                for j in 0..<h {
                    grads[p.headWeights + k * h + j] += g * pooled[s * h + j]
                    dp[j] += g * p.values[p.headWeights + k * h + j]
                }
            }
            let len = Float(starts[s + 1] - starts[s])
            for t in starts[s]..<starts[s + 1] { for j in 0..<h { dX[t * h + j] = dp[j] / len } }
        }
        for l in (0..<L).reversed() { backwardLayer(l, batch, starts, n, p, tape, grads) }
        return Result(loss: loss, logits: logits)
    }

    // MARK: one block

    private func forwardLayer(_ l: Int, _ batch: [EncodedVerdicts], _ starts: [Int], _ n: Int, _ p: EncoderInspectorParameters, _ tape: Tape) {
        let c = config, h = c.hiddenSize, f = c.intermediateSize, W = base.layers[l], eps = c.layerNormEps
        let x = tape.x(l), qkv = tape.qkv(l), ctx = tape.ctx(l), pre1 = tape.pre1(l), x1 = tape.x1(l)
        let u = tape.u(l), a = tape.a(l), pre2 = tape.pre2(l), x2 = tape.x(l + 1)
        // q|k|v = x·Wqkvᵀ + b (+ adapters)
        fill(qkv, rows: n, bias: W.bqkv, residual: nil)
        gemmNT(x, W.wqkv, n, 3 * h, h, qkv)
        lora(p, l, .query, x: x, n, out: qkv, ld: 3 * h, tape)
        lora(p, l, .key, x: x, n, out: qkv + h, ld: 3 * h, tape)
        lora(p, l, .value, x: x, n, out: qkv + 2 * h, ld: 3 * h, tape)
        attentionItems(batch, starts) { s, r0, scratch, _ in
            let row = qkv + r0 * 3 * h
            Backprop.attention(s, q: row, k: row + h, v: row + 2 * h, out: ctx + r0 * h, p: scratch)
        }
        // x1 = LN(ctx·Woᵀ + bo + x)
        fill(pre1, rows: n, bias: W.bo, residual: x)
        gemmNT(ctx, W.wo, n, h, h, pre1)
        lora(p, l, .attentionOutput, x: ctx, n, out: pre1, ld: h, tape)
        layerNorm(pre1, W.ln1g, W.ln1b, n, eps, into: x1, mean: tape.m1(l), r: tape.r1(l))
        // a = gelu(x1·W1ᵀ + b1)
        fill(u, rows: n, bias: W.b1, residual: nil)
        gemmNT(x1, W.w1, n, f, h, u)
        lora(p, l, .intermediate, x: x1, n, out: u, ld: f, tape)
        pool.parallelFor(n, granule: 8) { rs in
            (a + rs.lowerBound * f).update(from: u + rs.lowerBound * f, count: rs.count * f)
            Dense.geluErf(a + rs.lowerBound * f, count: rs.count * f)
        }
        // x2 = LN(a·W2ᵀ + b2 + x1)
        fill(pre2, rows: n, bias: W.b2, residual: x1)
        gemmNT(a, W.w2, n, h, f, pre2)
        lora(p, l, .output, x: a, n, out: pre2, ld: h, tape)
        layerNorm(pre2, W.ln2g, W.ln2b, n, eps, into: x2, mean: tape.m2(l), r: tape.r2(l))
    }

    /// From tape.dX = ∂/∂(block output): the adapters' gradients, and tape.dX = ∂/∂(block input).
    private func backwardLayer(_ l: Int, _ batch: [EncodedVerdicts], _ starts: [Int], _ n: Int, _ p: EncoderInspectorParameters,
                               _ tape: Tape, _ grads: UnsafeMutablePointer<Float>) {
        let c = config, h = c.hiddenSize, f = c.intermediateSize, W = base.layers[l]
        let dX = tape.dX, dPre = tape.dPre, dMid = tape.dMid, da = tape.dA, dqkv = tape.dQKV
        // Second half: dPre = ∂/∂pre2, dMid = ∂/∂x1.
        dPre.initialize(repeating: 0, count: n * h)
        layerNormBackward(dX, tape.pre2(l), W.ln2g, n, mean: tape.m2(l), r: tape.r2(l), into: dPre)
        dMid.update(from: dPre, count: n * h)
        gemmNN(dPre, W.w2, n, f, h, da, beta: 0)
        loraBackward(p, l, .output, dy: dPre, ld: h, x: tape.a(l), n, dx: da, tape, grads)
        pool.parallelFor(n, granule: 8) { rs in
            let o = rs.lowerBound * f
            Backprop.geluBackward(da + o, tape.u(l) + o, count: rs.count * f, dx: da + o)
        }
        gemmNN(da, W.w1, n, h, f, dMid, beta: 1)
        loraBackward(p, l, .intermediate, dy: da, ld: f, x: tape.x1(l), n, dx: dMid, tape, grads)
        // First half: dPre = ∂/∂pre1, dX = ∂/∂x (residual + through q|k|v), via dMid = ∂/∂ctx.
        dPre.initialize(repeating: 0, count: n * h)
        layerNormBackward(dMid, tape.pre1(l), W.ln1g, n, mean: tape.m1(l), r: tape.r1(l), into: dPre)
        gemmNN(dPre, W.wo, n, h, h, dMid, beta: 0)
        loraBackward(p, l, .attentionOutput, dy: dPre, ld: h, x: tape.ctx(l), n, dx: dMid, tape, grads)
        let qkv = tape.qkv(l)
        dqkv.initialize(repeating: 0, count: n * 3 * h)
        attentionItems(batch, starts) { s, r0, scratch, dscratch in
            let row = qkv + r0 * 3 * h, drow = dqkv + r0 * 3 * h
            Backprop.attentionBackward(s, q: row, k: row + h, v: row + 2 * h, dOut: dMid + r0 * h, dq: drow, dk: drow + h, dv: drow + 2 * h,
                                       p: scratch, dp: dscratch)
        }
        dX.update(from: dPre, count: n * h)
        if l > 0 { gemmNN(dqkv, W.wqkv, n, h, 3 * h, dX, beta: 1) }   // the embeddings below are frozen
        let x = tape.x(l)
        loraBackward(p, l, .query, dy: dqkv, ld: 3 * h, x: x, n, dx: dX, tape, grads)
        loraBackward(p, l, .key, dy: dqkv + h, ld: 3 * h, x: x, n, dx: dX, tape, grads)
        loraBackward(p, l, .value, dy: dqkv + 2 * h, ld: 3 * h, x: x, n, dx: dX, tape, grads)
    }

    private var tapeCache: Tape?

    /// A tape for at least `rows` rows, kept between calls (fresh pages cost; not thread-safe: one
    /// `run` at a time per instance).
    private func tape(rows: Int, slots: Int, rank: Int) -> Tape {
        if let t = tapeCache, t.n >= rows, t.slots == slots, t.rank == rank { return t }
        let old = tapeCache?.n ?? 0
        tapeCache = nil   // let go of the old one before the new one is allocated
        let t = Tape(rows: max(rows, old), config: config, slots: slots, rank: rank)
        tapeCache = t
        return t
    }

    // MARK: pieces

    /// rows of c ← bias (+ residual's rows).
    private func fill(_ c: UnsafeMutablePointer<Float>, rows: Int, bias: [Float], residual: UnsafePointer<Float>?) {
        let d = bias.count
        bias.withUnsafeBufferPointer { b in
            pool.parallelFor(rows, granule: 16) { rs in
                for r in rs {
                    let row = c + r * d
                    if let residual { for k in 0..<d { row[k] = residual[r * d + k] + b[k] } } else { row.update(from: b.baseAddress!, count: d) }
                }
            }
        }
    }

    /// y[m×n] += x[m×k] · W[n×k]ᵀ
    private func gemmNT(_ x: UnsafePointer<Float>, _ w: [Float], _ m: Int, _ n: Int, _ k: Int, _ y: UnsafeMutablePointer<Float>) {
        w.withUnsafeBufferPointer { wb in
            BLAS.gemm(transposeA: false, transposeB: true, m: m, n: n, k: k, a: x, lda: k, b: wb.baseAddress!, ldb: k, c: y, ldc: n, beta: 1, pool: pool)
        }
    }

    /// dx[m×n] = dy[m×k] · W[k×n] (+ dx when beta is 1): the input gradient of y = x·Wᵀ.
    private func gemmNN(_ dy: UnsafePointer<Float>, _ w: [Float], _ m: Int, _ n: Int, _ k: Int, _ dx: UnsafeMutablePointer<Float>, beta: Float) {
        w.withUnsafeBufferPointer { wb in
            BLAS.gemm(transposeA: false, transposeB: false, m: m, n: n, k: k, a: dy, lda: k, b: wb.baseAddress!, ldb: n, c: dx, ldc: n,
                      beta: beta, pool: pool)
        }
    }

    private func layerNorm(_ x: UnsafePointer<Float>, _ g: [Float], _ b: [Float], _ n: Int, _ eps: Float, into h: UnsafeMutablePointer<Float>,
                           mean: UnsafeMutablePointer<Float>, r: UnsafeMutablePointer<Float>) {
        let d = g.count
        g.withUnsafeBufferPointer { gb in
            b.withUnsafeBufferPointer { bb in
                pool.parallelFor(n, granule: 16) { rs in
                    let o = rs.lowerBound
                    Backprop.layerNorm(x + o * d, gb.baseAddress!, bb.baseAddress!, rows: rs.count, dim: d, eps: eps, h: h + o * d,
                                       mean: mean + o, r: r + o)
                }
            }
        }
    }

    private func layerNormBackward(_ dh: UnsafePointer<Float>, _ x: UnsafePointer<Float>, _ g: [Float], _ n: Int, mean: UnsafePointer<Float>,
                                   r: UnsafePointer<Float>, into dx: UnsafeMutablePointer<Float>) {
        let d = g.count
        g.withUnsafeBufferPointer { gb in
            pool.parallelFor(n, granule: 16) { rs in
                let o = rs.lowerBound
                Backprop.layerNormBackward(dh + o * d, x + o * d, gb.baseAddress!, mean: mean + o, r: r + o, rows: rs.count, dim: d, dx: dx + o * d)
            }
        }
    }

    /// Each (sequence, head) with its slice of q|k|v rows, on the pool.
    private func attentionItems(_ batch: [EncodedVerdicts], _ starts: [Int],
                                _ body: (_ slice: Backprop.AttentionSlice, _ row0: Int, _ p: UnsafeMutablePointer<Float>,
                                         _ dp: UnsafeMutablePointer<Float>) -> Void) {
        let h = config.hiddenSize, heads = config.numAttentionHeads
        Backprop.forEachAttentionItem(lengths: batch.map { $0.encoding.ids.count }, kvHeads: heads, pool: pool) { s, head, p, dp in
            let slice = Backprop.AttentionSlice(n: starts[s + 1] - starts[s], headDim: h / heads, group: 1, kvHead: head,
                                                qStride: 3 * h, kvStride: 3 * h, outStride: h, causal: false)
            body(slice, starts[s], p, dp)
        }
    }

    /// out += scale · x·Aᵀ·Bᵀ for the slot, keeping t = x·Aᵀ on the tape.
    private func lora(_ p: EncoderInspectorParameters, _ layer: Int, _ target: EncoderLoRATarget, x: UnsafePointer<Float>, _ n: Int,
                      out: UnsafeMutablePointer<Float>, ld: Int, _ tape: Tape) {
        guard let i = p.slotIndex(layer: layer, target) else { return }
        let s = p.slots[i], r = p.config.rank, t = tape.t(i)
        p.values.withUnsafeBufferPointer { v in
            BLAS.gemm(transposeA: false, transposeB: true, m: n, n: r, k: s.inputs, a: x, lda: s.inputs, b: v.baseAddress! + s.a, ldb: s.inputs,
                      c: t, ldc: r, pool: pool)
            BLAS.gemm(transposeA: false, transposeB: true, m: n, n: s.outputs, k: r, a: t, lda: r, b: v.baseAddress! + s.b, ldb: r,
                      c: out, ldc: ld, alpha: p.config.scale, beta: 1, pool: pool)
        }
    }

    /// From dy = ∂/∂out (rows of stride `ld`): grads of A and B (added), and dx += ∂/∂x.
    private func loraBackward(_ p: EncoderInspectorParameters, _ layer: Int, _ target: EncoderLoRATarget, dy: UnsafePointer<Float>, ld: Int,
                              x: UnsafePointer<Float>, _ n: Int, dx: UnsafeMutablePointer<Float>, _ tape: Tape, _ grads: UnsafeMutablePointer<Float>) {
        guard let i = p.slotIndex(layer: layer, target) else { return }
        let s = p.slots[i], r = p.config.rank, sc = p.config.scale, t = tape.t(i), dt = tape.dt
        p.values.withUnsafeBufferPointer { v in
            // dB += sc · dyᵀ·t ; dt = sc · dy·B ; dA += dtᵀ·x ; dx += dt·A
            BLAS.gemm(transposeA: true, transposeB: false, m: s.outputs, n: r, k: n, a: dy, lda: ld, b: t, ldb: r,
                      c: grads + s.b, ldc: r, alpha: sc, beta: 1, pool: pool)
            BLAS.gemm(transposeA: false, transposeB: false, m: n, n: r, k: s.outputs, a: dy, lda: ld, b: v.baseAddress! + s.b, ldb: r,
                      c: dt, ldc: r, alpha: sc, pool: pool)
            BLAS.gemm(transposeA: true, transposeB: false, m: r, n: s.inputs, k: n, a: dt, lda: r, b: x, ldb: s.inputs,
                      c: grads + s.a, ldc: s.inputs, beta: 1, pool: pool)
            BLAS.gemm(transposeA: false, transposeB: false, m: n, n: s.inputs, k: r, a: dt, lda: r, b: v.baseAddress! + s.a, ldb: s.inputs,
                      c: dx, ldc: s.inputs, beta: 1, pool: pool)
        }
    }

    /// Activations of one batch, per layer, and the backward's scratch: one allocation. `n` is its
    /// capacity in rows (the row stride of each buffer); a batch may use fewer.
    final class Tape {
        let n, h, f, layers, rank, slots: Int
        private let base: UnsafeMutablePointer<Float>
        private let perLayer: Int
        private let activations: Int
        init(rows n: Int, config c: BERTConfig, slots: Int, rank: Int) {
            self.n = n; h = c.hiddenSize; f = c.intermediateSize; layers = c.numHiddenLayers; self.rank = rank; self.slots = slots
            // x, qkv (3), ctx, pre1, x1, pre2: 8 rows of h; u, a: 2 of f; four per-row statistics.
            perLayer = n * (8 * h + 2 * f) + 4 * n
            activations = perLayer * layers + n * h + slots * n * rank
            let scratch = n * (3 * h + f + 3 * h) + n * rank
            base = .allocate(capacity: activations + scratch)
        }
        deinit { base.deallocate() }
        private func layer(_ l: Int) -> UnsafeMutablePointer<Float> { base + l * perLayer }
        /// Input of layer l (l = layers: the last output).
        func x(_ l: Int) -> UnsafeMutablePointer<Float> { l == layers ? base + layers * perLayer : layer(l) }
        func qkv(_ l: Int) -> UnsafeMutablePointer<Float> { layer(l) + n * h }
        func ctx(_ l: Int) -> UnsafeMutablePointer<Float> { layer(l) + n * 4 * h }
        func pre1(_ l: Int) -> UnsafeMutablePointer<Float> { layer(l) + n * 5 * h }
        func x1(_ l: Int) -> UnsafeMutablePointer<Float> { layer(l) + n * 6 * h }
        func pre2(_ l: Int) -> UnsafeMutablePointer<Float> { layer(l) + n * 7 * h }
        func u(_ l: Int) -> UnsafeMutablePointer<Float> { layer(l) + n * 8 * h }
        func a(_ l: Int) -> UnsafeMutablePointer<Float> { layer(l) + n * 8 * h + n * f }
        func m1(_ l: Int) -> UnsafeMutablePointer<Float> { layer(l) + n * (8 * h + 2 * f) }
        func r1(_ l: Int) -> UnsafeMutablePointer<Float> { m1(l) + n }
        func m2(_ l: Int) -> UnsafeMutablePointer<Float> { m1(l) + 2 * n }
        func r2(_ l: Int) -> UnsafeMutablePointer<Float> { m1(l) + 3 * n }
        func t(_ slot: Int) -> UnsafeMutablePointer<Float> { base + layers * perLayer + n * h + slot * n * rank }
        private var scratch: UnsafeMutablePointer<Float> { base + activations }
        var dX: UnsafeMutablePointer<Float> { scratch }
        var dPre: UnsafeMutablePointer<Float> { scratch + n * h }
        var dMid: UnsafeMutablePointer<Float> { scratch + 2 * n * h }
        var dQKV: UnsafeMutablePointer<Float> { scratch + 3 * n * h }
        var dA: UnsafeMutablePointer<Float> { scratch + 6 * n * h }
        var dt: UnsafeMutablePointer<Float> { scratch + 6 * n * h + n * f }
    }
}
