#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import AlignersVNNI

/// Run-time choice of the AVX-512 VNNI kernels (module `AlignersVNNI`, compiled for Zen 4).
///
/// `QuantKernels.vnniSupported` is true when /proc/cpuinfo lists every feature the znver4 target
/// may use. Then batched products (prompts, batched decoding) run, where the `KernelPlan` allows,
/// `QuantKernels.gemm` on `InterleavedWeights` with int16 activations, at twice the multiply rate of
/// F32 sgemm; elsewhere they run sgemm on F32 copies. Small products (decode) keep the portable int16 kernels, which
/// read the quantized blocks directly (a quarter of the bytes).
extension QuantKernels {
    /// Feature flags (as /proc/cpuinfo spells them) that code compiled with `-target-cpu znver4` may use.
    static let znver4Flags = ["avx2", "fma", "f16c", "bmi1", "bmi2", "avx512f", "avx512dq", "avx512cd", "avx512bw", "avx512vl",
                              "avx512ifma", "avx512vbmi", "avx512_vbmi2", "avx512_vnni", "avx512_bitalg", "avx512_vpopcntdq",
                              "avx512_bf16", "gfni", "vaes", "vpclmulqdq"]

    /// The CPU's feature flags as /proc/cpuinfo lists them (empty elsewhere).
    public static let cpuFlags: Set<String> = {
        #if arch(x86_64) && os(Linux)
        guard let f = fopen("/proc/cpuinfo", "r") else { return [] }
        defer { fclose(f) }
        var line: UnsafeMutablePointer<CChar>?
        var cap = 0
        defer { free(line) }
        while getline(&line, &cap, f) > 0 {
            let s = String(cString: line!)
            if s.hasPrefix("flags") {
                return Set(s.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\n" || $0 == ":" }).map(String.init))
            }
        }
        return []
        #else
        return []
        #endif
    }()

    /// Whether this CPU runs the VNNI kernels (a fact; whether a product uses them is the
    /// `KernelPlan`'s choice).
    public static let vnniSupported: Bool = znver4Flags.allSatisfy(cpuFlags.contains)

    /// Whether `InterleavedWeights` can hold this matrix.
    public static func interleavable(_ q: QuantTensor) -> Bool {
        (q.type == .q4_1 || q.type == .q8_0) && q.rows % 16 == 0 && q.cols % 32 == 0
    }

    /// Y[i, r] = W[r,:]·X[i,:] for the rows of the 16-row groups `groups` and every row i of `a`;
    /// Y[i, r] at y[i·ldy + r]; `accumulate` adds to y instead.
    public static func gemm(_ w: InterleavedWeights, _ a: Int16Activations, y: UnsafeMutablePointer<Float>, ldy: Int,
                            groups: Range<Int>, accumulate: Bool) {
        #if arch(x86_64)
        precondition(a.k == w.cols && groups.upperBound <= w.rows / 16)
        VNNI.gemm(w.data, q4_1: w.q4_1, nb: w.cols / 32, groups: groups, m: a.m, x: a.values, scales: a.scales, sums: a.sums,
                  y: y, ldy: ldy, accumulate: accumulate)
        #else
        fatalError("QuantKernels.gemm: the VNNI kernels need x86-64")
        #endif
    }
}

/// A Q4_1 or Q8_0 matrix rearranged for `QuantKernels.gemm`: rows in groups of 16, and per group
/// and 32-column block the 16 scales (and minimums), then the block's columns in pairs, each pair
/// of the 16 rows as one 64-byte vector of int16 (layout in AlignersVNNI/VNNI.swift). The values
/// are the blocks' own integers, so nothing is lost; it takes 2.1–2.25 bytes per weight (~300 MB
/// for SmolLM2-135M, against 540 MB for F32 copies).
public final class InterleavedWeights: @unchecked Sendable {
    public let rows: Int
    public let cols: Int
    public let q4_1: Bool
    let data: UnsafeMutableRawPointer

    public init(_ q: QuantTensor, pool: ComputePool) {
        precondition(QuantKernels.interleavable(q), "InterleavedWeights: \(q.type.name) \(q.rows)×\(q.cols) cannot be interleaved")
        rows = q.rows; cols = q.cols; q4_1 = q.type == .q4_1
        let nb = q.cols / 32, bb = q4_1 ? 1152 : 1088, srcBlock = q.type.byteCount(elements: 32)
        let isQ4_1 = q4_1
        let data = UnsafeMutableRawPointer.allocate(byteCount: rows / 16 * nb * bb, alignment: 64)
        pool.parallelFor(rows / 16) { groups in
            for g in groups {
                for b in 0..<nb {
                    let dst = data + (g * nb + b) * bb
                    let scales = dst.assumingMemoryBound(to: Float.self)
                    let pairs = (dst + (isQ4_1 ? 128 : 64)).assumingMemoryBound(to: Int16.self)
                    for l in 0..<16 {
                        let src = q.row(g * 16 + l) + b * srcBlock
                        scales[l] = halfToFloat(src.loadUnaligned(as: UInt16.self))
                        if isQ4_1 { scales[16 + l] = halfToFloat(src.loadUnaligned(fromByteOffset: 2, as: UInt16.self)) }
                        for e in 0..<32 {
                            let v: Int16
                            if isQ4_1 {
                                let byte = src.load(fromByteOffset: 4 + e % 16, as: UInt8.self)
                                v = Int16(e < 16 ? byte & 15 : byte >> 4)
                            } else {
                                v = Int16(src.load(fromByteOffset: 2 + e, as: Int8.self))
                            }
                            pairs[(e / 2) * 32 + l * 2 + e % 2] = v
                        }
                    }
                }
            }
        }
        self.data = data
    }

    deinit { data.deallocate() }
}
