// Int16 × 4-bit/8-bit matrix kernels with AVX-512 VNNI (`vpdpwssd`: 32 int16 products summed in
// pairs into 16 int32 lanes and accumulated, one instruction).
//
// This module is compiled apart from the others, with `-target-cpu znver4` and `-parse-stdlib`
// (Swift reaches LLVM's VNNI intrinsics only through the `Builtin` module, and the generic SIMD
// operators lower poorly there, hence the small `VF`/`VI` wrappers). Nothing here may run unless
// the CPU has the znver4 feature set: `AlignersKernels` checks that at run time
// (`QuantKernels.vnni`) and keeps its portable kernels otherwise. The public entry points are
// `@inline(never)` so they are never inlined into code compiled for another CPU.
//
// Activations (`Acts`): m rows of nb 32-element blocks, each block quantized to int16 with scale
// max|x|/32767 (int8 activations, as llama.cpp uses, move SmolLM2's logits by up to 0.7 against
// the float reference: too coarse for our tests' 0.05). Row i, block b occupies 64 bytes at
// q + (i·nb + b)·64; the same offset in `scales` holds the block's scale once per int32 lane (16
// floats) and in `sums` each lane's x[2l] + x[2l+1] (for Q4_1's minimum term).
#if arch(x86_64)
import Swift

public struct Acts {
    public let m: Int
    public let nb: Int
    public let q: UnsafeRawPointer
    public let scales: UnsafeRawPointer
    public let sums: UnsafeRawPointer
    public init(m: Int, nb: Int, q: UnsafeRawPointer, scales: UnsafeRawPointer, sums: UnsafeRawPointer) {
        self.m = m; self.nb = nb; self.q = q; self.scales = scales; self.sums = sums
    }
}

public enum VNNI {
    /// Quantizes rows `rows` of x (m × k floats, k a multiple of 32) into the layout above;
    /// `q`/`scales`/`sums` hold all m rows (k·2 bytes, k/2 floats, k/2 floats each).
    @inline(never)
    public static func quantize(_ x: UnsafePointer<Float>, k: Int, rows: Range<Int>, q: UnsafeMutableRawPointer,
                                scales: UnsafeMutablePointer<Float>, sums: UnsafeMutablePointer<Float>) {
        let nb = k / 32
        for i in rows {
            for b in 0..<nb {
                let o = i * nb + b
                let p = UnsafeRawPointer(x + o * 32)
                let v0 = p.loadUnaligned(as: SIMD16<Float>.self), v1 = p.loadUnaligned(fromByteOffset: 64, as: SIMD16<Float>.self)
                var mx: Float = 0
                for j in 0..<16 { mx = Swift.max(mx, Swift.max(v0[j] < 0 ? -v0[j] : v0[j], v1[j] < 0 ? -v1[j] : v1[j])) }
                let scale: Float = mx > 0 ? mx / 32767 : 0
                let inv: Float = mx > 0 ? 32767 / mx : 0
                let qo = (q + o * 64).assumingMemoryBound(to: Int16.self)
                for j in 0..<16 {
                    qo[j] = Int16((v0[j] * inv).rounded(.toNearestOrEven))
                    qo[16 + j] = Int16((v1[j] * inv).rounded(.toNearestOrEven))
                }
                let so = scales + o * 16, mo = sums + o * 16
                for l in 0..<8 {
                    so[l] = scale; so[8 + l] = scale
                    mo[l] = v0[2 * l] + v0[2 * l + 1]
                    mo[8 + l] = v1[2 * l] + v1[2 * l + 1]
                }
            }
        }
    }

    /// Y[i, r] = W[r,:]·X[i,:] for weight rows `rows` of a Q4_1 matrix (`rowBytes` per row, nb
    /// blocks) and every activation row i < a.m; Y[i, r] at y[i·ldy + r].
    @inline(never)
    public static func gemmQ4_1(_ w: UnsafeRawPointer, rowBytes: Int, nb: Int, rows: Range<Int>, _ a: Acts,
                                _ y: UnsafeMutablePointer<Float>, ldy: Int) {
        blocked(rows, nb: nb, a) { r, i0, n in spanQ4_1(w + r * rowBytes, nb: nb, a, i0, n, y + r, ldy: ldy) }
    }

    /// The same for Q8_0 weights.
    @inline(never)
    public static func gemmQ8_0(_ w: UnsafeRawPointer, rowBytes: Int, nb: Int, rows: Range<Int>, _ a: Acts,
                                _ y: UnsafeMutablePointer<Float>, ldy: Int) {
        blocked(rows, nb: nb, a) { r, i0, n in spanQ8_0(w + r * rowBytes, nb: nb, a, i0, n, y + r, ldy: ldy) }
    }

