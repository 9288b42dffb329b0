import Foundation
import AlignersKernels

/// Hyper-parameters of a BERT encoder (`config.json`).
public struct BERTConfig: Sendable, Equatable, Codable {
    public var vocabSize = 30522
    public var hiddenSize = 384
    public var numHiddenLayers = 6
    public var numAttentionHeads = 12
    public var intermediateSize = 1536
    public var maxPositionEmbeddings = 512
    public var typeVocabSize = 2
    public var layerNormEps: Float = 1e-12
    public var hiddenAct = "gelu"

    enum CodingKeys: String, CodingKey {
        case vocabSize = "vocab_size", hiddenSize = "hidden_size", numHiddenLayers = "num_hidden_layers"
        case numAttentionHeads = "num_attention_heads", intermediateSize = "intermediate_size"
        case maxPositionEmbeddings = "max_position_embeddings", typeVocabSize = "type_vocab_size"
        case layerNormEps = "layer_norm_eps", hiddenAct = "hidden_act"
    }

    public init() {}

    /// sentence-transformers/all-MiniLM-L6-v2.
    public static let miniLML6 = BERTConfig()

    public static func load(_ url: URL) throws -> BERTConfig {
        do { return try JSONDecoder().decode(BERTConfig.self, from: Data(contentsOf: url)) } catch {
            throw BERTError(description: "\(url.path): cannot read BERT config: \(error)")
        }
    }
}

public struct BERTError: Error, CustomStringConvertible {
    public let description: String
    public init(description: String) { self.description = description }
}

/// A BERT encoder (post-LayerNorm, absolute positions, erf GELU) running on OpenBLAS, with
/// sentence-transformers pooling (mean over real tokens, then L2 normalisation).
///
/// Batches are packed: the sequences of a batch are laid end to end (no padding rows), the dense
/// layers run as one sgemm over all tokens, and attention runs per sequence and head, spread over
/// the cores. This is what "pad to the longest + attention mask" computes, without the wasted rows.
/// All parallel work runs on `pool` (OpenBLAS stays single-threaded; the process-wide thread
/// count is never toggled, so a decoder or trainer in the same process is not disturbed).
public final class BERTEncoder: @unchecked Sendable {
    public let config: BERTConfig
    public let wordEmb, posEmb, typeEmb, embLNg, embLNb: [Float]
    /// One transformer block's weights; matrices are [out × in] as in the checkpoint, q|k|v stacked.
    public struct Layer: Sendable {
        public var wqkv, bqkv, wo, bo, ln1g, ln1b, w1, b1, w2, b2, ln2g, ln2b: [Float]
    }
    public let layers: [Layer]
    /// Where the products, attention and element-wise stages run.
    public let pool: ComputePool

