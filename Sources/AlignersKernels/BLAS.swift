import CBLAS

/// Thin, typed entry points to OpenBLAS (row-major throughout): the only place that calls it.
///
/// OpenBLAS runs single-threaded (`ComputeContext` fixes that once per process): the `pool:`
/// variants split a product over a `ComputePool`'s threads, each calling OpenBLAS on its slice.
public enum BLAS {
    /// C[m×n] = alpha · op(A) · op(B) + beta · C with both transposes selectable.
    @inlinable
    public static func gemm(transposeA: Bool, transposeB: Bool, m: Int, n: Int, k: Int,
                            a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
                            c: UnsafeMutablePointer<Float>, ldc: Int, alpha: Float = 1, beta: Float = 0) {
        cblas_sgemm(CblasRowMajor, transposeA ? CblasTrans : CblasNoTrans, transposeB ? CblasTrans : CblasNoTrans,
                    Int32(m), Int32(n), Int32(k), alpha, a, Int32(lda), b, Int32(ldb), beta, c, Int32(ldc))
    }

    /// `gemm` split over the pool's threads: over C's columns when there are enough of them, else
    /// over its rows (the split needs no copy for either transpose).
    public static func gemm(transposeA: Bool, transposeB: Bool, m: Int, n: Int, k: Int,
                            a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
                            c: UnsafeMutablePointer<Float>, ldc: Int, alpha: Float = 1, beta: Float = 0, pool: ComputePool) {
        if m == 0 || n == 0 { return }
        let work = m * n * max(k, 1)
        if pool.threads == 1 || work < 1 << 16 {
            gemm(transposeA: transposeA, transposeB: transposeB, m: m, n: n, k: k, a: a, lda: lda, b: b, ldb: ldb,
                 c: c, ldc: ldc, alpha: alpha, beta: beta)
            return
        }
        if n >= 64 * pool.threads || n >= m {
            pool.parallelFor(n, granule: n >= 64 * pool.threads ? 16 : 1) { cols in
                let bs = transposeB ? b + cols.lowerBound * ldb : b + cols.lowerBound
                gemm(transposeA: transposeA, transposeB: transposeB, m: m, n: cols.count, k: k, a: a, lda: lda, b: bs, ldb: ldb,
                     c: c + cols.lowerBound, ldc: ldc, alpha: alpha, beta: beta)
            }
        } else {
            pool.parallelFor(m, granule: 4) { rows in
                let as_ = transposeA ? a + rows.lowerBound : a + rows.lowerBound * lda
                gemm(transposeA: transposeA, transposeB: transposeB, m: rows.count, n: n, k: k, a: as_, lda: lda, b: b, ldb: ldb,
                     c: c + rows.lowerBound * ldc, ldc: ldc, alpha: alpha, beta: beta)
            }
        }
    }

    /// Y[m×n] = X[m×k] · Wᵀ (+ beta · Y) for F32 weights W[n×k]: the decoder's batched products on
    /// F32 copies of its weights, always split over the n output columns in slices of 64.
    public static func gemmNT(m: Int, n: Int, k: Int, x: UnsafePointer<Float>, w: UnsafePointer<Float>,
                              y: UnsafeMutablePointer<Float>, ldy: Int? = nil, beta: Float = 0, pool: ComputePool) {
        let ldc = ldy ?? n
        pool.parallelFor(n, granule: 64) { cols in
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Int32(m), Int32(cols.count), Int32(k),
                        1, x, Int32(k), w + cols.lowerBound * k, Int32(k), beta, y + cols.lowerBound, Int32(ldc))
        }
    }

    /// The kernel set OpenBLAS runs ("Haswell", "SkylakeX", …): chosen from the CPU when it loads,
    /// or forced by `OPENBLAS_CORETYPE`. On Zen 4, SkylakeX's AVX-512 sgemm ran LoRA training 1.6×
    /// faster than Haswell's (BENCHMARKS.md "Training"); some machine images force Haswell.
    public static var coreName: String { openblas_get_corename().map { String(cString: $0) } ?? "unknown" }

    /// Sets the number of threads OpenBLAS uses (process-wide; `ComputeContext` calls it).
    static func setThreads(_ n: Int) { openblas_set_num_threads(Int32(n)) }
}
