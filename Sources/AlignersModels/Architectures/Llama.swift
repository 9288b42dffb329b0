import Foundation
import AlignersKernels

/// Llama-architecture decoder (SmolLM2, Llama 2/3, …) over GGUF weights read in place.
///
/// Per block: RMSNorm → Q/K/V projections → RoPE → grouped-query attention over the KV cache →
/// output projection + residual → RMSNorm → SwiGLU feed-forward + residual; then a final RMSNorm
/// and the output projection (the token embedding when the file has no `output.weight`).
///
/// RoPE rotates adjacent pairs (x[2i], x[2i+1]) by pos·base^(-2i/d): the GGUF converter permutes
/// the Q and K rows of Hugging Face checkpoints so that this "normal" rotation is the right one.
///
/// Matrix products: fewer than `batchThreshold` rows (decode) use the fused dequantize-dot
/// kernels on the quantized weights, split over the compute pool's threads. More rows (prompts,
/// batched decoding) use, where the CPU has AVX-512 VNNI, the interleaved int16 kernels
/// (`QuantKernels.gemm`, weights rearranged on first use: ~2.2 bytes per parameter), and
/// elsewhere OpenBLAS sgemm on F32 copies of the weights (≈ 4 bytes per parameter: ~540 MB for
/// SmolLM2-135M) unless `allowDenseWeights` is false.
public final class LlamaModel: CausalLM, @unchecked Sendable {
    public let config: DecoderConfig
    public let gguf: GGUFFile
    public let pool: ComputePool
    /// Row count from which matrix products take the batched path (VNNI gemm or sgemm). Measured
    /// crossovers on 2 Zen 4 cores: the VNNI gemm beats the int16 kernels (`QuantKernels.matmulSmall`)
    /// from 2 rows (188–196 against 159–180 tok/s at batch 2); sgemm beats them from ~32 rows
    /// (240–300 against 300–330 tok/s at 16–32). Env override: ALIGNERS_BATCH_THRESHOLD.
    public var batchThreshold = QuantKernels.vnni ? 2 : 32
    /// Whether batched products use the VNNI gemm (where `QuantKernels.vnni` allows it) or sgemm.
    public var useVNNI = QuantKernels.vnni
    public var allowDenseWeights = true
    /// Segments with at least this many new tokens compute attention through sgemm.
    public var blasAttentionThreshold = 16

    struct Block {
        let attnNorm: [Float]
        let ffnNorm: [Float]
        let wq, wk, wv, wo, gate, up, down: Linear
    }

    let blocks: [Block]
    let tokenEmbedding: QuantTensor
    let output: Linear
    let outputNorm: [Float]
    let invFreq: [Float]
    private let lock = NSLock()
    private let scratch = Scratch()
    private let int16 = Int16Activations()
    private let threadScratch: [Scratch]

    public convenience init(path: String, pool: ComputePool = .shared) throws {
        try self.init(gguf: GGUFFile(path: path), pool: pool)
    }

