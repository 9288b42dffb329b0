import Foundation
import Testing
import AlignersKernels

@Suite struct VectorMathTests {
    @Test func expMatchesTheCLibrary() {
        var worst: Double = 0
        var x: Float = -87
        while x <= 88 {
            let v = SIMD16<Float>((0..<16).map { x + Float($0) * 0.0137 })
            let e = VectorMath.exp(v)
            for k in 0..<16 where v[k] <= 88 {
                let ref = Foundation.exp(Double(v[k]))
                worst = max(worst, abs(Double(e[k]) - ref) / ref)
            }
            x += 0.219
        }
        #expect(worst < 5e-7, "worst relative error \(worst)")
        // Beyond the range: clamped, finite, never NaN.
        let far = VectorMath.exp(SIMD16<Float>(repeating: -1e30))
        #expect(far[0] >= 0 && far[0] < 1e-37)
        #expect(VectorMath.exp(SIMD16<Float>(repeating: 1e30))[3].isFinite)
        #expect(VectorMath.exp(SIMD16<Float>(repeating: -.infinity))[0] < 1e-37)
    }

    @Test(arguments: [1, 7, 16, 33, 800])
    func softmaxMatchesDoublePrecision(n: Int) {
        var s: [Float] = (0..<n).map { Float(sin(Double($0) * 1.3) * 12) }
        let m = s.map(Double.init).max()!
        let z = s.map { Foundation.exp(Double($0) - m) }.reduce(0, +)
        let ref = s.map { Foundation.exp(Double($0) - m) / z }
        s.withUnsafeMutableBufferPointer { VectorMath.softmax($0.baseAddress!, n) }
        for j in 0..<n { #expect(abs(Double(s[j]) - ref[j]) <= 1e-6 * max(ref[j], 1e-3), "\(j): \(s[j]) vs \(ref[j])") }
    }

    /// The maximum is found 16 lanes at a time and then in the tail: put it at every position once.
    @Test func softmaxFindsTheMaximumAnywhere() {
        let n = 37
        for at in 0..<n {
            var s: [Float] = (0..<n).map { Float($0 % 5) - 2 }
            s[at] = 90   // e^(90 - others) overflows unless the maximum is subtracted first
            let logZ = s.withUnsafeMutableBufferPointer { VectorMath.softmax($0.baseAddress!, n) }
            #expect(abs(s[at] - 1) < 1e-6 && logZ.isFinite && abs(logZ - 90) < 1e-4, "maximum at \(at)")
        }
    }

    @Test(arguments: [7, 16, 35, 384])
    func layerNormMatchesDoublePrecision(dim: Int) {
        let rows = 3
        var x: [Float] = (0..<(rows * dim)).map { Float(sin(Double($0) * 0.7) * 3 + 1.5) }
        let gamma: [Float] = (0..<dim).map { 1 + Float($0 % 3) * 0.25 }, beta: [Float] = (0..<dim).map { Float($0 % 4) * 0.1 }
        let ref: [Double] = (0..<rows).flatMap { r -> [Double] in
            let row = x[(r * dim)..<((r + 1) * dim)].map(Double.init)
            let mean = row.reduce(0, +) / Double(dim)
            let variance = row.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Double(dim)
            return row.enumerated().map { ($1 - mean) / (variance + 1e-5).squareRoot() * Double(gamma[$0]) + Double(beta[$0]) }
        }
        Dense.layerNorm(&x, rows: rows, dim: dim, gamma: gamma, beta: beta, eps: 1e-5)
        for i in x.indices { #expect(abs(Double(x[i]) - ref[i]) < 1e-5 * max(1, abs(ref[i])), "\(i): \(x[i]) vs \(ref[i])") }
    }

    @Test(arguments: [5, 16, 37])
    func swigluMatchesScalar(count: Int) {
        var g: [Float] = (0..<count).map { Float($0) * 0.9 - 15 }
        let u: [Float] = (0..<count).map { Float(cos(Double($0))) }
        let ref = zip(g, u).map { a, b in Double(a) / (1 + Foundation.exp(-Double(a))) * Double(b) }
        g.withUnsafeMutableBufferPointer { gp in u.withUnsafeBufferPointer { VectorMath.swiglu(gp.baseAddress!, $0.baseAddress!, count: count) } }
        for i in 0..<count { #expect(abs(Double(g[i]) - ref[i]) <= 1e-6 * max(1, abs(ref[i])), "\(i): \(g[i]) vs \(ref[i])") }
    }
}
