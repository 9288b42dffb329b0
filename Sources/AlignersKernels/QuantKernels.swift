/// Kernels over `QuantTensor`s: fused dequantize-dot for matrix-vector products (decode), row
/// dequantization, and the small-batch integer products (matrix-matrix products on F32 copies are
/// `BLAS.gemmNT`'s).
///
/// The matrix-vector kernels never materialise F32 weights: each 32-weight block is expanded in
/// registers and multiplied into the activation. For Q4_1, `d·q + m` is split as
/// `d·Σ q·x + m·Σ x`, with the per-block activation sums computed once per call.
public enum QuantKernels {
    // MARK: matrix-vector

    /// y[r] = W[r,:]·x for r in `rows` (y is indexed by absolute row). With `integer` (the default),
    /// Q4_1 and Q8_0 rows quantize the activation to int16 per 32-block (scale max|x|/32767: relative
    /// error ~1e-5) and multiply in integers: `vpmaddwd` does 16 products and 8 pair sums per
    /// instruction, against 4 conversions per 8 weights on the float (dequantize-FMA) path.
    public static func matvec(_ w: QuantTensor, x: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>, rows: Range<Int>,
                              integer: Bool = true) {
        let k = w.cols
        switch w.type {
        case .q4_1 where integer, .q8_0 where integer:
            withQuantizedActivation(x, nb: k / 32) { xq, dx, xs in integerRows(w, xq, dx, xs, y: y, rows: rows, accumulate: false) }
        case .q4_1:
            let nb = k / 32
            withUnsafeTemporaryAllocation(of: Float.self, capacity: nb) { xs in
                blockSums(x, nb: nb, into: xs.baseAddress!)
                let stride = w.rowBytes
                var r = rows.lowerBound
                while r + 1 < rows.upperBound {
                    let (a, b) = dot2Q4_1(w.data + r * stride, w.data + (r + 1) * stride, x, xs.baseAddress!, nb: nb)
                    y[r] = a; y[r + 1] = b
                    r += 2
                }
                if r < rows.upperBound { y[r] = dotQ4_1(w.data + r * stride, x, xs.baseAddress!, nb: nb) }
            }
        case .q8_0:
            let nb = k / 32
            let stride = w.rowBytes
            for r in rows { y[r] = dotQ8_0(w.data + r * stride, x, nb: nb) }
        case .f32:
            for r in rows { y[r] = dotF32(w.data.assumingMemoryBound(to: Float.self) + r * k, x, k) }
        case .f16:
            for r in rows { y[r] = dotF16(w.data + r * w.rowBytes, x, k) }
        default:
            fatalError("QuantKernels.matvec: unsupported type \(w.type.name)")
        }
    }

    /// Whether the integer kernels (`Int16Activations` inputs) handle this weight type.
    public static func integerHandles(_ t: GGMLType) -> Bool { t == .q4_1 || t == .q8_0 }

    /// y[r] = W[r,:]·a[i] for r in `rows`, or y[r] += … when `accumulate` (a residual add fused
    /// into the product); W is Q4_1 or Q8_0 (`integerHandles`).
    public static func matvec(_ w: QuantTensor, _ a: Int16Activations, row i: Int = 0, y: UnsafeMutablePointer<Float>,
                              rows: Range<Int>, accumulate: Bool = false) {
        precondition(a.k == w.cols && i < a.m)
        let (xq, dx, xs) = a.row(i)
        integerRows(w, xq, dx, xs, y: y, rows: rows, accumulate: accumulate)
    }

    @inline(__always)
    static func integerRows(_ w: QuantTensor, _ xq: UnsafePointer<Int16>, _ dx: UnsafePointer<Float>, _ xs: UnsafePointer<Float>,
                            y: UnsafeMutablePointer<Float>, rows: Range<Int>, accumulate: Bool) {
        let nb = w.cols / 32, stride = w.rowBytes
        switch w.type {
        case .q4_1:
            if accumulate { for r in rows { y[r] += dotQ4_1i(w.data + r * stride, xq, dx, xs, nb: nb) } }
            else { for r in rows { y[r] = dotQ4_1i(w.data + r * stride, xq, dx, xs, nb: nb) } }
        case .q8_0:
            if accumulate { for r in rows { y[r] += dotQ8_0i(w.data + r * stride, xq, dx, nb: nb) } }
            else { for r in rows { y[r] = dotQ8_0i(w.data + r * stride, xq, dx, nb: nb) } }
        default:
            fatalError("QuantKernels.matvec: the integer kernels do not handle \(w.type.name)")
        }
    }

