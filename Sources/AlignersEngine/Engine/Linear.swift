import Foundation
import Synchronization
import AlignersKernels

/// A weight matrix: quantized in place, plus a copy for the batched path made on first use
/// (interleaved for the VNNI kernels, or F32 for sgemm).
final class Linear: @unchecked Sendable {
    let q: QuantTensor
    private struct Copies {
        var dense: UnsafeMutablePointer<Float>?
        var interleaved: InterleavedWeights?
    }
    private let copies = Mutex(Copies())
    init(_ q: QuantTensor) { self.q = q }
    deinit { copies.withLock { $0.dense?.deallocate() } }

    func dense(_ pool: ComputePool) -> UnsafeMutablePointer<Float> {
        copies.withLock { c in
            if let d = c.dense { return d }
            let d = QuantKernels.dequantize(q, pool: pool)
            c.dense = d
            return d
        }
    }

    func interleaved(_ pool: ComputePool) -> InterleavedWeights {
        copies.withLock { c in
            if let w = c.interleaved { return w }
            let w = InterleavedWeights(q, pool: pool)
            c.interleaved = w
            return w
        }
    }
}

/// Products of activation rows with `Linear` weights, on the kernel the plan picks for the row
/// count (`KernelPlan.product`), split over the pool's threads.
struct LinearProducts {
    let pool: ComputePool
    let plan: KernelPlan
    /// The int16 activations the integer kernels read (kept by the caller between calls).
    let activations: Int16Activations

    /// Makes the copy the batched path reads (interleaved or F32) now rather than on first use.
    func prepare(_ l: Linear) {
        if plan.takesVNNI(l.q) { _ = l.interleaved(pool) } else if plan.allowDenseWeights { _ = l.dense(pool) }
    }

    /// out_i = W_i · x for each (W_i, out_i), over `rows` input rows (x: rows × W.cols, all W_i
    /// with the same column count); `accumulate` adds into out_i instead (the residual add fused
    /// into the product). With `swiglu`, specs are (gate, g), (up, u) and g becomes silu(g) ⊙ u,
    /// each thread finishing the rows it computed.
    func project(_ x: UnsafeMutablePointer<Float>, rows: Int, _ specs: [(Linear, UnsafeMutablePointer<Float>)],
                 accumulate: Bool = false, swiglu: Bool = false) {
        precondition(!swiglu || (specs.count == 2 && specs[0].0.q.rows == specs[1].0.q.rows && !accumulate))
        let pool = self.pool, n = pool.threads
        let product = plan.product(rows: rows, specs.map(\.0.q))
        if product == .sgemm {
            for (w, out) in specs {
                let dense = w.dense(pool)
                BLAS.gemmNT(m: rows, n: w.q.rows, k: w.q.cols, x: x, w: dense, y: out, beta: accumulate ? 1 : 0, pool: pool)
            }
            if swiglu {
                let width = specs[0].0.q.rows, g = specs[0].1, u = specs[1].1
                pool.parallelFor(rows) { rs in VectorMath.swiglu(g + rs.lowerBound * width, u + rs.lowerBound * width, count: rs.count * width) }
            }
            return
        }
        let acts = activations, integerDots = plan.integerDots
        if product != .floatRows {
            // Quantized once here, not once per thread and matrix.
            acts.reset(m: rows, k: specs[0].0.q.cols)
            if rows * acts.k >= 8192 { pool.parallelFor(rows) { acts.quantize(x, rows: $0) } } else { acts.quantize(x, rows: 0..<rows) }
        }
        let weights = product == .vnniGemm ? specs.map { $0.0.interleaved(pool) } : []
        pool.run { t in
            var span = 0..<0
            for (si, (w, out)) in specs.enumerated() {
                let units = (w.q.rows + 15) / 16
                let lo = min(w.q.rows, units * t / n * 16), hi = min(w.q.rows, units * (t + 1) / n * 16)
                span = lo..<hi
                if lo >= hi { continue }
                switch product {
                case .vnniGemm:
                    QuantKernels.gemm(weights[si], acts, y: out, ldy: w.q.rows, groups: lo / 16..<hi / 16, accumulate: accumulate)
                case .floatRows:
                    for i in 0..<rows {
                        if accumulate {
                            withUnsafeTemporaryAllocation(of: Float.self, capacity: w.q.rows) { tmp in
                                QuantKernels.matvec(w.q, x: x + i * w.q.cols, y: tmp.baseAddress!, rows: lo..<hi, integer: integerDots)
                                for r in lo..<hi { out[i * w.q.rows + r] += tmp[r] }
                            }
                        } else {
                            QuantKernels.matvec(w.q, x: x + i * w.q.cols, y: out + i * w.q.rows, rows: lo..<hi, integer: integerDots)
                        }
                    }
                case .integerRow:
                    QuantKernels.matvec(w.q, acts, y: out, rows: lo..<hi, accumulate: accumulate)
                case .integerSmall, .sgemm:
                    // Small batches: each weight block is decoded once per 16 input rows; weight rows
                    // go in tiles of ~16 KB so that they stay in L1 while every input chunk passes.
                    let tile = max(4, 16384 / w.q.rowBytes)
                    var r0 = lo
                    while r0 < hi {
                        let r1 = min(hi, r0 + tile)
                        var i0 = 0
                        while i0 < rows {
                            let m = min(16, rows - i0)
                            QuantKernels.matmulSmall(w.q, acts, firstRow: i0, m: m, y: out + i0 * w.q.rows, ldy: w.q.rows,
                                                     rows: r0..<r1, accumulate: accumulate)
                            i0 += m
                        }
                        r0 = r1
                    }
                }
            }
            if swiglu && !span.isEmpty {
                let width = specs[0].0.q.rows, g = specs[0].1, u = specs[1].1
                for i in 0..<rows { VectorMath.swiglu(g + i * width + span.lowerBound, u + i * width + span.lowerBound, count: span.count) }
            }
        }
    }
}

/// The encoder's dense layers on F32 weights [out × in]: y = x·Wᵀ + b, or with `accumulate`
/// y += x·Wᵀ + b (the residual add fused into the product; x must not be y).
enum DenseLayer {
    static func apply(_ x: UnsafePointer<Float>, rows n: Int, weight: [Float], bias: [Float], into y: UnsafeMutablePointer<Float>,
                      accumulate: Bool = false, pool: ComputePool) {
        let outputs = bias.count, inputs = weight.count / outputs
        bias.withUnsafeBufferPointer { bb in
            let b = bb.baseAddress!
            pool.parallelFor(n, granule: max(1, 65536 / outputs)) { rs in
                for r in rs {
                    let row = y + r * outputs
                    if accumulate { for k in 0..<outputs { row[k] += b[k] } } else { for k in 0..<outputs { row[k] = b[k] } }
                }
            }
        }
        weight.withUnsafeBufferPointer { w in
            BLAS.gemm(transposeA: false, transposeB: true, m: n, n: outputs, k: inputs, a: x, lda: inputs, b: w.baseAddress!, ldb: inputs,
                      c: y, ldc: outputs, beta: 1, pool: pool)
        }
    }
}
