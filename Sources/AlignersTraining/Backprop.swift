import Foundation
import AlignersKernels

/// The decoder's and the encoder's operations with their reverse-mode gradients, on row-major rows. Each backward
/// *adds* its input gradient into the destination (residual streams and shared inputs sum), and
/// each is checked against finite differences in the tests.
public enum Backprop {
    // MARK: RMSNorm  h = x · r · w,  r = (mean(x²) + eps)^-½

    /// Writes h and returns r per row.
    public static func rmsNorm(_ x: UnsafePointer<Float>, _ w: UnsafePointer<Float>, rows: Int, dim d: Int, eps: Float,
                               h: UnsafeMutablePointer<Float>, r: UnsafeMutablePointer<Float>) {
        for i in 0..<rows {
            let xr = x + i * d, hr = h + i * d
            var ss: Float = 0
            for j in 0..<d { ss += xr[j] * xr[j] }
            let s = 1 / (ss / Float(d) + eps).squareRoot()
            r[i] = s
            for j in 0..<d { hr[j] = xr[j] * s * w[j] }
        }
    }

    /// dx += r·(dh⊙w) − (r³/d)·x·Σ(dh⊙w⊙x).
    public static func rmsNormBackward(_ dh: UnsafePointer<Float>, _ x: UnsafePointer<Float>, _ w: UnsafePointer<Float>,
                                       _ r: UnsafePointer<Float>, rows: Int, dim d: Int, dx: UnsafeMutablePointer<Float>) {
        for i in 0..<rows {
            let g = dh + i * d, xr = x + i * d, o = dx + i * d
            var dot: Float = 0
            for j in 0..<d { dot += g[j] * w[j] * xr[j] }
            let s = r[i], c = s * s * s * dot / Float(d)
            for j in 0..<d { o[j] += s * g[j] * w[j] - c * xr[j] }
        }
    }

    // MARK: RoPE on adjacent pairs (the GGUF's layout), rotation by pos·θ_i

    /// Rotates each head's pairs of `rows` rows in place; `inverse` rotates back (the backward).
    /// `cos`/`sin` are [position × headDim/2] tables; `positions[i]` is row i's position.
    /// Rows are `stride` floats apart (default: heads·headDim).
    public static func rope(_ x: UnsafeMutablePointer<Float>, rows: Int, heads: Int, headDim hd: Int, stride: Int? = nil,
                            positions: UnsafePointer<Int>, cos: UnsafePointer<Float>, sin: UnsafePointer<Float>, inverse: Bool = false) {
        let half = hd / 2, width = stride ?? heads * hd
        for i in 0..<rows {
            let c = cos + positions[i] * half, s = sin + positions[i] * half
            let row = x + i * width
            for h in 0..<heads {
                let v = row + h * hd
                for p in 0..<half {
                    let a = v[2 * p], b = v[2 * p + 1], sn = inverse ? -s[p] : s[p]
                    v[2 * p] = a * c[p] - b * sn
                    v[2 * p + 1] = a * sn + b * c[p]
                }
            }
        }
    }

    // MARK: SwiGLU  a = silu(g) ⊙ u

    public static func swiglu(_ g: UnsafePointer<Float>, _ u: UnsafePointer<Float>, count: Int, into a: UnsafeMutablePointer<Float>) {
        a.update(from: g, count: count)
        VectorMath.swiglu(a, u, count: count)
    }

    /// dg and du from da (dg may be da itself).
    public static func swigluBackward(_ da: UnsafePointer<Float>, _ g: UnsafePointer<Float>, _ u: UnsafePointer<Float>,
                                      count: Int, dg: UnsafeMutablePointer<Float>, du: UnsafeMutablePointer<Float>) {
        VectorMath.sigmoid(g, count: count, into: du)
        for i in 0..<count {
            let s = du[i], x = g[i], d = da[i]
            du[i] = d * x * s
            dg[i] = d * u[i] * s * (1 + x * (1 - s))
        }
    }