    /// Y[i, r] = W[r,:]·X[i,:] for the input rows i0..<i0+m of `a` (Y: m × ldy, indexed by absolute
    /// row r; `accumulate` adds into Y). Each weight block is decoded once and used for every input
    /// row: the batched decode path for small batches, where sgemm would spend its time packing F32
    /// weights. W is Q4_1 or Q8_0 (`integerHandles`).
    public static func matmulSmall(_ w: QuantTensor, _ a: Int16Activations, firstRow i0: Int, m: Int, y: UnsafeMutablePointer<Float>, ldy: Int,
                                   rows: Range<Int>, accumulate: Bool = false) {
        let nb = w.cols / 32
        precondition(a.k == w.cols && i0 + m <= a.m)
        let xq = a.values + i0 * w.cols, dx = a.scales + i0 * nb, xs = a.sums + i0 * nb
        withUnsafeTemporaryAllocation(of: SIMD8<Float>.self, capacity: m) { accb in
        withUnsafeTemporaryAllocation(of: Float.self, capacity: m) { maccb in
            let acc = accb.baseAddress!, macc = maccb.baseAddress!
            let stride = w.rowBytes
            for r in rows {
                let row = w.data + r * stride
                for i in 0..<m { acc[i] = SIMD8(); macc[i] = 0 }
                if w.type == .q4_1 {
                    for b in 0..<nb {
                        let blk = row + b * 20
                        let d = halfToFloat(blk.loadUnaligned(as: UInt16.self))
                        let mn = halfToFloat(blk.loadUnaligned(fromByteOffset: 2, as: UInt16.self))
                        let q = blk.loadUnaligned(fromByteOffset: 4, as: SIMD16<UInt8>.self)
                        let lo = q & 15, hi = q &>> 4
                        for i in 0..<m {
                            let xp = UnsafeRawPointer(xq + (i * nb + b) * 32)
                            let s = pmadd(lo, xp.loadUnaligned(as: SIMD16<Int16>.self)) &+ pmadd(hi, xp.loadUnaligned(fromByteOffset: 32, as: SIMD16<Int16>.self))
                            acc[i].addProduct(toFloat(s), SIMD8(repeating: d * dx[i * nb + b]))
                            macc[i] += mn * xs[i * nb + b]
                        }
                    }
                } else {
                    precondition(w.type == .q8_0, "QuantKernels.matmulSmall: the integer kernels do not handle \(w.type.name)")
                    for b in 0..<nb {
                        let blk = row + b * 34
                        let d = halfToFloat(blk.loadUnaligned(as: UInt16.self))
                        let q0 = blk.loadUnaligned(fromByteOffset: 2, as: SIMD16<Int8>.self)
                        let q1 = blk.loadUnaligned(fromByteOffset: 18, as: SIMD16<Int8>.self)
                        for i in 0..<m {
                            let xp = UnsafeRawPointer(xq + (i * nb + b) * 32)
                            let s = pmadd(q0, xp.loadUnaligned(as: SIMD16<Int16>.self)) &+ pmadd(q1, xp.loadUnaligned(fromByteOffset: 32, as: SIMD16<Int16>.self))
                            acc[i].addProduct(toFloat(s), SIMD8(repeating: d * dx[i * nb + b]))
                        }
                    }
                }
                for i in 0..<m {
                    let a = acc[i].lowHalf + acc[i].highHalf
                    let c = a.lowHalf + a.highHalf
                    let v = c[0] + c[1] + macc[i]
                    if accumulate { y[i * ldy + r] += v } else { y[i * ldy + r] = v }
                }
            }
        }}
    }

    /// y = W·x using every thread of `pool`.
    public static func matvec(_ w: QuantTensor, x: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>, pool: ComputePool,
                              integer: Bool = true) {
        pool.parallelFor(w.rows, granule: 16) { range in matvec(w, x: x, y: y, rows: range, integer: integer) }
    }

