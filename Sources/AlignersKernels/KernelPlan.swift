/// Which kernel multiplies activation rows by quantized weight matrices: chosen by row count and
/// weight type, from settings made once in the `ComputeContext`.
///
/// Fewer than `batchThreshold` rows (decode) take the fused dequantize-dot kernels on the quantized
/// weights; more rows (prompts, batched decoding) take, where the CPU has AVX-512 VNNI, the
/// interleaved int16 gemm (weights rearranged on first use: ~2.2 bytes per parameter), and
/// elsewhere OpenBLAS sgemm on F32 copies of the weights (≈ 4 bytes per parameter: ~540 MB for
/// SmolLM2-135M) unless `allowDenseWeights` is false.
public struct KernelPlan: Sendable, Equatable {
    /// The kernels a product can take.
    public enum Product: Sendable, Equatable {
        /// Float dequantize-FMA dot products, one input row at a time (`QuantKernels.matvec(_:x:y:rows:integer:)`).
        case floatRows
        /// One input row on the integer kernels (int16 activations).
        case integerRow
        /// A few input rows on the integer kernels, each weight block decoded once per 16 rows (`QuantKernels.matmulSmall`).
        case integerSmall
        /// The interleaved int16 gemm (`QuantKernels.gemm`, AVX-512 VNNI).
        case vnniGemm
        /// OpenBLAS sgemm on F32 copies of the weights (`BLAS.gemmNT`).
        case sgemm
    }

    /// Quantized products multiply in integers (int16 activations); false: the float kernels.
    public var integerDots: Bool
    /// Whether batched products use the VNNI gemm (where the CPU has it) or sgemm.
    public var vnni: Bool
    /// Row count from which products take the batched path (VNNI gemm or sgemm). Measured
    /// crossovers on 2 Zen 4 cores: the VNNI gemm beats the int16 kernels (`QuantKernels.matmulSmall`)
    /// from 2 rows (188–196 against 159–180 tok/s at batch 2); sgemm beats them from ~32 rows
    /// (240–300 against 300–330 tok/s at 16–32).
    public var batchThreshold: Int
    /// Segments with at least this many new tokens compute attention through sgemm.
    public var blasAttentionThreshold: Int
    /// Whether the batched path may make F32 copies of the weights for sgemm.
    public var allowDenseWeights: Bool

    /// `vnni` is honoured only where the CPU has it; the batch threshold defaults to the crossover
    /// of the batched path in use (2 rows with VNNI, 32 without).
    public init(integerDots: Bool = true, vnni: Bool = true, batchThreshold: Int? = nil, blasAttentionThreshold: Int = 16,
                allowDenseWeights: Bool = true) {
        self.integerDots = integerDots
        self.vnni = vnni && QuantKernels.vnniSupported
        self.batchThreshold = batchThreshold ?? (self.vnni ? 2 : 32)
        self.blasAttentionThreshold = blasAttentionThreshold
        self.allowDenseWeights = allowDenseWeights
    }

    /// Whether this matrix's batched products run on the VNNI gemm (else sgemm on F32 copies).
    public func takesVNNI(_ w: QuantTensor) -> Bool { vnni && QuantKernels.vnniSupported && QuantKernels.interleavable(w) }

    /// The kernel for `rows` input rows times each of `weights` (one choice for all: they share the
    /// quantized activations).
    public func product(rows: Int, _ weights: [QuantTensor]) -> Product {
        let batched = rows >= batchThreshold
        if batched && weights.allSatisfy(takesVNNI) { return .vnniGemm }
        if batched && allowDenseWeights { return .sgemm }
        guard integerDots && weights.allSatisfy({ QuantKernels.integerHandles($0.type) }) else { return .floatRows }
        return rows == 1 ? .integerRow : .integerSmall
    }
}
