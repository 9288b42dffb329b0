#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import AlignersVNNI

/// Run-time choice of the AVX-512 VNNI kernels (module `AlignersVNNI`, compiled for Zen 4).
///
/// `QuantKernels.vnni` is true when /proc/cpuinfo lists every feature the znver4 target may use
/// and `ALIGNERS_VNNI=1` is set; otherwise the portable int16 kernels run. With VNNI, activations
/// are quantized to int16 once per matrix product (not once per thread and row range), every
/// weight block is multiplied with `vpdpwssd`, and several activation rows share each decoded
/// weight block (register tiles of up to 8 rows), which replaces sgemm for batched decoding.
extension QuantKernels {
    /// Feature flags (as /proc/cpuinfo spells them) that code compiled with `-target-cpu znver4` may use.
    static let znver4Flags = ["avx2", "fma", "f16c", "bmi1", "bmi2", "avx512f", "avx512dq", "avx512cd", "avx512bw", "avx512vl",
                              "avx512ifma", "avx512vbmi", "avx512_vbmi2", "avx512_vnni", "avx512_bitalg", "avx512_vpopcntdq",
                              "avx512_bf16", "gfni", "vaes", "vpclmulqdq"]

    /// Whether this CPU runs the VNNI kernels.
    public static let vnniSupported: Bool = {
        #if arch(x86_64) && os(Linux)
        guard let f = fopen("/proc/cpuinfo", "r") else { return false }
        defer { fclose(f) }
        var line: UnsafeMutablePointer<CChar>?
        var cap = 0
        defer { free(line) }
        while getline(&line, &cap, f) > 0 {
            let s = String(cString: line!)
            if s.hasPrefix("flags") {
                let have = Set(s.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\n" || $0 == ":" }).map(String.init))
                return znver4Flags.allSatisfy(have.contains)
            }
        }
        return false
        #else
        return false
        #endif
    }()

    /// Whether the decoder uses the VNNI kernels (settable for tests and comparisons). Opt-in with
    /// `ALIGNERS_VNNI=1`: on a loaded machine they measured slower than the int16 kernels + sgemm
    /// (BENCHMARKS.md, Decoder), pending a quiet-machine comparison.
    nonisolated(unsafe) public static var vnni: Bool = vnniSupported && getenv("ALIGNERS_VNNI").map { String(cString: $0) == "1" } == true

    /// Whether `gemm` handles this weight type.
    public static func vnniHandles(_ t: GGMLType) -> Bool { t == .q4_1 || t == .q8_0 }

    /// Y[i, r] = W[r,:]·X[i,:] for r in `rows`, every row i of `a`; Y[i, r] at y[i·ldy + r].
    public static func gemm(_ w: QuantTensor, _ a: QuantizedActivations, y: UnsafeMutablePointer<Float>, ldy: Int, rows: Range<Int>) {
        #if arch(x86_64)
        precondition(a.k == w.cols)
        switch w.type {
        case .q4_1:
            VNNI.gemmQ4_1(w.data, rowBytes: w.rowBytes, nb: w.cols / 32, rows: rows, a.acts(), y, ldy: ldy)
        case .q8_0:
            VNNI.gemmQ8_0(w.data, rowBytes: w.rowBytes, nb: w.cols / 32, rows: rows, a.acts(), y, ldy: ldy)
        default:
            fatalError("QuantKernels.gemm: unsupported type \(w.type.name)")
        }
        #else
        fatalError("QuantKernels.gemm: VNNI kernels need x86-64")
        #endif
    }
}

/// Int16-quantized activation rows for `QuantKernels.gemm` (buffers reused between calls).
public final class QuantizedActivations: @unchecked Sendable {
    public private(set) var m = 0
    public private(set) var k = 0
    private var capacity = 0
    private var q: UnsafeMutableRawPointer?
    private var scales: UnsafeMutablePointer<Float>?
    private var sums: UnsafeMutablePointer<Float>?

    public init() {}
    deinit { q?.deallocate(); scales?.deallocate(); sums?.deallocate() }

    /// Sizes the buffers for m rows of k elements (k a multiple of 32).
    public func reset(m: Int, k: Int) {
        precondition(k % 32 == 0, "QuantizedActivations: k must be a multiple of 32")
        self.m = m; self.k = k
        let need = m * k * 2
        if need > capacity {
            q?.deallocate(); scales?.deallocate(); sums?.deallocate()
            capacity = max(need, capacity * 3 / 2)
            q = .allocate(byteCount: capacity, alignment: 64)
            scales = .allocate(capacity: capacity / 4)
            sums = .allocate(capacity: capacity / 4)
        }
    }

    /// Quantizes rows `rows` of x (m × k floats); call `reset` first. Rows may be split over threads.
    public func quantize(_ x: UnsafePointer<Float>, rows: Range<Int>) {
        #if arch(x86_64)
        VNNI.quantize(x, k: k, rows: rows, q: q!, scales: scales!, sums: sums!)
        #endif
    }

    #if arch(x86_64)
    func acts() -> Acts { Acts(m: m, nb: k / 32, q: q!, scales: scales!, sums: sums!) }
    #endif
}