    /// Quantizes one activation row into temporary buffers (callers without an `Int16Activations`).
    @inline(__always)
    static func withQuantizedActivation<R>(_ x: UnsafePointer<Float>, nb: Int,
                                           _ body: (UnsafePointer<Int16>, UnsafePointer<Float>, UnsafePointer<Float>) -> R) -> R {
        withUnsafeTemporaryAllocation(of: Int16.self, capacity: nb * 32) { xqb in
            withUnsafeTemporaryAllocation(of: Float.self, capacity: 2 * nb) { fb in
                let xq = xqb.baseAddress!, dx = fb.baseAddress!, xs = fb.baseAddress! + nb
                for b in 0..<nb { (dx[b], xs[b]) = Int16Activations.quantizeBlock(x + b * 32, into: xq + b * 32) }
                return body(xq, dx, xs)
            }
        }
    }

    /// Pair sums of 16 products (lowered to `vpmaddwd`).
    @inline(__always)
    static func pmadd(_ a: SIMD16<UInt8>, _ b: SIMD16<Int16>) -> SIMD8<Int32> {
        let p = SIMD16<Int32>(Int32(a[0]), Int32(a[1]), Int32(a[2]), Int32(a[3]), Int32(a[4]), Int32(a[5]), Int32(a[6]), Int32(a[7]),
                              Int32(a[8]), Int32(a[9]), Int32(a[10]), Int32(a[11]), Int32(a[12]), Int32(a[13]), Int32(a[14]), Int32(a[15]))
            &* SIMD16<Int32>(Int32(b[0]), Int32(b[1]), Int32(b[2]), Int32(b[3]), Int32(b[4]), Int32(b[5]), Int32(b[6]), Int32(b[7]),
                             Int32(b[8]), Int32(b[9]), Int32(b[10]), Int32(b[11]), Int32(b[12]), Int32(b[13]), Int32(b[14]), Int32(b[15]))
        return SIMD8<Int32>(p[0] &+ p[1], p[2] &+ p[3], p[4] &+ p[5], p[6] &+ p[7], p[8] &+ p[9], p[10] &+ p[11], p[12] &+ p[13], p[14] &+ p[15])
    }

    @inline(__always)
    static func pmadd(_ a: SIMD16<Int8>, _ b: SIMD16<Int16>) -> SIMD8<Int32> {
        let p = SIMD16<Int32>(Int32(a[0]), Int32(a[1]), Int32(a[2]), Int32(a[3]), Int32(a[4]), Int32(a[5]), Int32(a[6]), Int32(a[7]),
                              Int32(a[8]), Int32(a[9]), Int32(a[10]), Int32(a[11]), Int32(a[12]), Int32(a[13]), Int32(a[14]), Int32(a[15]))
            &* SIMD16<Int32>(Int32(b[0]), Int32(b[1]), Int32(b[2]), Int32(b[3]), Int32(b[4]), Int32(b[5]), Int32(b[6]), Int32(b[7]),
                             Int32(b[8]), Int32(b[9]), Int32(b[10]), Int32(b[11]), Int32(b[12]), Int32(b[13]), Int32(b[14]), Int32(b[15]))
        return SIMD8<Int32>(p[0] &+ p[1], p[2] &+ p[3], p[4] &+ p[5], p[6] &+ p[7], p[8] &+ p[9], p[10] &+ p[11], p[12] &+ p[13], p[14] &+ p[15])
    }

    @inline(__always)
    static func toFloat(_ v: SIMD8<Int32>) -> SIMD8<Float> {
        SIMD8<Float>(Float(v[0]), Float(v[1]), Float(v[2]), Float(v[3]), Float(v[4]), Float(v[5]), Float(v[6]), Float(v[7]))
    }

