import Foundation
import Testing
import AlignersKernels

@Suite struct QuantTests {
    /// Random blocks of a type, with a deterministic generator.
    static func randomMatrix(_ type: GGMLType, rows: Int, cols: Int, seed: UInt64) -> [UInt8] {
        var s = seed
        func next() -> UInt64 { s = s &* 6364136223846793005 &+ 1442695040888963407; return s >> 33 }
        var out: [UInt8] = []
        for _ in 0..<(rows * cols / 32) {
            switch type {
            case .q4_1:
                out += withUnsafeBytes(of: floatToHalf(Float(next() % 1000) / 20000 + 0.001)) { Array($0) }
                out += withUnsafeBytes(of: floatToHalf(-Float(next() % 1000) / 5000)) { Array($0) }
                for _ in 0..<16 { out.append(UInt8(next() & 0xFF)) }
            case .q8_0:
                out += withUnsafeBytes(of: floatToHalf(Float(next() % 1000) / 50000 + 0.001)) { Array($0) }
                for _ in 0..<32 { out.append(UInt8(next() & 0xFF)) }
            case .f16:
                for _ in 0..<32 { out += withUnsafeBytes(of: floatToHalf(Float(Int(next() % 2000) - 1000) / 500)) { Array($0) } }
            default:
                for _ in 0..<32 { out += withUnsafeBytes(of: Float(Int(next() % 2000) - 1000) / 500) { Array($0) } }
            }
        }
        return out
    }

