import AlignersCore
import Foundation
import Testing
import AlignersKernels
import AlignersEngine
import AlignersSquadModels
@testable import AlignersTraining

/// Each backward op against central finite differences of L = Σ G ⊙ f(x) for a fixed random G.
/// Float32 throughout: steps of 1e-2 and a tolerance of 1e-2 relative to the gradient's scale.
struct BackpropTests {
    static func random(_ n: Int, _ rng: inout SplitMix64, scale: Float = 1) -> [Float] {
        (0..<n).map { _ in (rng.uniform() * 2 - 1) * scale }
    }

    /// Compares `analytic` with the central differences of `loss` at `x`, over every coordinate.
    static func check(_ x: [Float], analytic: [Float], step: Float = 1e-2, _ loss: ([Float]) -> Double,
                      sourceLocation: SourceLocation = #_sourceLocation) {
        let scale = max(analytic.map { abs($0) }.max() ?? 0, 1e-3)
        var worst: Float = 0
        for i in x.indices {
            var xp = x, xm = x
            xp[i] += step; xm[i] -= step
            let numeric = Float((loss(xp) - loss(xm)) / Double(2 * step))
            worst = max(worst, abs(numeric - analytic[i]) / scale)
        }
        #expect(worst < 1e-2, "worst relative gradient error \(worst)", sourceLocation: sourceLocation)
    }

    static func dot(_ a: [Float], _ b: [Float]) -> Double { zip(a, b).reduce(0) { $0 + Double($1.0) * Double($1.1) } }

    @Test func rmsNorm() {
        var rng = SplitMix64(seed: 1)
        let rows = 3, d = 8
        let x = Self.random(rows * d, &rng), w = Self.random(d, &rng), g = Self.random(rows * d, &rng)
        func forward(_ x: [Float]) -> [Float] {
            var h = [Float](repeating: 0, count: rows * d), r = [Float](repeating: 0, count: rows)
            Backprop.rmsNorm(x, w, rows: rows, dim: d, eps: 1e-5, h: &h, r: &r)
            return h
        }
        var h = [Float](repeating: 0, count: rows * d), r = [Float](repeating: 0, count: rows)
        Backprop.rmsNorm(x, w, rows: rows, dim: d, eps: 1e-5, h: &h, r: &r)
        var dx = [Float](repeating: 0.5, count: rows * d)   // backward adds: start from a non-zero value
        Backprop.rmsNormBackward(g, x, w, r, rows: rows, dim: d, dx: &dx)
        Self.check(x, analytic: dx.map { $0 - 0.5 }) { Self.dot(forward($0), g) }
    }