    @inline(__always)
    static func dotQ4_1i(_ row: UnsafeRawPointer, _ xq: UnsafePointer<Int16>, _ dx: UnsafePointer<Float>, _ xs: UnsafePointer<Float>, nb: Int) -> Float {
        // Two accumulators: one FMA chain would bound the loop by FMA latency.
        var acc0 = SIMD8<Float>(), acc1 = SIMD8<Float>()
        var macc0: Float = 0, macc1: Float = 0
        @inline(__always) func block(_ b: Int, _ acc: inout SIMD8<Float>, _ macc: inout Float) {
            let blk = row + b * 20
            let d = halfToFloat(blk.loadUnaligned(as: UInt16.self))
            let m = halfToFloat(blk.loadUnaligned(fromByteOffset: 2, as: UInt16.self))
            let q = blk.loadUnaligned(fromByteOffset: 4, as: SIMD16<UInt8>.self)
            let xp = UnsafeRawPointer(xq + b * 32)
            let s = pmadd(q & 15, xp.loadUnaligned(as: SIMD16<Int16>.self)) &+ pmadd(q &>> 4, xp.loadUnaligned(fromByteOffset: 32, as: SIMD16<Int16>.self))
            acc.addProduct(toFloat(s), SIMD8(repeating: d * dx[b]))
            macc += m * xs[b]
        }
        var b = 0
        while b + 1 < nb { block(b, &acc0, &macc0); block(b + 1, &acc1, &macc1); b += 2 }
        if b < nb { block(b, &acc0, &macc0) }
        let acc = acc0 + acc1
        let a = acc.lowHalf + acc.highHalf
        let c = a.lowHalf + a.highHalf
        return c[0] + c[1] + macc0 + macc1
    }

    @inline(__always)
    static func dotQ8_0i(_ row: UnsafeRawPointer, _ xq: UnsafePointer<Int16>, _ dx: UnsafePointer<Float>, nb: Int) -> Float {
        var acc0 = SIMD8<Float>(), acc1 = SIMD8<Float>()
        @inline(__always) func block(_ b: Int, _ acc: inout SIMD8<Float>) {
            let blk = row + b * 34
            let d = halfToFloat(blk.loadUnaligned(as: UInt16.self))
            let xp = UnsafeRawPointer(xq + b * 32)
            let s = pmadd(blk.loadUnaligned(fromByteOffset: 2, as: SIMD16<Int8>.self), xp.loadUnaligned(as: SIMD16<Int16>.self))
                &+ pmadd(blk.loadUnaligned(fromByteOffset: 18, as: SIMD16<Int8>.self), xp.loadUnaligned(fromByteOffset: 32, as: SIMD16<Int16>.self))
            acc.addProduct(toFloat(s), SIMD8(repeating: d * dx[b]))
        }
        var b = 0
        while b + 1 < nb { block(b, &acc0); block(b + 1, &acc1); b += 2 }
        if b < nb { block(b, &acc0) }
        let acc = acc0 + acc1
        let a = acc.lowHalf + acc.highHalf
        let c = a.lowHalf + a.highHalf
        return c[0] + c[1]
    }

    @inline(__always)
    static func blockSums(_ x: UnsafePointer<Float>, nb: Int, into xs: UnsafeMutablePointer<Float>) {
        for b in 0..<nb {
            let p = UnsafeRawPointer(x + b * 32)
            let s = p.loadUnaligned(as: SIMD16<Float>.self) + p.loadUnaligned(fromByteOffset: 64, as: SIMD16<Float>.self)
            xs[b] = hsum(s)
        }
    }

    /// Horizontal sum as a tree (the standard library's `sum()` is an out-of-line lane-by-lane loop).
    @inline(__always)
    public static func hsum(_ v: SIMD16<Float>) -> Float {
        let a = v.lowHalf + v.highHalf
        let b = a.lowHalf + a.highHalf
        let c = b.lowHalf + b.highHalf
        return c[0] + c[1]
    }

    @inline(__always)
    static func nibbles(_ blk: UnsafeRawPointer) -> (SIMD16<Float>, SIMD16<Float>) {
        let q = blk.loadUnaligned(fromByteOffset: 4, as: SIMD16<UInt8>.self)
        return (widen(q & 15), widen(q &>> 4))
    }

