import AlignersKernels

/// The normalisations of the architectures, row by row.
enum Norms {
    /// RMSNorm: out = x / √(mean(x²) + eps) ⊙ w for each of `rows` rows of `w.count` floats
    /// (`out` may be `x`).
    static func rms(_ x: UnsafeMutablePointer<Float>, weight w: [Float], eps: Float, rows: Int, into out: UnsafeMutablePointer<Float>) {
        let d = w.count
        w.withUnsafeBufferPointer { wp in
            for r in 0..<rows {
                let xr = x + r * d, o = out + r * d
                let ms = QuantKernels.dotF32(xr, xr, d) / Float(d)
                let scale = 1 / (ms + eps).squareRoot()
                for i in 0..<d { o[i] = xr[i] * scale * wp[i] }
            }
        }
    }

    /// LayerNorm in place: (x − μ)/√(σ² + eps)·γ + β for each of `rows` rows of `dim` floats,
    /// the rows spread over the pool.
    static func layer(_ x: UnsafeMutablePointer<Float>, rows: Int, dim: Int, gamma: [Float], beta: [Float], eps: Float,
                      pool: ComputePool) {
        gamma.withUnsafeBufferPointer { g in
            beta.withUnsafeBufferPointer { b in
                pool.parallelFor(rows, granule: max(1, 65536 / dim)) { rs in
                    Dense.layerNorm(x + rs.lowerBound * dim, rows: rs.count, dim: dim, gamma: g.baseAddress!, beta: b.baseAddress!, eps: eps)
                }
            }
        }
    }
}
