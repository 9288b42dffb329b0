// Interleaved int16 × Q4_1/Q8_0 matrix products with AVX-512 VNNI (`vpdpwssd`: 32 int16
// products summed in pairs into 16 int32 lanes and accumulated, one instruction).
//
// This module is compiled apart from the others, with `-target-cpu znver4` and `-parse-stdlib`
// (Swift reaches LLVM's VNNI intrinsics only through the `Builtin` module, and the generic SIMD
// operators lower poorly there, hence the small `VF`/`VI` wrappers). Nothing here may run unless
// the CPU has the znver4 feature set: `AlignersKernels` checks that at run time
// (`QuantKernels.vnniSupported`) and keeps sgemm otherwise. The public entry point is
// `@inline(never)` so that it is never inlined into code compiled for another CPU.
//
// Weights (`InterleavedWeights` in AlignersKernels): rows in groups of 16, and per group and
// 32-column block `blockBytes` bytes: the 16 rows' scales (16 floats), for Q4_1 their minimums (16
// floats), then 16 vectors of 64 bytes, vector j holding columns 2j and 2j+1 of each row as int16
// (lane l = row l of the group). One `vpdpwssd` of vector j with a broadcast activation pair thus
// advances 16 output columns at once, and the block scales are applied once per block and 16
// outputs, not per product: the layout llama.cpp uses for its repacked AVX-512 and AMX kernels.
//
// Activations (`Int16Activations`): m rows of nb blocks, 32 int16 per block (row stride nb·64
// bytes), one float scale and one float sum (for Q4_1's minimums) per block. Int8 activations
// (`vpdpbusd`, twice the rate) moved SmolLM2's logits by up to 0.7 against the float reference,
// too coarse for the tests' 0.05.
#if arch(x86_64)
import Swift

public enum VNNI {
    /// Bytes of one interleaved block (16 rows × 32 columns).
    public static func blockBytes(q4_1: Bool) -> Int { q4_1 ? 1152 : 1088 }

    /// Y[i, 16g + l] (at y[i·ldy + 16g + l]) = W[16g + l, :] · X[i, :] for the groups `groups` of
    /// an interleaved matrix and every activation row i < m; `accumulate` adds to y instead.
    @inline(never)
    public static func gemm(_ w: UnsafeRawPointer, q4_1: Bool, nb: Int, groups: Range<Int>, m: Int,
                            x: UnsafeRawPointer, scales: UnsafePointer<Float>, sums: UnsafePointer<Float>,
                            y: UnsafeMutablePointer<Float>, ldy: Int, accumulate: Bool) {
        let groupBytes = nb * blockBytes(q4_1: q4_1)
        // Chunks of 64 activation rows stay in L2 while every group pair of the range passes;
        // each pair (≤ 110 KB for SmolLM2) is read from L2 once per tile of 4 rows.
        var i0 = 0
        while i0 < m {
            let mc = Swift.min(64, m - i0)
            let xi = x + i0 * nb * 64, si = scales + i0 * nb, mi = sums + i0 * nb
            var g = groups.lowerBound
            while g < groups.upperBound {
                let C = Swift.min(2, groups.upperBound - g)
                let wg = w + g * groupBytes, yg = y + i0 * ldy + g * 16
                if q4_1 {
                    rowsQ4_1(C, wg, groupBytes: groupBytes, nb: nb, m: mc, xi, si, mi, yg, ldy: ldy, accumulate: accumulate)
                } else {
                    rowsQ8_0(C, wg, groupBytes: groupBytes, nb: nb, m: mc, xi, si, mi, yg, ldy: ldy, accumulate: accumulate)
                }
                g += C
            }
            i0 += mc
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

@inline(__always) func broadcastVI(_ p: UnsafeRawPointer) -> VI {
    VI(unsafeBitCast(SIMD16<Int32>(repeating: p.loadUnaligned(as: Int32.self)), to: Builtin.Vec16xInt32.self))
}

@inline(__always) func store(_ v: VF, _ p: UnsafeMutablePointer<Float>, accumulate: Bool) {
    let r = UnsafeMutableRawPointer(p)
    r.storeBytes(of: (accumulate ? v + loadVF(r) : v).simd, as: SIMD16<Float>.self)
}
#endif
