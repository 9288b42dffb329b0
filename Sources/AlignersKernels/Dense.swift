import Foundation
import CBLAS

/// Dense float kernels for encoder models: row-wise LayerNorm, erf GELU, softmax, all in place,
/// vectorised with SIMD16 (the module builds with -Ounchecked); exp and softmax are `VectorMath`'s.
public enum Dense {
    public typealias V = SIMD16<Float>

    /// erf(x), Abramowitz & Stegun 7.1.26 (absolute error ≤ 1.5e-7).
    @inline(__always)
    public static func erf(_ x: V) -> V {
        let ax = x.replacing(with: -x, where: x .< 0)
        let t = 1.0 / (1.0 + 0.3275911 * ax)
        var p = V(repeating: 1.061405429)
        p = p * t - 1.453152027
        p = p * t + 1.421413741
        p = p * t - 0.284496736
        p = p * t + 0.254829592
        p = p * t
        let y = 1.0 - p * VectorMath.exp(-ax * ax)
        return y.replacing(with: -y, where: x .< 0)
    }

    /// x ← x · Φ(x) = 0.5 · x · (1 + erf(x / √2)), in place over `count` floats.
    public static func geluErf(_ x: UnsafeMutablePointer<Float>, count: Int) {
        let raw = UnsafeMutableRawPointer(x)
        var i = 0
        while i &+ 16 <= count {
            let v = raw.loadUnaligned(fromByteOffset: i &* 4, as: V.self)
            let g = 0.5 * v * (1.0 + erf(v * 0.7071067811865476))
            raw.storeBytes(of: g, toByteOffset: i &* 4, as: V.self)
            i &+= 16
        }
        if i < count {
            var v = V()
            for k in 0..<(count &- i) { v[k] = x[i &+ k] }
            let g = 0.5 * v * (1.0 + erf(v * 0.7071067811865476))
            for k in 0..<(count &- i) { x[i &+ k] = g[k] }
        }
    }

    /// Scalar reference GELU (libm erf), for tests.
    public static func geluErfReference(_ x: Float) -> Float {
        Float(0.5 * Double(x) * (1 + Foundation.erf(Double(x) / 2.0.squareRoot())))
    }

    /// Softmax of each of `rows` rows of `cols` floats (row stride `ld`), in place.
    public static func softmaxRows(_ x: UnsafeMutablePointer<Float>, rows: Int, cols: Int, ld: Int) {
        for r in 0..<rows { VectorMath.softmax(x + r &* ld, cols) }
    }

    /// LayerNorm of each row of `dim` floats (contiguous rows), in place: (x - μ)/√(σ² + eps)·γ + β.
    public static func layerNorm(_ x: UnsafeMutablePointer<Float>, rows: Int, dim: Int,
                                 gamma: UnsafePointer<Float>, beta: UnsafePointer<Float>, eps: Float) {
        for r in 0..<rows {
            let row = x + r &* dim
            var s: Float = 0
            for c in 0..<dim { s += row[c] }
            let mean = s / Float(dim)
            var v: Float = 0
            for c in 0..<dim { let d = row[c] - mean; v += d * d }
            let inv = 1 / (v / Float(dim) + eps).squareRoot()
            for c in 0..<dim { row[c] = (row[c] - mean) * inv * gamma[c] + beta[c] }
        }
    }

    /// Runs `body(start, end)` over `0..<count` split into `parts` contiguous chunks on parallel threads.
    public static func parallelFor(_ count: Int, parts: Int = ProcessInfo.processInfo.activeProcessorCount,
                                   _ body: (Int, Int) -> Void) {
        let p = Swift.max(1, Swift.min(parts, count))
        if p == 1 { body(0, count); return }
        withoutActuallyEscaping(body) { escaping in
            let box = UncheckedSendableBox(escaping)
            DispatchQueue.concurrentPerform(iterations: p) { i in
                box.value(count * i / p, count * (i + 1) / p)
            }
        }
    }
}

/// Carries a non-Sendable value into concurrent code whose synchronisation the caller guarantees.
public struct UncheckedSendableBox<T>: @unchecked Sendable {
    public let value: T
    public init(_ value: T) { self.value = value }
}

extension BLAS {
    /// C[m×n] = alpha · op(A) · op(B) + beta · C with both transposes selectable (row-major).
    @inlinable
    public static func gemm(transposeA: Bool, transposeB: Bool, m: Int, n: Int, k: Int,
                            a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
                            c: UnsafeMutablePointer<Float>, ldc: Int, alpha: Float = 1, beta: Float = 0) {
        cblas_sgemm(CblasRowMajor, transposeA ? CblasTrans : CblasNoTrans, transposeB ? CblasTrans : CblasNoTrans,
                    Int32(m), Int32(n), Int32(k), alpha, a, Int32(lda), b, Int32(ldb), beta, c, Int32(ldc))
    }
}

extension BLAS {
    /// `gemm` split over the pool's threads, each calling single-threaded OpenBLAS on its slice: over
    /// C's columns when there are enough of them, else over its rows (the split needs no copy for
    /// either transpose). OpenBLAS runs single-threaded once a pool exists.
    public static func gemm(transposeA: Bool, transposeB: Bool, m: Int, n: Int, k: Int,
                            a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
                            c: UnsafeMutablePointer<Float>, ldc: Int, alpha: Float = 1, beta: Float = 0, pool: ComputePool) {
        if m == 0 || n == 0 { return }
        let work = m * n * max(k, 1)
        if pool.threads == 1 || work < 1 << 16 {
            gemm(transposeA: transposeA, transposeB: transposeB, m: m, n: n, k: k, a: a, lda: lda, b: b, ldb: ldb,
                 c: c, ldc: ldc, alpha: alpha, beta: beta)
            return
        }
        if n >= 64 * pool.threads || n >= m {
            pool.parallelFor(n, granule: n >= 64 * pool.threads ? 16 : 1) { cols in
                let bs = transposeB ? b + cols.lowerBound * ldb : b + cols.lowerBound
                gemm(transposeA: transposeA, transposeB: transposeB, m: m, n: cols.count, k: k, a: a, lda: lda, b: bs, ldb: ldb,
                     c: c + cols.lowerBound, ldc: ldc, alpha: alpha, beta: beta)
            }
        } else {
            pool.parallelFor(m, granule: 4) { rows in
                let as_ = transposeA ? a + rows.lowerBound : a + rows.lowerBound * lda
                gemm(transposeA: transposeA, transposeB: transposeB, m: rows.count, n: n, k: k, a: as_, lda: lda, b: b, ldb: ldb,
                     c: c + rows.lowerBound * ldc, ldc: ldc, alpha: alpha, beta: beta)
            }
        }
    }
}
