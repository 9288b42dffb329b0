import AlignersKernels

/// Causal grouped-query attention of a ragged batch's new rows over their sequences' KV caches
/// (`heads` query heads share each of `kvHeads` key/value heads), on the pool's threads.
///
/// Segments with at least `blasThreshold` new tokens (prompts) take two sgemms per head; the
/// other rows (decode) go in chunks that read a shared cache prefix once (see `decodeRows`).
final class CausalAttention: @unchecked Sendable {
    let heads, kvHeads, headDim: Int
    private let threadScratch: [Scratch]

    init(heads: Int, kvHeads: Int, headDim: Int, threads: Int) {
        self.heads = heads; self.kvHeads = kvHeads; self.headDim = headDim
        threadScratch = (0..<threads).map { _ in Scratch() }
    }

    var qDim: Int { heads * headDim }
    var kvDim: Int { kvHeads * headDim }

    /// Writes the batch's keys and values (k, v: one row per new token) at their positions in each
    /// segment's cache.
    func store(layer: Int, _ batch: DecoderBatch, k: UnsafePointer<Float>, v: UnsafePointer<Float>) {
        let kvd = kvDim, segments = batch.segments, segStart = batch.segStart
        for (si, s) in segments.enumerated() {
            for i in 0..<s.tokens.count {
                let row = segStart[si] + i, p = s.cache.count + i
                s.cache.k(layer, p).update(from: k + row * kvd, count: kvd)
                s.cache.v(layer, p).update(from: v + row * kvd, count: kvd)
            }
        }
    }

    /// out = softmax(q·Kᵀ/√d, causal)·V per head, for every row of the batch (q, out: one row per
    /// new token).
    func callAsFunction(layer: Int, _ batch: DecoderBatch, q: UnsafeMutablePointer<Float>, out: UnsafeMutablePointer<Float>,
                        pool: ComputePool, blasThreshold: Int) {
        let segments = batch.segments, segStart = batch.segStart
        let hd = headDim, qd = qDim, kvd = kvDim, group = heads / kvHeads, heads = self.heads
        let scale = 1 / Float(hd).squareRoot()
        // Long segments (prompts): two sgemms per head, each split where the cache's shared
        // prefix ends (positions below P are read from the shared snapshot).
        var small: [(row: Int, pos: Int, seg: Int)] = []
        for (si, s) in segments.enumerated() {
            let n = s.tokens.count
            if n >= blasThreshold {
                let p0 = s.cache.count, L = p0 + n, r0 = segStart[si]
                let cache = s.cache, P = cache.sharedCount, shared = cache.shared
                pool.run { t in
                    let scores = threadScratch[t].reserve(n * L)
                    var hh = t
                    while hh < heads {
                        let kv = hh / group
                        let qh = q + r0 * qd + hh * hd, oh = out + r0 * qd + hh * hd
                        if let shared { BLAS.gemm(transposeA: false, transposeB: true, m: n, n: P, k: hd, a: qh, lda: qd,
                            b: shared.k(layer, 0) + kv * hd, ldb: kvd, c: scores, ldc: L, alpha: scale) }
                        BLAS.gemm(transposeA: false, transposeB: true, m: n, n: L - P, k: hd, a: qh, lda: qd,
                            b: cache.k(layer, P) + kv * hd, ldb: kvd, c: scores + P, ldc: L, alpha: scale)
                        for i in 0..<n {
                            let srow = scores + i * L
                            let valid = p0 + i + 1
                            VectorMath.softmax(srow, valid)
                            for j in valid..<L { srow[j] = 0 }
                        }
                        if let shared { BLAS.gemm(transposeA: false, transposeB: false, m: n, n: hd, k: P, a: scores, lda: L,
                            b: shared.v(layer, 0) + kv * hd, ldb: kvd, c: oh, ldc: qd) }
                        BLAS.gemm(transposeA: false, transposeB: false, m: n, n: hd, k: L - P, a: scores + P, lda: L,
                            b: cache.v(layer, P) + kv * hd, ldb: kvd, c: oh, ldc: qd, beta: P > 0 ? 1 : 0)
                        hh += pool.threads
                    }
                }
            } else {
                for i in 0..<n { small.append((segStart[si] + i, s.cache.count + i, si)) }
            }
        }
        if small.isEmpty { return }
        decodeRows(small, layer: layer, segments: segments, q: q, out: out, pool: pool)
    }