    /// Loads weights from a safetensors file, checking every tensor's dtype and shape.
    public init(weights file: SafetensorsFile, config: BERTConfig = .miniLML6, pool: ComputePool) throws {
        guard config.hiddenAct == "gelu" else {
            throw BERTError(description: "\(file.path): hidden_act \(config.hiddenAct) is not supported (gelu only)")
        }
        guard config.hiddenSize % config.numAttentionHeads == 0 else {
            throw BERTError(description: "\(file.path): hidden size not divisible by heads")
        }
        self.config = config
        self.pool = pool
        let h = config.hiddenSize, f = config.intermediateSize
        let prefix = file.tensors["embeddings.word_embeddings.weight"] == nil
            && file.tensors["bert.embeddings.word_embeddings.weight"] != nil ? "bert." : ""
        func t(_ name: String, _ shape: [Int]) throws -> [Float] {
            try file.check(prefix + name, dtype: .f32, shape: shape)
            return try file.floats(prefix + name)
        }
        wordEmb = try t("embeddings.word_embeddings.weight", [config.vocabSize, h])
        posEmb = try t("embeddings.position_embeddings.weight", [config.maxPositionEmbeddings, h])
        typeEmb = try t("embeddings.token_type_embeddings.weight", [config.typeVocabSize, h])
        embLNg = try t("embeddings.LayerNorm.weight", [h])
        embLNb = try t("embeddings.LayerNorm.bias", [h])
        var layers: [Layer] = []
        for l in 0..<config.numHiddenLayers {
            let p = "encoder.layer.\(l)."
            let wq = try t(p + "attention.self.query.weight", [h, h])
            let wk = try t(p + "attention.self.key.weight", [h, h])
            let wv = try t(p + "attention.self.value.weight", [h, h])
            let bq = try t(p + "attention.self.query.bias", [h])
            let bk = try t(p + "attention.self.key.bias", [h])
            let bv = try t(p + "attention.self.value.bias", [h])
            layers.append(Layer(
                wqkv: wq + wk + wv, bqkv: bq + bk + bv,
                wo: try t(p + "attention.output.dense.weight", [h, h]),
                bo: try t(p + "attention.output.dense.bias", [h]),
                ln1g: try t(p + "attention.output.LayerNorm.weight", [h]),
                ln1b: try t(p + "attention.output.LayerNorm.bias", [h]),
                w1: try t(p + "intermediate.dense.weight", [f, h]),
                b1: try t(p + "intermediate.dense.bias", [f]),
                w2: try t(p + "output.dense.weight", [h, f]),
                b2: try t(p + "output.dense.bias", [h]),
                ln2g: try t(p + "output.LayerNorm.weight", [h]),
                ln2b: try t(p + "output.LayerNorm.bias", [h])))
        }
        self.layers = layers
    }

    /// The same encoder with other block weights (an adapter merged in); the embeddings are shared.
    public init(_ base: BERTEncoder, layers: [Layer]) {
        config = base.config
        wordEmb = base.wordEmb; posEmb = base.posEmb; typeEmb = base.typeEmb; embLNg = base.embLNg; embLNb = base.embLNb
        self.layers = layers
        pool = base.pool
    }

    /// Loads `model.safetensors` and `config.json` from a model directory.
    public convenience init(modelDirectory dir: URL, pool: ComputePool) throws {
        let configURL = dir.appendingPathComponent("config.json")
        let config = FileManager.default.fileExists(atPath: configURL.path) ? try BERTConfig.load(configURL) : .miniLML6
        let file = try SafetensorsFile(path: dir.appendingPathComponent("model.safetensors").path)
        try self.init(weights: file, config: config, pool: pool)
    }