    // MARK: LayerNorm  h = (x − μ)·r·γ + β,  r = (var(x) + eps)^-½

    /// Writes h, and μ and r per row.
    public static func layerNorm(_ x: UnsafePointer<Float>, _ gamma: UnsafePointer<Float>, _ beta: UnsafePointer<Float>, rows: Int,
                                 dim d: Int, eps: Float, h: UnsafeMutablePointer<Float>, mean: UnsafeMutablePointer<Float>,
                                 r: UnsafeMutablePointer<Float>) {
        for i in 0..<rows {
            let xr = x + i * d, hr = h + i * d
            var sum: Float = 0
            for j in 0..<d { sum += xr[j] }
            let mu = sum / Float(d)
            var ss: Float = 0
            for j in 0..<d { let c = xr[j] - mu; ss += c * c }
            let s = 1 / (ss / Float(d) + eps).squareRoot()
            mean[i] = mu
            r[i] = s
            for j in 0..<d { hr[j] = (xr[j] - mu) * s * gamma[j] + beta[j] }
        }
    }

    /// With x̂ = (x − μ)·r and g = dh⊙γ: dx += r·(g − mean(g) − x̂·mean(g⊙x̂)).
    public static func layerNormBackward(_ dh: UnsafePointer<Float>, _ x: UnsafePointer<Float>, _ gamma: UnsafePointer<Float>,
                                         mean: UnsafePointer<Float>, r: UnsafePointer<Float>, rows: Int, dim d: Int,
                                         dx: UnsafeMutablePointer<Float>) {
        let inv = 1 / Float(d)
        for i in 0..<rows {
            let g = dh + i * d, xr = x + i * d, o = dx + i * d
            let mu = mean[i], s = r[i]
            var sg: Float = 0, sgx: Float = 0
            for j in 0..<d {
                let gj = g[j] * gamma[j]
                sg += gj
                sgx += gj * (xr[j] - mu) * s
            }
            sg *= inv
            sgx *= inv
            for j in 0..<d { o[j] += s * (g[j] * gamma[j] - sg - (xr[j] - mu) * s * sgx) }
        }
    }

    // MARK: GELU (erf)  a = x·Φ(x)

    /// dx = da·(Φ(x) + x·φ(x)), written (dx may be da itself).
    public static func geluBackward(_ da: UnsafePointer<Float>, _ x: UnsafePointer<Float>, count: Int, dx: UnsafeMutablePointer<Float>) {
        let invSqrt2: Float = 0.70710678118654752, invSqrt2Pi: Float = 0.39894228040143268
        for i in 0..<count {
            let v = x[i]
            dx[i] = da[i] * (0.5 * (1 + erf(v * invSqrt2)) + v * invSqrt2Pi * exp(-0.5 * v * v))
        }
    }

    // MARK: attention, one sequence and one KV head with its group of query heads

    /// Shapes of one sequence's attention: `n` rows; q (and dq) rows of `qStride`, k/v (dk/dv) rows
    /// of `kvStride`, out (and dOut) rows of `outStride`; heads `kvHead·group ..< (kvHead+1)·group`
    /// read KV head `kvHead`. `causal`: row i sees keys 0...i (the decoder) rather than all (BERT).
    public struct AttentionSlice {
        public var n: Int
        public var headDim: Int
        public var group: Int
        public var kvHead: Int
        public var qStride: Int
        public var kvStride: Int
        public var outStride: Int
        public var causal: Bool
        public init(n: Int, headDim: Int, group: Int, kvHead: Int, qStride: Int, kvStride: Int, outStride: Int? = nil, causal: Bool = true) {
            self.n = n; self.headDim = headDim; self.group = group; self.kvHead = kvHead; self.qStride = qStride; self.kvStride = kvStride
            self.outStride = outStride ?? qStride
            self.causal = causal
        }
        var scale: Float { 1 / Float(headDim).squareRoot() }
        func qOffset(_ g: Int) -> Int { (kvHead * group + g) * headDim }
        var kvOffset: Int { kvHead * headDim }
        /// Keys that rows [i0, i1) can see: [0, keys(i1)).
        func keys(_ i1: Int) -> Int { causal ? i1 : n }
        /// Keys row i can see.
        func seen(_ i: Int) -> Int { causal ? i + 1 : n }
    }