    /// Decode rows, in chunks: rows whose caches share the same snapshot prefix (an aligner's
    /// batch: every sample starts with the same principles and demonstrations) go together, up
    /// to 32, so the prefix's keys and values are read once per chunk, not once per row; other
    /// rows are chunks of one. Per (chunk, KV head), the `group` query heads of every row are
    /// one matrix A (GQA: each cached row is read once for all of them):
    ///   scores = A·K_sharedᵀ (one sgemm) beside each row's own A_r·K_ownᵀ, softmax per row,
    ///   out = S_shared·V_shared (one sgemm) + each row's S_own·V_own.
    private func decodeRows(_ small: [(row: Int, pos: Int, seg: Int)], layer: Int, segments: [DecoderSegment],
                            q: UnsafeMutablePointer<Float>, out: UnsafeMutablePointer<Float>, pool: ComputePool) {
        let hd = headDim, qd = qDim, kvd = kvDim, group = heads / kvHeads, kvHeads = self.kvHeads
        let scale = 1 / Float(hd).squareRoot()
        var chunks: [[Int]] = []   // indices into `small`
        var open: [ObjectIdentifier: Int] = [:]   // snapshot+length → chunk being filled
        for (i, r) in small.enumerated() {
            let cache = segments[r.seg].cache
            guard let shared = cache.shared else { chunks.append([i]); continue }
            let key = ObjectIdentifier(shared)
            if let ci = open[key], chunks[ci].count < 32, segments[small[chunks[ci][0]].seg].cache.sharedCount == cache.sharedCount {
                chunks[ci].append(i)
            } else {
                open[key] = chunks.count
                chunks.append([i])
            }
        }
        let items = chunks.count * kvHeads
        let nt = pool.threads
        let maxLen = small.map { $0.pos + 1 }.max()!
        // Heavier items (big chunks) first, dealt round-robin, so the threads finish together.
        let order = (0..<items).sorted { chunks[$0 / kvHeads].count > chunks[$1 / kvHeads].count }
        pool.run { t in
            let rowsMax = 32 * group
            let scratch = threadScratch[t].reserve(rowsMax * (maxLen + 2 * hd))
            let a = scratch, o = scratch + rowsMax * hd, scores = scratch + 2 * rowsMax * hd
            var w = t
            while w < items {
                let item = order[w]
                w += nt
                let chunk = chunks[item / kvHeads], kv = item % kvHeads
                let first = segments[small[chunk[0]].seg].cache
                let shared = first.shared, P = first.sharedCount
                let m = chunk.count * group
                for (j, i) in chunk.enumerated() {
                    (a + j * group * hd).update(from: q + small[i].row * qd + kv * group * hd, count: group * hd)
                }
                if let shared { BLAS.gemm(transposeA: false, transposeB: true, m: m, n: P, k: hd, a: a, lda: hd,
                    b: shared.k(layer, 0) + kv * hd, ldb: kvd, c: scores, ldc: maxLen, alpha: scale) }
                for (j, i) in chunk.enumerated() {
                    let cache = segments[small[i].seg].cache, n = small[i].pos + 1
                    let sj = scores + j * group * maxLen
                    BLAS.gemm(transposeA: false, transposeB: true, m: group, n: n - P, k: hd, a: a + j * group * hd, lda: hd,
                        b: cache.k(layer, P) + kv * hd, ldb: kvd, c: sj + P, ldc: maxLen, alpha: scale)
                    for g in 0..<group { VectorMath.softmax(sj + g * maxLen, n) }
                }
                if let shared { BLAS.gemm(transposeA: false, transposeB: false, m: m, n: hd, k: P, a: scores, lda: maxLen,
                    b: shared.v(layer, 0) + kv * hd, ldb: kvd, c: o, ldc: hd) }
                for (j, i) in chunk.enumerated() {
                    let cache = segments[small[i].seg].cache, n = small[i].pos + 1
                    BLAS.gemm(transposeA: false, transposeB: false, m: group, n: hd, k: n - P, a: scores + j * group * maxLen + P, lda: maxLen,
                        b: cache.v(layer, P) + kv * hd, ldb: kvd, c: o + j * group * hd, ldc: hd, beta: P > 0 ? 1 : 0)
                    (out + small[i].row * qd + kv * group * hd).update(from: o + j * group * hd, count: group * hd)
                }
            }
        }
    }
}