    /// Last hidden states of each sequence, packed: row `offsets[i] + t` is token `t` of sequence
    /// `i`; `offsets` has `batch.count + 1` entries. `observe(layer, states)` (when given) sees the packed
    /// hidden states after the embeddings (layer 0) and after each transformer layer (1...numHiddenLayers).
    public func hiddenStates(_ batch: [BertEncoding],
                             observe: ((Int, UnsafePointer<Float>) -> Void)? = nil) throws -> (states: [Float], offsets: [Int]) {
        let h = config.hiddenSize, f = config.intermediateSize
        var offsets = [0]
        for e in batch {
            guard e.ids.count == e.typeIds.count else { throw BERTError(description: "ids and type ids differ in length") }
            guard e.ids.count <= config.maxPositionEmbeddings else {
                throw BERTError(description: "sequence of \(e.ids.count) tokens exceeds \(config.maxPositionEmbeddings) positions")
            }
            for id in e.ids where id < 0 || Int(id) >= config.vocabSize {
                throw BERTError(description: "token id \(id) outside the vocabulary")
            }
            for t in e.typeIds where t < 0 || Int(t) >= config.typeVocabSize {
                throw BERTError(description: "token type id \(t) out of range")
            }
            offsets.append(offsets.last! + e.ids.count)
        }
        let n = offsets.last!
        if n == 0 { return ([], offsets) }
        var x = [Float](repeating: 0, count: n * h)
        var qkv = [Float](repeating: 0, count: n * 3 * h)
        var ctx = [Float](repeating: 0, count: n * h)
        var ff = [Float](repeating: 0, count: n * f)
        let maxLen = batch.map(\.ids.count).max() ?? 0
        let heads = config.numAttentionHeads, hd = h / heads
        let scale = 1 / Float(hd).squareRoot()
        let eps = config.layerNormEps
        let pool = self.pool

        // Embeddings + LayerNorm.
        x.withUnsafeMutableBufferPointer { xb in
            let xp = xb.baseAddress!
            wordEmb.withUnsafeBufferPointer { we in
            posEmb.withUnsafeBufferPointer { pe in
            typeEmb.withUnsafeBufferPointer { te in
                for (i, e) in batch.enumerated() {
                    for t in 0..<e.ids.count {
                        let row = xp + (offsets[i] + t) * h
                        let w = we.baseAddress! + Int(e.ids[t]) * h
                        let p = pe.baseAddress! + t * h
                        let ty = te.baseAddress! + Int(e.typeIds[t]) * h
                        for c in 0..<h { row[c] = w[c] + p[c] + ty[c] }
                    }
                }
            }}}
            Dense.layerNorm(xp, rows: n, dim: h, gamma: embLNg, beta: embLNb, eps: eps)
            observe?(0, xp)
        }

        // Attention work items: (sequence, head), spread over threads.
        let items = batch.indices.flatMap { i in (0..<heads).map { (i, $0) } }

        for (li, L) in layers.enumerated() {
            x.withUnsafeMutableBufferPointer { xb in
            qkv.withUnsafeMutableBufferPointer { qb in
            ctx.withUnsafeMutableBufferPointer { cb in
            ff.withUnsafeMutableBufferPointer { fb in
                let xp = xb.baseAddress!, qp = qb.baseAddress!, cp = cb.baseAddress!, fp = fb.baseAddress!
                // qkv = x · Wqkv^T + b
                DenseLayer.apply(xp, rows: n, weight: L.wqkv, bias: L.bqkv, into: qp, pool: pool)
                // Self-attention per sequence and head.
                let qkvp = UnsafePointer(qp)
                // Small per-head products, each on one thread; the threads share out (sequence, head).
                pool.parallelFor(items.count) { range in
                    let scores = UnsafeMutablePointer<Float>.allocate(capacity: maxLen * maxLen)
                    let sums = UnsafeMutablePointer<Float>.allocate(capacity: maxLen)
                    defer { scores.deallocate(); sums.deallocate() }
                    for it in range {
                        let (s, head) = items[it]
                        let len = offsets[s + 1] - offsets[s]
                        let base = qkvp + offsets[s] * 3 * h + head * hd
                        BLAS.gemm(transposeA: false, transposeB: true, m: len, n: len, k: hd, a: base, lda: 3 * h, b: base + h, ldb: 3 * h,
                                  c: scores, ldc: len, alpha: scale)
                        // softmax(S)·V = (e^S·V) / Σ e^S: divide the hd-wide output rows, not the len-wide ones.
                        for r in 0..<len { sums[r] = VectorMath.expShifted(scores + r * len, len).sum }
                        let out = cp + offsets[s] * h + head * hd
                        BLAS.gemm(transposeA: false, transposeB: false, m: len, n: hd, k: len, a: scores, lda: len, b: base + 2 * h, ldb: 3 * h,
                                  c: out, ldc: h)
                        for r in 0..<len {
                            let inv = 1 / sums[r], row = out + r * h
                            for c in 0..<hd { row[c] *= inv }
                        }
                    }
                }
                // x = LN(ctx · Wo^T + bo + x)
                DenseLayer.apply(cp, rows: n, weight: L.wo, bias: L.bo, into: xp, accumulate: true, pool: pool)
                Norms.layer(xp, rows: n, dim: h, gamma: L.ln1g, beta: L.ln1b, eps: eps, pool: pool)
                // ff = gelu(x · W1^T + b1)
                DenseLayer.apply(xp, rows: n, weight: L.w1, bias: L.b1, into: fp, pool: pool)
                pool.parallelFor(n, granule: 8) { rs in Dense.geluErf(fp + rs.lowerBound * f, count: rs.count * f) }
                // x = LN(ff · W2^T + b2 + x)
                DenseLayer.apply(fp, rows: n, weight: L.w2, bias: L.b2, into: xp, accumulate: true, pool: pool)
                Norms.layer(xp, rows: n, dim: h, gamma: L.ln2g, beta: L.ln2b, eps: eps, pool: pool)
                observe?(li + 1, xp)
            }}}}
        }
        return (x, offsets)
    }

