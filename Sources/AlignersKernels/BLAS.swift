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

    /// The OpenBLAS kernel set this CPU should run, when OpenBLAS's own detection gets it wrong:
    /// Debian's OpenBLAS 0.3.21 takes Zen 4 for a Zen (and runs its AVX2 Haswell kernels), while its
    /// AVX-512 SkylakeX kernels ran LoRA training 1.6× faster there (scripts/bench/train_bench.sh).
    /// OpenBLAS reads `OPENBLAS_CORETYPE` once, when it is loaded, so the executable sets it and
    /// restarts itself (`Aligners.main`). Nil when the detection is fine (no AVX-512).
    public static var preferredCoreType: String? {
        ["avx512f", "avx512dq", "avx512cd", "avx512bw", "avx512vl"].allSatisfy(QuantKernels.cpuFlags.contains) ? "SKYLAKEX" : nil
    }

    /// Sets the number of threads OpenBLAS uses.
    public static func setThreads(_ n: Int) { openblas_set_num_threads(Int32(n)) }
}
