import CBLAS

/// Thin, typed entry points to OpenBLAS (row-major throughout).
public enum BLAS {
    /// C[m×n] = alpha · A[m×k] · B(k×n, or n×k when `transposeB`) + beta · C
    @inlinable
    public static func sgemm(
        m: Int, n: Int, k: Int,
        a: UnsafePointer<Float>, lda: Int,
        b: UnsafePointer<Float>, ldb: Int, transposeB: Bool,
        c: UnsafeMutablePointer<Float>, ldc: Int,
        alpha: Float = 1, beta: Float = 0
    ) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, transposeB ? CblasTrans : CblasNoTrans,
                    Int32(m), Int32(n), Int32(k), alpha, a, Int32(lda), b, Int32(ldb), beta, c, Int32(ldc))
    }

    /// The kernel set OpenBLAS runs ("Haswell", "SkylakeX", …): chosen from the CPU when it loads,
    /// or forced by `OPENBLAS_CORETYPE`. On Zen 4, SkylakeX's AVX-512 sgemm ran LoRA training 1.6×
    /// faster than Haswell's (BENCHMARKS.md "Training"); some machine images force Haswell.
    public static var coreName: String { openblas_get_corename().map { String(cString: $0) } ?? "unknown" }

    /// Sets the number of threads OpenBLAS uses.
    public static func setThreads(_ n: Int) { openblas_set_num_threads(Int32(n)) }
}