    @Test func ropeBackwardIsTheInverseRotation() {
        var rng = SplitMix64(seed: 2)
        let rows = 3, heads = 2, hd = 4, half = hd / 2, maxPos = 8
        let cs = (0..<maxPos * half).map { Float(cos(Double($0) * 0.7)) }, sn = (0..<maxPos * half).map { Float(sin(Double($0) * 0.7)) }
        let pos = [0, 3, 7]
        let x = Self.random(rows * heads * hd, &rng), g = Self.random(rows * heads * hd, &rng)
        func forward(_ x: [Float]) -> [Float] {
            var y = x
            Backprop.rope(&y, rows: rows, heads: heads, headDim: hd, positions: pos, cos: cs, sin: sn)
            return y
        }
        var back = g
        Backprop.rope(&back, rows: rows, heads: heads, headDim: hd, positions: pos, cos: cs, sin: sn, inverse: true)
        Self.check(x, analytic: back) { Self.dot(forward($0), g) }
        // And inverse ∘ forward = identity.
        var y = forward(x)
        Backprop.rope(&y, rows: rows, heads: heads, headDim: hd, positions: pos, cos: cs, sin: sn, inverse: true)
        for i in x.indices { #expect(abs(y[i] - x[i]) < 1e-5) }
    }

    @Test func swiglu() {
        var rng = SplitMix64(seed: 3)
        let n = 37   // not a multiple of the 16-lane vectors
        let gate = Self.random(n, &rng, scale: 3), up = Self.random(n, &rng, scale: 2), g = Self.random(n, &rng)
        func forward(_ gate: [Float], _ up: [Float]) -> [Float] {
            var a = [Float](repeating: 0, count: n)
            Backprop.swiglu(gate, up, count: n, into: &a)
            return a
        }
        var dg = [Float](repeating: 0, count: n), du = [Float](repeating: 0, count: n)
        Backprop.swigluBackward(g, gate, up, count: n, dg: &dg, du: &du)
        Self.check(gate, analytic: dg) { Self.dot(forward($0, up), g) }
        Self.check(up, analytic: du) { Self.dot(forward(gate, $0), g) }
    }

    @Test func layerNorm() {
        var rng = SplitMix64(seed: 7)
        let rows = 3, d = 8
        let x = Self.random(rows * d, &rng, scale: 2), gamma = Self.random(d, &rng), beta = Self.random(d, &rng)
        let g = Self.random(rows * d, &rng)
        var mean = [Float](repeating: 0, count: rows), r = mean
        func forward(_ x: [Float]) -> [Float] {
            var h = [Float](repeating: 0, count: rows * d)
            Backprop.layerNorm(x, gamma, beta, rows: rows, dim: d, eps: 1e-5, h: &h, mean: &mean, r: &r)
            return h
        }
        // Against the kernel the encoder serves with.
        var served = x
        Dense.layerNorm(&served, rows: rows, dim: d, gamma: gamma, beta: beta, eps: 1e-5)
        for (a, b) in zip(forward(x), served) { #expect(abs(a - b) < 1e-5) }
        _ = forward(x)
        var dx = [Float](repeating: 0.5, count: rows * d)
        Backprop.layerNormBackward(g, x, gamma, mean: mean, r: r, rows: rows, dim: d, dx: &dx)
        Self.check(x, analytic: dx.map { $0 - 0.5 }) { Self.dot(forward($0), g) }
    }

    @Test func gelu() {
        var rng = SplitMix64(seed: 8)
        let n = 37
        let x = Self.random(n, &rng, scale: 3), g = Self.random(n, &rng)
        var dx = [Float](repeating: 0, count: n)
        Backprop.geluBackward(g, x, count: n, dx: &dx)
        Self.check(x, analytic: dx) { x in
            var a = x
            Dense.geluErf(&a, count: n)
            return Self.dot(a, g)
        }
    }

    /// 1 and 5 rows fit one block; 70 and 130 span two and three (blocks of 64). Causal (the
    /// decoder's) and bidirectional (the encoder's).
    @Test(arguments: [1, 5, 70, 130], [true, false])
    func attention(n: Int, causal: Bool) {
        var rng = SplitMix64(seed: 4)
        // Two KV heads, two query heads each: check the slice of KV head 1 (its q columns 8..<16).
        let hd = 4, group = 2, kvHeads = 2, qStride = kvHeads * group * hd, kvStride = kvHeads * hd
        let s = Backprop.AttentionSlice(n: n, headDim: hd, group: group, kvHead: 1, qStride: qStride, kvStride: kvStride, causal: causal)
        let q = Self.random(n * qStride, &rng), k = Self.random(n * kvStride, &rng), v = Self.random(n * kvStride, &rng)
        let g = Self.random(n * qStride, &rng)
        var p = [Float](repeating: 0, count: n * n), dp = p
        func forward(_ q: [Float], _ k: [Float], _ v: [Float]) -> [Float] {
            var out = [Float](repeating: 0, count: n * qStride), scratch = [Float](repeating: 0, count: n * n)
            Backprop.attention(s, q: q, k: k, v: v, out: &out, p: &scratch)
            return out
        }
        // The forward against softmax(q·k/√hd) over the keys each row sees.
        let out = forward(q, k, v)
        for i in 0..<n {
            for h in 0..<group {
                let qc = (group + h) * hd, kc = hd
                let seen = causal ? i + 1 : n
                let z = (0..<seen).map { j in (0..<hd).reduce(0.0) { $0 + Double(q[i * qStride + qc + $1]) * Double(k[j * kvStride + kc + $1]) } / 2 }
                let mx = z.max()!, w = z.map { exp($0 - mx) }, sum = w.reduce(0, +)
                for c in 0..<hd {
                    let want = (0..<seen).reduce(0.0) { $0 + w[$1] / sum * Double(v[$1 * kvStride + kc + c]) }
                    #expect(abs(Double(out[i * qStride + qc + c]) - want) < 1e-5)
                }
            }
        }
        // Only the slice's columns of G matter (the rest of `out` is not written).
        let gs = (0..<n * qStride).map { (($0 % qStride) / (group * hd)) == 1 ? g[$0] : 0 }
        var dq = [Float](repeating: 0, count: n * qStride), dk = [Float](repeating: 0, count: n * kvStride), dv = dk
        Backprop.attentionBackward(s, q: q, k: k, v: v, dOut: gs, dq: &dq, dk: &dk, dv: &dv, p: &p, dp: &dp)
        Self.check(q, analytic: dq) { Self.dot(forward($0, k, v), gs) }
        Self.check(k, analytic: dk) { Self.dot(forward(q, $0, v), gs) }
        Self.check(v, analytic: dv) { Self.dot(forward(q, k, $0), gs) }
    }

    @Test func crossEntropy() {
        var rng = SplitMix64(seed: 5)
        let m = 3, d = 4, V = 37
        let h = Self.random(m * d, &rng), e = Self.random(V * d, &rng, scale: 2)
        let targets = [0, 17, 36]
        let pool = ComputeContext(threads: 2).pool
        func loss(_ h: [Float]) -> Double {
            var z = [Float](repeating: 0, count: m * V)
            return Backprop.crossEntropy(h, rows: m, dim: d, output: e, vocabulary: V, targets: targets, lossScale: 1, dh: nil,
                                         logits: &z, pool: pool)
        }
        // The loss itself, against a direct computation.
        var direct = 0.0
        for i in 0..<m {
            let z = (0..<V).map { j in (0..<d).reduce(0.0) { $0 + Double(h[i * d + $1]) * Double(e[j * d + $1]) } }
            let mx = z.max()!
            direct += mx + log(z.reduce(0) { $0 + exp($1 - mx) }) - z[targets[i]]
        }
        #expect(abs(loss(h) - direct) < 1e-4 * direct)
        var dh = [Float](repeating: 0, count: m * d), z = [Float](repeating: 0, count: m * V)
        _ = Backprop.crossEntropy(h, rows: m, dim: d, output: e, vocabulary: V, targets: targets, lossScale: 1, dh: &dh, logits: &z, pool: pool)
        Self.check(h, analytic: dh, loss)
    }

    @Test func parallelGemmMatchesSingleCall() {
        var rng = SplitMix64(seed: 6)
        let pool = ComputeContext(threads: 2).pool
        for (ta, tb, m, n, k) in [(false, true, 300, 40, 50), (true, false, 7, 500, 60), (false, false, 130, 9, 200), (true, true, 90, 90, 33)] {
            let a = Self.random(m * k, &rng), b = Self.random(k * n, &rng), c0 = Self.random(m * n, &rng)
            var one = c0, split = c0
            BLAS.gemm(transposeA: ta, transposeB: tb, m: m, n: n, k: k, a: a, lda: ta ? m : k, b: b, ldb: tb ? k : n, c: &one, ldc: n,
                      alpha: 0.5, beta: 1)
            BLAS.gemm(transposeA: ta, transposeB: tb, m: m, n: n, k: k, a: a, lda: ta ? m : k, b: b, ldb: tb ? k : n, c: &split, ldc: n,
                      alpha: 0.5, beta: 1, pool: pool)
            for i in one.indices { #expect(abs(one[i] - split[i]) < 1e-4) }
        }
    }

    /// The backward's mask is the forward's; the kept share is 1 − p; the split over threads and the
    /// row length do not change which elements are dropped.
    @Test func dropoutMasksAgree() {
        let rows = 37, cols = 53, n = rows * cols
        let drop = DropoutMasks(p: 0.25, seed: 9)
        let ones = [Float](repeating: 1, count: n)
        var forward = [Float](repeating: 0, count: n), backward = [Float](repeating: 0, count: n)
        var single = [Float](repeating: 0, count: n)
        _ = drop.apply(ones, rows: rows, cols: cols, stream: 3, into: &forward, pool: ComputeContext(threads: 2).pool)
        drop.accumulate(ones, rows: rows, cols: cols, stream: 3, into: &backward, pool: ComputeContext(threads: 2).pool)
        _ = drop.apply(ones, rows: n, cols: 1, stream: 3, into: &single, pool: ComputeContext(threads: 1).pool)
        #expect(forward == backward)
        #expect(forward == single)
        let kept = forward.filter { $0 != 0 }.count
        #expect(abs(Double(kept) / Double(n) - 0.75) < 0.03)
        #expect(forward.allSatisfy { $0 == 0 || abs($0 - 1 / 0.75) < 1e-6 })
        var other = [Float](repeating: 0, count: n)
        _ = drop.apply(ones, rows: rows, cols: cols, stream: 4, into: &other, pool: ComputeContext(threads: 2).pool)
        #expect(other != forward)
    }
}