    public init(gguf: GGUFFile, pool: ComputePool = .shared) throws {
        self.gguf = gguf
        self.pool = pool
        threadScratch = (0..<pool.threads).map { _ in Scratch() }
        if let v = ProcessInfo.processInfo.environment["ALIGNERS_BATCH_THRESHOLD"], let t = Int(v), t > 0 { batchThreshold = t }
        var c = try DecoderConfig(gguf: gguf)
        func vector(_ name: String, _ n: Int) throws -> [Float] {
            let t = try gguf.tensor(name)
            guard t.rows * t.cols == n else { throw GGUFError.shapeMismatch(path: gguf.url.path, tensor: name, expected: [n], found: [t.cols, t.rows]) }
            var out = [Float](repeating: 0, count: n)
            out.withUnsafeMutableBufferPointer { QuantKernels.dequantizeRow(QuantTensor(type: t.type, rows: 1, cols: n, data: t.data, owner: t.owner), 0, into: $0.baseAddress!) }
            return out
        }
        func matrix(_ name: String, rows: Int, cols: Int) throws -> Linear {
            let t = try gguf.tensor(name)
            guard t.rows == rows, t.cols == cols else {
                throw GGUFError.shapeMismatch(path: gguf.url.path, tensor: name, expected: [cols, rows], found: [t.cols, t.rows])
            }
            guard cols % 32 == 0 || t.type == .f32 || t.type == .f16 else {
                throw DecoderError.shape("tensor \(name): \(cols) columns is not a multiple of the block size 32")
            }
            return Linear(t)
        }
        var bs: [Block] = []
        for i in 0..<c.layers {
            let p = "blk.\(i)."
            bs.append(Block(
                attnNorm: try vector(p + "attn_norm.weight", c.embedding),
                ffnNorm: try vector(p + "ffn_norm.weight", c.embedding),
                wq: try matrix(p + "attn_q.weight", rows: c.qDim, cols: c.embedding),
                wk: try matrix(p + "attn_k.weight", rows: c.kvDim, cols: c.embedding),
                wv: try matrix(p + "attn_v.weight", rows: c.kvDim, cols: c.embedding),
                wo: try matrix(p + "attn_output.weight", rows: c.embedding, cols: c.qDim),
                gate: try matrix(p + "ffn_gate.weight", rows: c.feedForward, cols: c.embedding),
                up: try matrix(p + "ffn_up.weight", rows: c.feedForward, cols: c.embedding),
                down: try matrix(p + "ffn_down.weight", rows: c.embedding, cols: c.feedForward)))
        }
        blocks = bs
        tokenEmbedding = try gguf.tensor("token_embd.weight")
        guard tokenEmbedding.cols == c.embedding else {
            throw GGUFError.shapeMismatch(path: gguf.url.path, tensor: "token_embd.weight", expected: [c.embedding, c.vocabulary],
                                          found: [tokenEmbedding.cols, tokenEmbedding.rows])
        }
        c.vocabulary = tokenEmbedding.rows
        config = c
        if gguf.tensorInfo("output.weight") != nil {
            output = try matrix("output.weight", rows: tokenEmbedding.rows, cols: c.embedding)
        } else {
            output = Linear(tokenEmbedding)
        }
        outputNorm = try vector("output_norm.weight", c.embedding)
        let half = c.headDim / 2
        invFreq = (0..<half).map { i in Float(pow(Double(c.ropeBase), -2.0 * Double(i) / Double(c.headDim))) }
    }

    /// Bytes of weights one decode step reads (all matrices + the embedding row).
    public var weightBytesPerToken: Int {
        blocks.reduce(0) { $0 + [$1.wq, $1.wk, $1.wv, $1.wo, $1.gate, $1.up, $1.down].reduce(0) { $0 + $1.q.byteCount } } + output.q.byteCount
    }

    /// Makes the weight copies the batched path uses (interleaved or F32) now rather than on first use.
    public func prepareBatchedWeights() {
        for l in blocks.flatMap({ [$0.wq, $0.wk, $0.wv, $0.wo, $0.gate, $0.up, $0.down] }) + [output] {
            if takesVNNI(l) { _ = l.interleaved(pool) } else if allowDenseWeights { _ = l.dense(pool) }
        }
    }

    // MARK: forward