    /// Reference dequantization written from the layout description, element by element.
    static func reference(_ type: GGMLType, _ bytes: [UInt8], rows: Int, cols: Int) -> [Float] {
        var w = [Float](repeating: 0, count: rows * cols)
        let bb = type.blockBytes
        func half(_ o: Int) -> Float { halfToFloat(UInt16(bytes[o]) | UInt16(bytes[o + 1]) << 8) }
        for blk in 0..<(rows * cols / 32) {
            let o = blk * (type == .f16 ? 64 : type == .f32 ? 128 : bb)
            for j in 0..<32 {
                let i = blk * 32 + j
                switch type {
                case .q4_1:
                    let q = j < 16 ? bytes[o + 4 + j] & 15 : bytes[o + 4 + j - 16] >> 4
                    w[i] = half(o) * Float(q) + half(o + 2)
                case .q8_0: w[i] = half(o) * Float(Int8(bitPattern: bytes[o + 2 + j]))
                case .f16: w[i] = half(o + 2 * j)
                default: w[i] = bytes.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: o + 4 * j, as: Float.self) }
                }
            }
        }
        return w
    }

    @Test(arguments: [GGMLType.q4_1, .q8_0, .f16, .f32])
    func matvecMatchesReference(type: GGMLType) throws {
        let rows = 37, cols = 96
        let bytes = Self.randomMatrix(type, rows: rows, cols: cols, seed: 42)
        let ref = Self.reference(type, bytes, rows: rows, cols: cols)
        let x: [Float] = (0..<cols).map { Float(sin(Double($0) * 0.37)) }
        var y = [Float](repeating: .nan, count: rows)
        var deq = [Float](repeating: 0, count: cols)
        bytes.withUnsafeBytes { raw in
            let t = QuantTensor(type: type, rows: rows, cols: cols, data: raw.baseAddress!, owner: nil)
            x.withUnsafeBufferPointer { xp in
                y.withUnsafeMutableBufferPointer { QuantKernels.matvec(t, x: xp.baseAddress!, y: $0.baseAddress!, pool: TestCompute.pool) }
            }
            for r in [0, 17, 36] {
                deq.withUnsafeMutableBufferPointer { QuantKernels.dequantizeRow(t, r, into: $0.baseAddress!) }
                for c in 0..<cols { #expect(deq[c] == ref[r * cols + c]) }
            }
        }
        // The quantized kernels round the activation to int16 per 32-block (error ≤ max|x|/65534
        // per element): allow 1e-4 of Σ|w|·max|x| on top of float rounding.
        let xmax = Double(x.map { Swift.abs($0) }.max()!)
        for r in 0..<rows {
            var expected: Double = 0, wsum: Double = 0
            for c in 0..<cols { expected += Double(ref[r * cols + c]) * Double(x[c]); wsum += Swift.abs(Double(ref[r * cols + c])) }
            #expect(abs(Double(y[r]) - expected) <= 1e-4 * max(1, abs(expected)) + 1e-4 * wsum * xmax, "row \(r): \(y[r]) vs \(expected)")
        }
    }

    /// The interleaved VNNI gemm (register tiles of 1–4 activation rows × 1–2 groups of 16
    /// weight rows, storing and accumulating) against dequantize + dot in double precision, on
    /// random blocks; skipped where the CPU lacks the znver4 features.
    @Test(.enabled(if: QuantKernels.vnniSupported, "CPU without AVX-512 VNNI"), arguments: [GGMLType.q4_1, .q8_0])
    func vnniGemmMatchesReference(type: GGMLType) throws {
        let rows = 80, cols = 96
        let bytes = Self.randomMatrix(type, rows: rows, cols: cols, seed: 9)
        let ref = Self.reference(type, bytes, rows: rows, cols: cols)
        for m in [1, 2, 3, 5, 8, 13, 70] {
            let x: [Float] = (0..<(m * cols)).map { Float(sin(Double($0) * 0.37) * (1 + Double($0 % 7))) }
            let base: [Float] = (0..<(m * rows)).map { Float($0 % 5) - 2 }
            for accumulate in [false, true] {
                var y = accumulate ? base : [Float](repeating: .nan, count: m * rows)
                let acts = Int16Activations()
                acts.reset(m: m, k: cols)
                bytes.withUnsafeBytes { raw in
                    let t = QuantTensor(type: type, rows: rows, cols: cols, data: raw.baseAddress!, owner: nil)
                    let w = InterleavedWeights(t, pool: TestCompute.pool)
                    x.withUnsafeBufferPointer { xp in
                        acts.quantize(xp.baseAddress!, rows: 0..<m)
                        y.withUnsafeMutableBufferPointer {
                            // Three group ranges: a pair, a single group, then the last two.
                            QuantKernels.gemm(w, acts, y: $0.baseAddress!, ldy: rows, groups: 0..<2, accumulate: accumulate)
                            QuantKernels.gemm(w, acts, y: $0.baseAddress!, ldy: rows, groups: 2..<3, accumulate: accumulate)
                            QuantKernels.gemm(w, acts, y: $0.baseAddress!, ldy: rows, groups: 3..<5, accumulate: accumulate)
                        }
                    }
                }
                for i in 0..<m {
                    let xmax = Double(x[(i * cols)..<((i + 1) * cols)].map { Swift.abs($0) }.max()!)
                    for r in 0..<rows {
                        var expected: Double = accumulate ? Double(base[i * rows + r]) : 0, wsum: Double = 0
                        for c in 0..<cols { expected += Double(ref[r * cols + c]) * Double(x[i * cols + c]); wsum += Swift.abs(Double(ref[r * cols + c])) }
                        #expect(abs(Double(y[i * rows + r]) - expected) <= 1e-4 * max(1, abs(expected)) + 1e-4 * wsum * xmax,
                                "m \(m) row \(i) col \(r) accumulate \(accumulate): \(y[i * rows + r]) vs \(expected)")
                    }
                }
            }
        }
    }

    /// The decoder's integer path: activations quantized once (`Int16Activations`), then the
    /// one-row and several-row kernels, storing and accumulating, against dequantize + dot.
    @Test(arguments: [GGMLType.q4_1, .q8_0])
    func int16ActivationKernelsMatchReference(type: GGMLType) throws {
        let rows = 37, cols = 96
        let bytes = Self.randomMatrix(type, rows: rows, cols: cols, seed: 11)
        let ref = Self.reference(type, bytes, rows: rows, cols: cols)
        for m in [1, 3, 16, 19] {
            // Row 1 has an all-zero block (scale 0) and one with a single huge value.
            var x: [Float] = (0..<(m * cols)).map { Float(sin(Double($0) * 0.41) * (1 + Double($0 % 5))) }
            if m > 1 { for c in 0..<32 { x[cols + c] = 0 }; x[cols + 40] = 1e4 }
            let acts = Int16Activations()
            acts.reset(m: m, k: cols)
            var stored = [Float](repeating: .nan, count: m * rows)
            var added = [Float](repeating: 1, count: m * rows)
            bytes.withUnsafeBytes { raw in
                let t = QuantTensor(type: type, rows: rows, cols: cols, data: raw.baseAddress!, owner: nil)
                x.withUnsafeBufferPointer { xp in acts.quantize(xp.baseAddress!, rows: 0..<m) }
                stored.withUnsafeMutableBufferPointer { y in
                    added.withUnsafeMutableBufferPointer { z in
                        if m == 1 {
                            QuantKernels.matvec(t, acts, y: y.baseAddress!, rows: 0..<20)
                            QuantKernels.matvec(t, acts, y: y.baseAddress!, rows: 20..<rows)
                            QuantKernels.matvec(t, acts, y: z.baseAddress!, rows: 0..<rows, accumulate: true)
                        } else {
                            var i0 = 0
                            while i0 < m {
                                let n = min(16, m - i0)
                                QuantKernels.matmulSmall(t, acts, firstRow: i0, m: n, y: y.baseAddress! + i0 * rows, ldy: rows, rows: 0..<rows)
                                QuantKernels.matmulSmall(t, acts, firstRow: i0, m: n, y: z.baseAddress! + i0 * rows, ldy: rows, rows: 5..<rows, accumulate: true)
                                i0 += n
                            }
                        }
                    }
                }
            }
            for i in 0..<m {
                let xmax = Double(x[(i * cols)..<((i + 1) * cols)].map { Swift.abs($0) }.max()!)
                for r in 0..<rows {
                    var expected: Double = 0, wsum: Double = 0
                    for c in 0..<cols { expected += Double(ref[r * cols + c]) * Double(x[i * cols + c]); wsum += Swift.abs(Double(ref[r * cols + c])) }
                    let tol = 1e-4 * max(1, abs(expected)) + 1e-4 * wsum * xmax
                    #expect(abs(Double(stored[i * rows + r]) - expected) <= tol, "m \(m) row \(i) col \(r): \(stored[i * rows + r]) vs \(expected)")
                    let base: Double = (m > 1 && r < 5) ? 1 : 1 + expected
                    #expect(abs(Double(added[i * rows + r]) - base) <= tol, "accumulate, m \(m) row \(i) col \(r)")
                }
            }
        }
    }

    @Test func sgemmPathMatchesMatvec() throws {
        let rows = 128, cols = 64, m = 5
        let bytes = Self.randomMatrix(.q4_1, rows: rows, cols: cols, seed: 7)
        let x: [Float] = (0..<(m * cols)).map { Float(cos(Double($0) * 0.11)) }
        var y1 = [Float](repeating: 0, count: m * rows), y2 = y1
        let pool = ComputeContext(threads: 2).pool
        bytes.withUnsafeBytes { raw in
            let t = QuantTensor(type: .q4_1, rows: rows, cols: cols, data: raw.baseAddress!, owner: nil)
            let dense = QuantKernels.dequantize(t, pool: pool)
            defer { dense.deallocate() }
            x.withUnsafeBufferPointer { xp in
                y1.withUnsafeMutableBufferPointer { BLAS.gemmNT(m: m, n: rows, k: cols, x: xp.baseAddress!, w: dense, y: $0.baseAddress!, pool: pool) }
                for i in 0..<m {
                    y2.withUnsafeMutableBufferPointer { QuantKernels.matvec(t, x: xp.baseAddress! + i * cols, y: $0.baseAddress! + i * rows, rows: 0..<rows) }
                }
            }
        }
        for i in 0..<(m * rows) { #expect(abs(y1[i] - y2[i]) <= 1e-3 * max(1, abs(y2[i]))) }
    }

    @Test func poolRunsEveryThreadOnce() {
        let pool = ComputePool(threads: 3)
        for _ in 0..<1000 {
            var hits = [Int](repeating: 0, count: 3)
            hits.withUnsafeMutableBufferPointer { h in
                let p = h.baseAddress!
                pool.run { t in p[t] += 1 }
            }
            #expect(hits == [1, 1, 1])
        }
        var covered = [Int](repeating: 0, count: 1000)
        covered.withUnsafeMutableBufferPointer { c in
            let p = c.baseAddress!
            pool.parallelFor(1000, granule: 16) { r in for i in r { p[i] += 1 } }
        }
        #expect(covered.allSatisfy { $0 == 1 })
    }
}