    // The standard library's generic SIMD conversions are not inlined into kernels (one call per
    // block, lanes converted one by one); spelled out lane by lane, LLVM's SLP vectoriser turns
    // these into one zero/sign extension and one int-to-float conversion.
    @inline(__always)
    static func widen(_ q: SIMD16<UInt8>) -> SIMD16<Float> {
        SIMD16<Float>(Float(q[0]), Float(q[1]), Float(q[2]), Float(q[3]), Float(q[4]), Float(q[5]), Float(q[6]), Float(q[7]),
                      Float(q[8]), Float(q[9]), Float(q[10]), Float(q[11]), Float(q[12]), Float(q[13]), Float(q[14]), Float(q[15]))
    }

    @inline(__always)
    static func widen(_ q: SIMD16<Int8>) -> SIMD16<Float> {
        SIMD16<Float>(Float(q[0]), Float(q[1]), Float(q[2]), Float(q[3]), Float(q[4]), Float(q[5]), Float(q[6]), Float(q[7]),
                      Float(q[8]), Float(q[9]), Float(q[10]), Float(q[11]), Float(q[12]), Float(q[13]), Float(q[14]), Float(q[15]))
    }

    @inline(__always)
    static func dotQ4_1(_ row: UnsafeRawPointer, _ x: UnsafePointer<Float>, _ xs: UnsafePointer<Float>, nb: Int) -> Float {
        var acc = SIMD16<Float>()
        var macc: Float = 0
        for b in 0..<nb {
            let blk = row + b * 20
            let d = halfToFloat(blk.loadUnaligned(as: UInt16.self))
            let m = halfToFloat(blk.loadUnaligned(fromByteOffset: 2, as: UInt16.self))
            let (lo, hi) = nibbles(blk)
            let xp = UnsafeRawPointer(x + b * 32)
            var p = lo * xp.loadUnaligned(as: SIMD16<Float>.self)
            p.addProduct(hi, xp.loadUnaligned(fromByteOffset: 64, as: SIMD16<Float>.self))
            acc.addProduct(p, SIMD16(repeating: d))
            macc += m * xs[b]
        }
        return hsum(acc) + macc
    }

    @inline(__always)
    static func dot2Q4_1(_ r0: UnsafeRawPointer, _ r1: UnsafeRawPointer, _ x: UnsafePointer<Float>, _ xs: UnsafePointer<Float>, nb: Int) -> (Float, Float) {
        var acc0 = SIMD16<Float>(), acc1 = SIMD16<Float>()
        var m0: Float = 0, m1: Float = 0
        for b in 0..<nb {
            let xp = UnsafeRawPointer(x + b * 32)
            let x0 = xp.loadUnaligned(as: SIMD16<Float>.self)
            let x1 = xp.loadUnaligned(fromByteOffset: 64, as: SIMD16<Float>.self)
            let sx = xs[b]
            do {
                let blk = r0 + b * 20
                let d = halfToFloat(blk.loadUnaligned(as: UInt16.self))
                let m = halfToFloat(blk.loadUnaligned(fromByteOffset: 2, as: UInt16.self))
                let (lo, hi) = nibbles(blk)
                var p = lo * x0
                p.addProduct(hi, x1)
                acc0.addProduct(p, SIMD16(repeating: d))
                m0 += m * sx
            }
            do {
                let blk = r1 + b * 20
                let d = halfToFloat(blk.loadUnaligned(as: UInt16.self))
                let m = halfToFloat(blk.loadUnaligned(fromByteOffset: 2, as: UInt16.self))
                let (lo, hi) = nibbles(blk)
                var p = lo * x0
                p.addProduct(hi, x1)
                acc1.addProduct(p, SIMD16(repeating: d))
                m1 += m * sx
            }
        }
        return (hsum(acc0) + m0, hsum(acc1) + m1)
    }

    @inline(__always)
    static func dotQ8_0(_ row: UnsafeRawPointer, _ x: UnsafePointer<Float>, nb: Int) -> Float {
        var acc = SIMD16<Float>()
        for b in 0..<nb {
            let blk = row + b * 34
            let d = halfToFloat(blk.loadUnaligned(as: UInt16.self))
            let q0 = widen(blk.loadUnaligned(fromByteOffset: 2, as: SIMD16<Int8>.self))
            let q1 = widen(blk.loadUnaligned(fromByteOffset: 18, as: SIMD16<Int8>.self))
            let xp = UnsafeRawPointer(x + b * 32)
            var p = q0 * xp.loadUnaligned(as: SIMD16<Float>.self)
            p.addProduct(q1, xp.loadUnaligned(fromByteOffset: 64, as: SIMD16<Float>.self))
            acc.addProduct(p, SIMD16(repeating: d))
        }
        return hsum(acc)
    }