    public func forward(_ segments: [DecoderSegment], logits: UnsafeMutablePointer<Float>) throws {
        lock.lock(); defer { lock.unlock() }
        let c = config
        var total = 0
        var seen = Set<ObjectIdentifier>()
        for s in segments {
            guard s.cache.kvDim == c.kvDim, s.cache.layers == c.layers else { throw DecoderError.shape("KV cache made for another model") }
            guard seen.insert(ObjectIdentifier(s.cache)).inserted else { throw DecoderError.shape("two segments share one KV cache") }
            guard s.cache.count + s.tokens.count <= s.cache.capacity else {
                throw DecoderError.contextFull(capacity: s.cache.capacity, have: s.cache.count, adding: s.tokens.count)
            }
            guard s.cache.count + s.tokens.count <= c.contextLength else {
                throw DecoderError.beyondModelContext(positions: s.cache.count + s.tokens.count, contextLength: c.contextLength)
            }
            for t in s.tokens where t < 0 || t >= c.vocabulary { throw DecoderError.tokenOutOfRange(t, vocabulary: c.vocabulary) }
            total += s.tokens.count
        }
        // Each adapter once per call, not once per segment (64 segments may share one).
        var checked = Set<ObjectIdentifier>()
        for a in segments.compactMap(\.adapter) where checked.insert(ObjectIdentifier(a)).inserted { try a.check(against: c) }
        if total == 0 { return }
        let T = total, d = c.embedding, qd = c.qDim, kvd = c.kvDim, ff = c.feedForward

        // Row bookkeeping.
        var positions = [Int](repeating: 0, count: T)
        var tokens = [Int](repeating: 0, count: T)
        var segStart: [Int] = []
        var r = 0
        for s in segments {
            segStart.append(r)
            for (i, t) in s.tokens.enumerated() { positions[r] = s.cache.count + i; tokens[r] = t; r += 1 }
        }

        // Activations live in a scratch arena kept between calls: fresh large allocations are
        // fresh pages, and zeroing them showed up in profiles.
        let sizes = [T * d, T * max(d, qd), T * qd, T * kvd, T * kvd, T * qd, T * ff, T * ff]
        let arena = scratch.reserve(sizes.reduce(0) { $0 + ($1 + 15) / 16 * 16 })
        var offsets: [UnsafeMutablePointer<Float>] = []
        var off = 0
        for n in sizes { offsets.append(arena + off); off += (n + 15) / 16 * 16 }
        let x = offsets[0], h = offsets[1], q = offsets[2], k = offsets[3], v = offsets[4], att = offsets[5], g = offsets[6], u = offsets[7]

        tokens.withUnsafeBufferPointer { tk in
            let emb = tokenEmbedding
            pool.parallelFor(T) { rows in for i in rows { QuantKernels.dequantizeRow(emb, tk[i], into: x + i * d) } }
        }

        // Rows served through a LoRA adapter, as runs of consecutive segments with the same one.
        var adapted: [(adapter: LoRAAdapter, rows: Range<Int>)] = []
        for (si, s) in segments.enumerated() {
            guard let a = s.adapter, !s.tokens.isEmpty else { continue }
            if let last = adapted.last, last.adapter === a, last.rows.upperBound == segStart[si] {
                adapted[adapted.count - 1].rows = last.rows.lowerBound..<segStart[si] + s.tokens.count
            } else {
                adapted.append((a, segStart[si]..<segStart[si] + s.tokens.count))
            }
        }
        func addLoRA(_ layer: Int, _ target: LoRATarget, x: UnsafeMutablePointer<Float>, into out: UnsafeMutablePointer<Float>) {
            let (inputs, outputs) = target.shape(c)
            for (a, rows) in adapted {
                a.add(layer: layer, target, x: x + rows.lowerBound * inputs, rows: rows.count, out: out + rows.lowerBound * outputs,
                      ldOut: outputs, pool: pool)
            }
        }

        let eps = c.rmsEpsilon
        for (li, b) in blocks.enumerated() {
            rmsNorm(x, b.attnNorm, eps, rows: T, into: h)
            project(h, rows: T, [(b.wq, q), (b.wk, k), (b.wv, v)])
            addLoRA(li, .q, x: h, into: q); addLoRA(li, .k, x: h, into: k); addLoRA(li, .v, x: h, into: v)
            positions.withUnsafeBufferPointer { pos in
                rope(q, heads: c.heads, rows: T, positions: pos.baseAddress!)
                rope(k, heads: c.kvHeads, rows: T, positions: pos.baseAddress!)
            }
            for (si, s) in segments.enumerated() {
                for i in 0..<s.tokens.count {
                    let row = segStart[si] + i, p = s.cache.count + i
                    s.cache.k(li, p).update(from: k + row * kvd, count: kvd)
                    s.cache.v(li, p).update(from: v + row * kvd, count: kvd)
                }
            }
            attention(layer: li, segments: segments, segStart: segStart, q: q, out: att)
            project(att, rows: T, [(b.wo, x)], accumulate: true)
            addLoRA(li, .o, x: att, into: x)
            rmsNorm(x, b.ffnNorm, eps, rows: T, into: h)
            if adapted.isEmpty {
                project(h, rows: T, [(b.gate, g), (b.up, u)], swiglu: true)
            } else {
                // The adapters' deltas go in before the activation, so SwiGLU is not fused here.
                project(h, rows: T, [(b.gate, g), (b.up, u)])
                addLoRA(li, .gate, x: h, into: g); addLoRA(li, .up, x: h, into: u)
                pool.parallelFor(T) { rs in VectorMath.swiglu(g + rs.lowerBound * ff, u + rs.lowerBound * ff, count: rs.count * ff) }
            }
            project(g, rows: T, [(b.down, x)], accumulate: true)
            addLoRA(li, .down, x: g, into: x)
        }

        // Final norm and logits for the segments that want them.
        var outRows: [Int] = []
        for (si, s) in segments.enumerated() where s.wantsLogits && !s.tokens.isEmpty { outRows.append(segStart[si] + s.tokens.count - 1) }
        if !outRows.isEmpty {
            let R = outRows.count
            for (j, row) in outRows.enumerated() { (h + j * d).update(from: x + row * d, count: d) }
            rmsNorm(h, outputNorm, eps, rows: R, into: h)
            project(h, rows: R, [(output, logits)])
        }
        for s in segments { s.cache.count += s.tokens.count }
    }