    /// Cache blocking: 32 weight rows at a time (their blocks stay in L1/L2) against activation
    /// tiles small enough for L1 (6 bytes per element: int16, lane scale, lane sum), each tile
    /// against every weight row of the chunk.
    @inline(__always)
    static func blocked(_ rows: Range<Int>, nb: Int, _ a: Acts, _ body: (Int, Int, Int) -> Void) {
        let tile = nb <= 24 ? 8 : 4
        var r0 = rows.lowerBound
        while r0 < rows.upperBound {
            let r1 = Swift.min(r0 + 32, rows.upperBound)
            var i = 0
            while i < a.m {
                let n = Swift.min(tile, a.m - i)
                for r in r0..<r1 { body(r, i, n) }
                i += n
            }
            r0 = r1
        }
    }
}

// MARK: vector helpers over LLVM builtins (the generic SIMD operators do not lower well here)

struct VF {
    var v: Builtin.Vec16xFPIEEE32
    @inline(__always) init(_ v: Builtin.Vec16xFPIEEE32) { self.v = v }
    @inline(__always) init(_ s: SIMD16<Float>) { v = unsafeBitCast(s, to: Builtin.Vec16xFPIEEE32.self) }
    @inline(__always) static func * (a: VF, b: VF) -> VF { VF(Builtin.fmul_Vec16xFPIEEE32(a.v, b.v)) }
    @inline(__always) static func + (a: VF, b: VF) -> VF { VF(Builtin.fadd_Vec16xFPIEEE32(a.v, b.v)) }
    @inline(__always) static func fma(_ a: VF, _ b: VF, _ c: VF) -> VF { VF(Builtin.int_fma_Vec16xFPIEEE32(a.v, b.v, c.v)) }
    @inline(__always) static var zero: VF { VF(SIMD16<Float>()) }
    @inline(__always) init(_ f: Float) { v = unsafeBitCast(SIMD16<Float>(repeating: f), to: Builtin.Vec16xFPIEEE32.self) }
    @inline(__always) var simd: SIMD16<Float> { unsafeBitCast(v, to: SIMD16<Float>.self) }
}

struct VI {
    var v: Builtin.Vec16xInt32
    @inline(__always) init(_ v: Builtin.Vec16xInt32) { self.v = v }
    @inline(__always) var float: VF { VF(Builtin.sitofp_Vec16xInt32_Vec16xFPIEEE32(v)) }
    @inline(__always) static var zero: VI { VI(unsafeBitCast(SIMD16<Int32>(), to: Builtin.Vec16xInt32.self)) }
    /// self + Σ₂ (int16 of a) · (int16 of b), per int32 lane.
    @inline(__always) func dpwssd(_ a: VI, _ b: VI) -> VI { VI(Builtin.int_x86_avx512_vpdpwssd_512(v, a.v, b.v)) }
}

@inline(__always) func loadVI(_ p: UnsafeRawPointer) -> VI { VI(p.loadUnaligned(as: Builtin.Vec16xInt32.self)) }
@inline(__always) func loadVF(_ p: UnsafeRawPointer) -> VF { VF(p.loadUnaligned(as: Builtin.Vec16xFPIEEE32.self)) }

@inline(__always) func hsum(_ v: VF) -> Float {
    let s = v.simd
    let a = s.lowHalf + s.highHalf
    let b = a.lowHalf + a.highHalf
    let c = b.lowHalf + b.highHalf
    return c[0] + c[1]
}

@_transparent func half(_ p: UnsafeRawPointer, _ o: Int) -> Float {
    Float(Float16(bitPattern: p.loadUnaligned(fromByteOffset: o, as: UInt16.self)))
}

/// One Q4_1 block as 32 int16 in element order (low nibbles are elements 0–15).
@_transparent func unpack16Q4_1(_ b0: UnsafeRawPointer) -> VI {
    let q = b0.loadUnaligned(fromByteOffset: 4, as: SIMD16<UInt8>.self)
    let w = SIMD32<UInt8>(lowHalf: q & 15, highHalf: q &>> 4)
    return VI(unsafeBitCast(Builtin.zext_Vec32xInt8_Vec32xInt16(unsafeBitCast(w, to: Builtin.Vec32xInt8.self)), to: Builtin.Vec16xInt32.self))
}

/// One Q8_0 block as 32 int16.
@_transparent func load16Q8_0(_ b0: UnsafeRawPointer) -> VI {
    let w = b0.loadUnaligned(fromByteOffset: 2, as: Builtin.Vec32xInt8.self)
    return VI(unsafeBitCast(Builtin.sext_Vec32xInt8_Vec32xInt16(w), to: Builtin.Vec16xInt32.self))
}
#endif
