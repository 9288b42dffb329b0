import Foundation

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

    /// LayerNorm of each row of `dim` floats (contiguous rows), in place: (x - μ)/√(σ² + eps)·γ + β.
    public static func layerNorm(_ x: UnsafeMutablePointer<Float>, rows: Int, dim: Int,
                                 gamma: UnsafePointer<Float>, beta: UnsafePointer<Float>, eps: Float) {
        // The sums 16 lanes at a time: written as scalar loops they stay serial (float addition may
        // not be reordered), a dependent add per element.
        let wide = dim & ~15
        for r in 0..<rows {
            let row = x + r &* dim, raw = UnsafeRawPointer(row)
            var acc = SIMD16<Float>()
            for c in stride(from: 0, to: wide, by: 16) { acc += raw.loadUnaligned(fromByteOffset: c &* 4, as: SIMD16<Float>.self) }
            var s = QuantKernels.hsum(acc)
            for c in wide..<dim { s += row[c] }
            let mean = s / Float(dim)
            let mv = SIMD16<Float>(repeating: mean)
            acc = SIMD16<Float>()
            for c in stride(from: 0, to: wide, by: 16) {
                let d = raw.loadUnaligned(fromByteOffset: c &* 4, as: SIMD16<Float>.self) - mv
                acc += d * d
            }
            var v = QuantKernels.hsum(acc)
            for c in wide..<dim { let d = row[c] - mean; v += d * d }
            let inv = 1 / (v / Float(dim) + eps).squareRoot()
            for c in 0..<dim { row[c] = (row[c] - mean) * inv * gamma[c] + beta[c] }
        }
    }
}