    @inline(__always)
    public static func dotF32(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, _ n: Int) -> Float {
        var acc0 = SIMD16<Float>(), acc1 = SIMD16<Float>()
        var i = 0
        let pa = UnsafeRawPointer(a), pb = UnsafeRawPointer(b)
        while i + 32 <= n {
            acc0.addProduct(pa.loadUnaligned(fromByteOffset: i * 4, as: SIMD16<Float>.self), pb.loadUnaligned(fromByteOffset: i * 4, as: SIMD16<Float>.self))
            acc1.addProduct(pa.loadUnaligned(fromByteOffset: i * 4 + 64, as: SIMD16<Float>.self), pb.loadUnaligned(fromByteOffset: i * 4 + 64, as: SIMD16<Float>.self))
            i += 32
        }
        while i + 16 <= n {
            acc0.addProduct(pa.loadUnaligned(fromByteOffset: i * 4, as: SIMD16<Float>.self), pb.loadUnaligned(fromByteOffset: i * 4, as: SIMD16<Float>.self))
            i += 16
        }
        var s = hsum(acc0 + acc1)
        while i < n { s += a[i] * b[i]; i += 1 }
        return s
    }

    @inline(__always)
    static func dotF16(_ row: UnsafeRawPointer, _ x: UnsafePointer<Float>, _ n: Int) -> Float {
        let h = row.assumingMemoryBound(to: UInt16.self)
        var s: Float = 0
        for i in 0..<n { s += halfToFloat(h[i]) * x[i] }
        return s
    }

    // MARK: dequantization

    /// Writes row `r` of `w` as F32 into `out` (w.cols floats).
    public static func dequantizeRow(_ w: QuantTensor, _ r: Int, into out: UnsafeMutablePointer<Float>) {
        let row = w.row(r)
        let k = w.cols
        switch w.type {
        case .q4_1:
            for b in 0..<(k / 32) {
                let blk = row + b * 20
                let d = halfToFloat(blk.loadUnaligned(as: UInt16.self))
                let m = halfToFloat(blk.loadUnaligned(fromByteOffset: 2, as: UInt16.self))
                let (lo, hi) = nibbles(blk)
                let o = UnsafeMutableRawPointer(out + b * 32)
                o.storeBytes(of: lo * d + m, as: SIMD16<Float>.self)
                o.storeBytes(of: hi * d + m, toByteOffset: 64, as: SIMD16<Float>.self)
            }
        case .q8_0:
            for b in 0..<(k / 32) {
                let blk = row + b * 34
                let d = halfToFloat(blk.loadUnaligned(as: UInt16.self))
                let q0 = widen(blk.loadUnaligned(fromByteOffset: 2, as: SIMD16<Int8>.self))
                let q1 = widen(blk.loadUnaligned(fromByteOffset: 18, as: SIMD16<Int8>.self))
                let o = UnsafeMutableRawPointer(out + b * 32)
                o.storeBytes(of: q0 * d, as: SIMD16<Float>.self)
                o.storeBytes(of: q1 * d, toByteOffset: 64, as: SIMD16<Float>.self)
            }
        case .f32:
            out.update(from: row.assumingMemoryBound(to: Float.self), count: k)
        case .f16:
            let h = row.assumingMemoryBound(to: UInt16.self)
            for i in 0..<k { out[i] = halfToFloat(h[i]) }
        default:
            fatalError("QuantKernels.dequantizeRow: unsupported type \(w.type.name)")
        }
    }

    /// The whole matrix as F32 (rows × cols), dequantized on every thread of `pool`.
    /// The caller owns (and must deallocate) the buffer.
    public static func dequantize(_ w: QuantTensor, pool: ComputePool) -> UnsafeMutablePointer<Float> {
        let out = UnsafeMutablePointer<Float>.allocate(capacity: w.rows * w.cols)
        pool.parallelFor(w.rows, granule: 64) { range in
            for r in range { dequantizeRow(w, r, into: out + r * w.cols) }
        }
        return out
    }
}
