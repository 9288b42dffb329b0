import Foundation

/// Vectorised exp, softmax and SwiGLU for the decoder and the encoder. The C library's `expf` is
/// one call per element; softmax over long contexts made it a fifth of batched decode time.
public enum VectorMath {
    /// e^x lane by lane, relative error ≤ 2e-7 (Cephes' single-precision polynomial); x is clamped
    /// to [-87, 88], so the result is finite and at least e^-87 (≈ 1.6e-38). Not `@inlinable`:
    /// inlined into a module built without the kernels' `-target-cpu`, its FMAs become libm calls.
    @inline(__always)
    public static func exp(_ v: SIMD16<Float>) -> SIMD16<Float> {
        let x = clamp(v, -87, 88)
        // n = round(x / ln 2) by the 1.5·2²³ trick: the addition rounds, the bits then hold n.
        let t = x * 1.442695040888963 + 12_582_912
        let n = t - 12_582_912
        let r = x - n * 0.693359375 - n * -2.12194440e-4
        var p = SIMD16<Float>(repeating: 1.9875691500e-4)
        p = p * r + 1.3981999507e-3
        p = p * r + 8.3334519073e-3
        p = p * r + 4.1665795894e-2
        p = p * r + 1.6666665459e-1
        p = p * r + 5.0000001201e-1
        p = p * (r * r) + r + 1
        // 2^n from n's bits: (bits(t) - bits(1.5·2²³) + 127) << 23.
        let bits = (unsafeBitCast(t, to: SIMD16<Int32>.self) &- 0x4B40_0000 &+ 127) &<< 23
        return p * unsafeBitCast(bits, to: SIMD16<Float>.self)
    }

    /// Lane-wise maximum, spelled out for the same reason as `clamp`.
    @inline(__always)
    static func max(_ a: SIMD16<Float>, _ b: SIMD16<Float>) -> SIMD16<Float> {
        @inline(__always) func m(_ x: Float, _ y: Float) -> Float { x > y ? x : y }
        return SIMD16(m(a[0], b[0]), m(a[1], b[1]), m(a[2], b[2]), m(a[3], b[3]), m(a[4], b[4]), m(a[5], b[5]),
                      m(a[6], b[6]), m(a[7], b[7]), m(a[8], b[8]), m(a[9], b[9]), m(a[10], b[10]), m(a[11], b[11]),
                      m(a[12], b[12]), m(a[13], b[13]), m(a[14], b[14]), m(a[15], b[15]))
    }

    @inline(__always)
    static func clamp(_ v: SIMD16<Float>, _ lo: Float, _ hi: Float) -> SIMD16<Float> {
        // Spelled out lane by lane: the generic `pointwiseMin/Max` are not inlined.
        @inline(__always) func c(_ x: Float) -> Float { x < lo ? lo : (x > hi ? hi : x) }
        return SIMD16(c(v[0]), c(v[1]), c(v[2]), c(v[3]), c(v[4]), c(v[5]), c(v[6]), c(v[7]),
                      c(v[8]), c(v[9]), c(v[10]), c(v[11]), c(v[12]), c(v[13]), c(v[14]), c(v[15]))
    }

    /// s[0..<n] ← softmax(s[0..<n]); returns log Σ e^s (the log-partition, for cross-entropy).
    @discardableResult
    public static func softmax(_ s: UnsafeMutablePointer<Float>, _ n: Int) -> Float {
        guard n > 0 else { return -.infinity }
        let (m, sum) = expShifted(s, n)
        let inv = 1 / sum
        for i in 0..<n { s[i] *= inv }
        return m + Foundation.log(sum)
    }

    /// s[0..<n] ← e^(s − max s), the softmax before its division; returns the maximum and the sum.
    /// For attention that divides the (shorter) output rows instead of the probabilities.
    public static func expShifted(_ s: UnsafeMutablePointer<Float>, _ n: Int) -> (max: Float, sum: Float) {
        guard n > 0 else { return (-.infinity, 0) }
        let raw = UnsafeMutableRawPointer(s)
        // The maximum 16 lanes at a time: a scalar `max` loop is one dependent compare-and-blend per
        // element (the compiler may not reorder it) and was over half of the encoder's softmax time.
        var lanes = SIMD16<Float>(repeating: -.infinity)
        var i = 0
        while i + 16 <= n {
            lanes = max(lanes, raw.loadUnaligned(fromByteOffset: i * 4, as: SIMD16<Float>.self))
            i += 16
        }
        var m = lanes[0]
        for k in 1..<16 { m = Swift.max(m, lanes[k]) }
        while i < n { m = Swift.max(m, s[i]); i += 1 }
        let mv = SIMD16<Float>(repeating: m)
        var acc = SIMD16<Float>()
        var j = 0
        while j + 16 <= n {
            let e = exp(raw.loadUnaligned(fromByteOffset: j * 4, as: SIMD16<Float>.self) - mv)
            raw.storeBytes(of: e, toByteOffset: j * 4, as: SIMD16<Float>.self)
            acc += e
            j += 16
        }
        var sum = QuantKernels.hsum(acc)
        if j < n {
            var v = SIMD16<Float>(repeating: -.infinity)
            for k in 0..<(n - j) { v[k] = s[j + k] }
            let e = exp(v - mv)
            for k in 0..<(n - j) { s[j + k] = e[k]; sum += e[k] }
        }
        return (m, sum)
    }

    /// out[i] ← 1 / (1 + e^-x[i]).
    public static func sigmoid(_ x: UnsafePointer<Float>, count: Int, into out: UnsafeMutablePointer<Float>) {
        let xr = UnsafeRawPointer(x), or = UnsafeMutableRawPointer(out)
        var i = 0
        while i + 16 <= count {
            let a = xr.loadUnaligned(fromByteOffset: i * 4, as: SIMD16<Float>.self)
            or.storeBytes(of: 1 / (1 + exp(-a)), toByteOffset: i * 4, as: SIMD16<Float>.self)
            i += 16
        }
        if i < count {
            var a = SIMD16<Float>()
            for k in 0..<(count - i) { a[k] = x[i + k] }
            let r = 1 / (1 + exp(-a))
            for k in 0..<(count - i) { out[i + k] = r[k] }
        }
    }

    /// g[i] ← silu(g[i]) · u[i] = g / (1 + e^-g) · u.
    public static func swiglu(_ g: UnsafeMutablePointer<Float>, _ u: UnsafePointer<Float>, count: Int) {
        let gr = UnsafeMutableRawPointer(g), ur = UnsafeRawPointer(u)
        var i = 0
        while i + 16 <= count {
            let a = gr.loadUnaligned(fromByteOffset: i * 4, as: SIMD16<Float>.self)
            let b = ur.loadUnaligned(fromByteOffset: i * 4, as: SIMD16<Float>.self)
            gr.storeBytes(of: a / (1 + exp(-a)) * b, toByteOffset: i * 4, as: SIMD16<Float>.self)
            i += 16
        }
        if i < count {
            var a = SIMD16<Float>(), b = SIMD16<Float>()
            for k in 0..<(count - i) { a[k] = g[i + k]; b[k] = u[i + k] }
            let r = a / (1 + exp(-a)) * b
            for k in 0..<(count - i) { g[i + k] = r[k] }
        }
    }
}