    /// Mean-pooled, L2-normalised embeddings (sentence-transformers), one per input, for one batch.
    public func embedBatch(_ batch: [BertEncoding]) throws -> [[Float]] {
        let (states, offsets) = try hiddenStates(batch)
        return states.withUnsafeBufferPointer { s in
            (0..<batch.count).map { Self.meanNormalised(s.baseAddress!, rows: offsets[$0]..<offsets[$0 + 1], hidden: config.hiddenSize) }
        }
    }

    /// sentence-transformers' pooling: the mean of the rows, L2-normalised (zeros for no rows).
    static func meanNormalised(_ states: UnsafePointer<Float>, rows: Range<Int>, hidden h: Int) -> [Float] {
        var e = [Float](repeating: 0, count: h)
        if rows.isEmpty { return e }
        for t in rows { for c in 0..<h { e[c] += states[t * h + c] } }
        var norm: Float = 0
        for c in 0..<h { e[c] /= Float(rows.count); norm += e[c] * e[c] }
        let inv = 1 / Swift.max(norm.squareRoot(), 1e-12)
        for c in 0..<h { e[c] *= inv }
        return e
    }

    /// `pooled(states, rows)` of each input's last-layer rows, in input order, in batches of about
    /// `maxTokensPerBatch` tokens (inputs sorted by length).
    public func embed<T>(_ inputs: [BertEncoding], batchSize: Int = 32, maxTokensPerBatch: Int = 8192,
                         pooled: (UnsafePointer<Float>, Range<Int>) -> T) throws -> [T] {
        let order = inputs.indices.sorted { inputs[$0].count < inputs[$1].count }
        var out = [T?](repeating: nil, count: inputs.count)
        var start = 0
        while start < order.count {
            var end = start
            var tokens = 0
            while end < order.count, end - start < batchSize, tokens + inputs[order[end]].count <= maxTokensPerBatch || end == start {
                tokens += inputs[order[end]].count
                end += 1
            }
            let (states, offsets) = try hiddenStates(order[start..<end].map { inputs[$0] })
            states.withUnsafeBufferPointer { s in
                for (k, idx) in order[start..<end].enumerated() { out[idx] = pooled(s.baseAddress!, offsets[k]..<offsets[k + 1]) }
            }
            start = end
        }
        return out.map { $0! }
    }

    /// Embeddings of any number of inputs: sorted by length and cut into batches of about
    /// `maxTokensPerBatch` tokens (at most `batchSize` sequences), results in input order.
    public func embed(_ inputs: [BertEncoding], batchSize: Int = 32, maxTokensPerBatch: Int = 8192) throws -> [[Float]] {
        let h = config.hiddenSize
        return try embed(inputs, batchSize: batchSize, maxTokensPerBatch: maxTokensPerBatch) { Self.meanNormalised($0, rows: $1, hidden: h) }
    }

    /// Embeddings of a right-padded batch given as ids, type ids and an attention mask (1 = token,
    /// 0 = padding), as a Python caller would pass it.
    public func embed(ids: [[Int32]], typeIds: [[Int32]], attentionMask: [[Int32]]) throws -> [[Float]] {
        var encs: [BertEncoding] = []
        for i in ids.indices {
            let len = attentionMask[i].reduce(0) { $0 + Int($1 != 0 ? 1 : 0) }
            guard attentionMask[i].prefix(len).allSatisfy({ $0 != 0 }) else {
                throw BERTError(description: "attention mask of row \(i) is not right-padded")
            }
            encs.append(BertEncoding(ids: Array(ids[i].prefix(len)), typeIds: Array(typeIds[i].prefix(len))))
        }
        return try embedBatch(encs)
    }
}