    // MARK: pieces

    /// Whether this matrix's batched products run on the VNNI gemm (else sgemm on F32 copies).
    func takesVNNI(_ l: Linear) -> Bool { useVNNI && QuantKernels.vnni && QuantKernels.interleavable(l.q) }

    /// out_i = W_i · x for each (W_i, out_i), over `rows` input rows (x: rows × W.cols, all W_i
    /// with the same column count); `accumulate` adds into out_i instead (the residual add fused
    /// into the product). With `swiglu`, specs are (gate, g), (up, u) and g becomes silu(g) ⊙ u,
    /// each thread finishing the rows it computed.
    func project(_ x: UnsafeMutablePointer<Float>, rows: Int, _ specs: [(Linear, UnsafeMutablePointer<Float>)],
                 accumulate: Bool = false, swiglu: Bool = false) {
        precondition(!swiglu || (specs.count == 2 && specs[0].0.q.rows == specs[1].0.q.rows && !accumulate))
        let n = pool.threads
        let batched = rows >= batchThreshold
        let interleaved = batched && specs.allSatisfy { takesVNNI($0.0) }
        if batched && !interleaved && allowDenseWeights {
            for (w, out) in specs {
                let dense = w.dense(pool)
                QuantKernels.sgemmNT(m: rows, n: w.q.rows, k: w.q.cols, x: x, w: dense, y: out, beta: accumulate ? 1 : 0, pool: pool)
            }
            if swiglu {
                let width = specs[0].0.q.rows, g = specs[0].1, u = specs[1].1
                pool.parallelFor(rows) { rs in VectorMath.swiglu(g + rs.lowerBound * width, u + rs.lowerBound * width, count: rs.count * width) }
            }
            return
        }
        let integer = specs.allSatisfy { QuantKernels.integerHandles($0.0.q.type) }
        let acts = int16
        if integer || interleaved {
            // Quantized once here, not once per thread and matrix.
            acts.reset(m: rows, k: specs[0].0.q.cols)
            if rows * acts.k >= 8192 { pool.parallelFor(rows) { acts.quantize(x, rows: $0) } } else { acts.quantize(x, rows: 0..<rows) }
        }
        let weights = interleaved ? specs.map { $0.0.interleaved(pool) } : []
        pool.run { t in
            var span = 0..<0
            for (si, (w, out)) in specs.enumerated() {
                let units = (w.q.rows + 15) / 16
                let lo = min(w.q.rows, units * t / n * 16), hi = min(w.q.rows, units * (t + 1) / n * 16)
                span = lo..<hi
                if lo >= hi { continue }
                if interleaved {
                    QuantKernels.gemm(weights[si], acts, y: out, ldy: w.q.rows, groups: lo / 16..<hi / 16, accumulate: accumulate)
                } else if !integer {
                    for i in 0..<rows {
                        if accumulate {
                            withUnsafeTemporaryAllocation(of: Float.self, capacity: w.q.rows) { tmp in
                                QuantKernels.matvec(w.q, x: x + i * w.q.cols, y: tmp.baseAddress!, rows: lo..<hi)
                                for r in lo..<hi { out[i * w.q.rows + r] += tmp[r] }
                            }
                        } else {
                            QuantKernels.matvec(w.q, x: x + i * w.q.cols, y: out + i * w.q.rows, rows: lo..<hi)
                        }
                    }
                } else if rows == 1 {
                    QuantKernels.matvec(w.q, acts, y: out, rows: lo..<hi, accumulate: accumulate)
                } else {
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

    func rmsNorm(_ x: UnsafeMutablePointer<Float>, _ w: [Float], _ eps: Float, rows: Int, into out: UnsafeMutablePointer<Float>) {
        let d = w.count
        w.withUnsafeBufferPointer { wp in
            for r in 0..<rows {
                let xr = x + r * d, o = out + r * d
                let ms = QuantKernels.dotF32(xr, xr, d) / Float(d)
                let scale = 1 / (ms + eps).squareRoot()
                for i in 0..<d { o[i] = xr[i] * scale * wp[i] }
            }
        }
    }

    func rope(_ x: UnsafeMutablePointer<Float>, heads: Int, rows: Int, positions: UnsafePointer<Int>) {
        let hd = config.headDim, half = hd / 2, width = heads * hd
        withUnsafeTemporaryAllocation(of: Float.self, capacity: hd) { cs in
            let cosv = cs.baseAddress!, sinv = cs.baseAddress! + half
            for r in 0..<rows {
                let p = Float(positions[r])
                for i in 0..<half {
                    let a = p * invFreq[i]
                    cosv[i] = cos(a); sinv[i] = sin(a)
                }
                let row = x + r * width
                for hh in 0..<heads {
                    let v = row + hh * hd
                    for i in 0..<half {
                        let a = v[2 * i], b = v[2 * i + 1]
                        v[2 * i] = a * cosv[i] - b * sinv[i]
                        v[2 * i + 1] = a * sinv[i] + b * cosv[i]
                    }
                }
            }
        }
    }

    func attention(layer: Int, segments: [DecoderSegment], segStart: [Int], q: UnsafeMutablePointer<Float>, out: UnsafeMutablePointer<Float>) {
        let c = config
        let hd = c.headDim, qd = c.qDim, kvd = c.kvDim, group = c.heads / c.kvHeads
        let scale = 1 / Float(hd).squareRoot()
        // Long segments (prompts): two sgemms per head, each split where the cache's shared
        // prefix ends (positions below P are read from the shared snapshot).
        var small: [(row: Int, pos: Int, seg: Int)] = []
        for (si, s) in segments.enumerated() {
            let n = s.tokens.count
            if n >= blasAttentionThreshold {
                let p0 = s.cache.count, L = p0 + n, r0 = segStart[si]
                let cache = s.cache, P = cache.sharedCount, shared = cache.shared
                pool.run { t in
                    let scores = threadScratch[t].reserve(n * L)
                    var hh = t
                    while hh < c.heads {
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
        // Decode rows, in chunks: rows whose caches share the same snapshot prefix (an aligner's
        // batch: every sample starts with the same principles and demonstrations) go together, up
        // to 32, so the prefix's keys and values are read once per chunk, not once per row; other
        // rows are chunks of one. Per (chunk, KV head), the `group` query heads of every row are
        // one matrix A (GQA: each cached row is read once for all of them):
        //   scores = A·K_sharedᵀ (one sgemm) beside each row's own A_r·K_ownᵀ, softmax per row,
        //   out = S_shared·V_shared (one sgemm) + each row's S_own·V_own.
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
        let items = chunks.count * c.kvHeads
        let nt = pool.threads
        let maxLen = small.map { $0.pos + 1 }.max()!
        // Heavier items (big chunks) first, dealt round-robin, so the threads finish together.
        let order = (0..<items).sorted { chunks[$0 / c.kvHeads].count > chunks[$1 / c.kvHeads].count }
        pool.run { t in
            let rowsMax = 32 * group
            let scratch = threadScratch[t].reserve(rowsMax * (maxLen + 2 * hd))
            let a = scratch, o = scratch + rowsMax * hd, scores = scratch + 2 * rowsMax * hd
            var w = t
            while w < items {
                let item = order[w]
                w += nt
                let chunk = chunks[item / c.kvHeads], kv = item % c.kvHeads
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

/// A growable buffer reused across forward calls.
final class Scratch: @unchecked Sendable {
    private var buffer: UnsafeMutablePointer<Float>?
    private var capacity = 0
    deinit { buffer?.deallocate() }
    func reserve(_ n: Int) -> UnsafeMutablePointer<Float> {
        if n > capacity || buffer == nil {
            buffer?.deallocate()
            capacity = max(n, capacity * 3 / 2)
            buffer = .allocate(capacity: capacity)
        }
        return buffer!
    }
}

/// A weight matrix: quantized in place, plus a copy for the batched path made on first use
/// (interleaved for the VNNI kernels, or F32 for sgemm).
final class Linear: @unchecked Sendable {
    let q: QuantTensor
    private var denseWeights: UnsafeMutablePointer<Float>?
    private var interleavedWeights: InterleavedWeights?
    private let lock = NSLock()
    init(_ q: QuantTensor) { self.q = q }
    deinit { denseWeights?.deallocate() }

    func dense(_ pool: ComputePool) -> UnsafeMutablePointer<Float> {
        lock.lock(); defer { lock.unlock() }
        if let d = denseWeights { return d }
        let d = QuantKernels.dequantize(q, pool: pool)
        denseWeights = d
        return d
    }

    func interleaved(_ pool: ComputePool) -> InterleavedWeights {
        lock.lock(); defer { lock.unlock() }
        if let w = interleavedWeights { return w }
        let w = InterleavedWeights(q, pool: pool)
        interleavedWeights = w
        return w
    }
}