    /// Rows are taken in blocks of this many: with the causal mask, block [i0, i1) needs only keys and
    /// values [0, i1), so the products skip most of the masked upper triangle (at 256 positions, 62%
    /// of the full work).
    static let attentionBlock = 64

    /// Rows [i0, i1) of P = softmax(scale·Q·Kᵀ) (masked when causal), columns [0, keys(i1)), into `p`
    /// (row stride n).
    static func probabilities(_ s: AttentionSlice, q: UnsafePointer<Float>, k: UnsafePointer<Float>, head g: Int, rows i0: Int, _ i1: Int,
                              p: UnsafeMutablePointer<Float>) {
        let n = s.n, kn = s.keys(i1)
        BLAS.gemm(transposeA: false, transposeB: true, m: i1 - i0, n: kn, k: s.headDim, a: q + i0 * s.qStride + s.qOffset(g), lda: s.qStride,
                  b: k + s.kvOffset, ldb: s.kvStride, c: p + i0 * n, ldc: n, alpha: s.scale)
        for i in i0..<i1 {
            let row = p + i * n, seen = s.seen(i)
            VectorMath.softmax(row, seen)
            for j in seen..<max(seen, kn) { row[j] = 0 }
        }
    }

    /// Runs `body(sequence, kvHead, p, dp)` for every (sequence, KV head) of a packed batch, dealt
    /// round-robin over the pool's threads, longest sequences first; `p` and `dp` are the thread's
    /// scratch of (longest length)² floats each.
    public static func forEachAttentionItem(lengths: [Int], kvHeads: Int, pool: ComputePool,
                                            _ body: (_ sequence: Int, _ kvHead: Int, _ p: UnsafeMutablePointer<Float>,
                                                     _ dp: UnsafeMutablePointer<Float>) -> Void) {
        let order = lengths.indices.sorted { lengths[$0] > lengths[$1] }
        let items = order.flatMap { s in (0..<kvHeads).map { (s, $0) } }
        let longest = lengths.max() ?? 0
        let threads = pool.threads
        pool.run { t in
            let p = UnsafeMutablePointer<Float>.allocate(capacity: 2 * longest * longest)
            defer { p.deallocate() }
            var i = t
            while i < items.count {
                body(items[i].0, items[i].1, p, p + longest * longest)
                i += threads
            }
        }
    }

    /// out = P·V for every head of the group (out rows of `outStride`). `p` is scratch of n² floats.
    public static func attention(_ s: AttentionSlice, q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>,
                                 out: UnsafeMutablePointer<Float>, p: UnsafeMutablePointer<Float>) {
        let n = s.n
        for g in 0..<s.group {
            var i0 = 0
            while i0 < n {
                let i1 = min(n, i0 + attentionBlock)
                probabilities(s, q: q, k: k, head: g, rows: i0, i1, p: p)
                BLAS.gemm(transposeA: false, transposeB: false, m: i1 - i0, n: s.headDim, k: s.keys(i1), a: p + i0 * n, lda: n,
                          b: v + s.kvOffset, ldb: s.kvStride, c: out + i0 * s.outStride + s.qOffset(g), ldc: s.outStride)
                i0 = i1
            }
        }
    }

    /// From dOut: dQ (written), dK and dV (added: the group's heads share them). P is recomputed
    /// (cheaper than keeping n² floats per head and layer). `p`, `dp`: scratch of n² floats each.
    public static func attentionBackward(_ s: AttentionSlice, q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>,
                                         dOut: UnsafePointer<Float>, dq: UnsafeMutablePointer<Float>, dk: UnsafeMutablePointer<Float>,
                                         dv: UnsafeMutablePointer<Float>, p: UnsafeMutablePointer<Float>, dp: UnsafeMutablePointer<Float>) {
        let n = s.n, hd = s.headDim
        for g in 0..<s.group {
            var i0 = 0
            while i0 < n {
                let i1 = min(n, i0 + attentionBlock), m = i1 - i0, kn = s.keys(i1)
                let pb = p + i0 * n, db = dp + i0 * n
                let dO = dOut + i0 * s.outStride + s.qOffset(g)
                probabilities(s, q: q, k: k, head: g, rows: i0, i1, p: p)
                // dV[0..<kn] += Pᵀ·dO ; dP = dO·V[0..<kn]ᵀ
                BLAS.gemm(transposeA: true, transposeB: false, m: kn, n: hd, k: m, a: pb, lda: n, b: dO, ldb: s.outStride,
                          c: dv + s.kvOffset, ldc: s.kvStride, beta: 1)
                BLAS.gemm(transposeA: false, transposeB: true, m: m, n: kn, k: hd, a: dO, lda: s.outStride,
                          b: v + s.kvOffset, ldb: s.kvStride, c: db, ldc: n)
                // dS = P ⊙ (dP − rowsum(dP ⊙ P)), kept in dp (zero where masked, since P is).
                for i in i0..<i1 {
                    let pr = p + i * n, dr = dp + i * n, seen = s.seen(i)
                    var dot: Float = 0
                    for j in 0..<seen { dot += pr[j] * dr[j] }
                    for j in 0..<seen { dr[j] = pr[j] * (dr[j] - dot) }
                    for j in seen..<max(seen, kn) { dr[j] = 0 }
                }
                // dQ = scale·dS·K[0..<kn] ; dK[0..<kn] += scale·dSᵀ·Q
                BLAS.gemm(transposeA: false, transposeB: false, m: m, n: hd, k: kn, a: db, lda: n, b: k + s.kvOffset, ldb: s.kvStride,
                          c: dq + i0 * s.qStride + s.qOffset(g), ldc: s.qStride, alpha: s.scale)
                BLAS.gemm(transposeA: true, transposeB: false, m: kn, n: hd, k: m, a: db, lda: n, b: q + i0 * s.qStride + s.qOffset(g),
                          ldb: s.qStride, c: dk + s.kvOffset, ldc: s.kvStride, alpha: s.scale, beta: 1)
                i0 = i1
            }
        }
    }

    // MARK: cross-entropy over the vocabulary, only at loss rows

    /// For rows h [m × d] and the tied output matrix E [V × d]: the summed cross-entropy of
    /// `targets`, and dh += lossScale · (softmax(h·Eᵀ) − onehot)·E (when dh is given). `logits` is
    /// scratch of m·V floats.
    public static func crossEntropy(_ h: UnsafePointer<Float>, rows m: Int, dim d: Int, output e: UnsafePointer<Float>, vocabulary V: Int,
                                    targets: UnsafePointer<Int>, lossScale: Float, dh: UnsafeMutablePointer<Float>?,
                                    logits z: UnsafeMutablePointer<Float>, pool: ComputePool) -> Double {
        BLAS.gemm(transposeA: false, transposeB: true, m: m, n: V, k: d, a: h, lda: d, b: e, ldb: d, c: z, ldc: V, pool: pool)
        var losses = [Double](repeating: 0, count: m)
        losses.withUnsafeMutableBufferPointer { lp in
            pool.parallelFor(m) { rows in
                for i in rows {
                    let row = z + i * V
                    let target = row[targets[i]]
                    lp[i] = Double(VectorMath.softmax(row, V)) - Double(target)
                    for j in 0..<V { row[j] *= lossScale }
                    row[targets[i]] -= lossScale
                }
            }
        }
        if let dh { BLAS.gemm(transposeA: false, transposeB: false, m: m, n: d, k: V, a: z, lda: V, b: e, ldb: d, c: dh, ldc: d, beta: 1, pool: pool) }
        return losses.reduce(0, +)
    }
}
