import AlignersKernels
import AlignersEngine
import AlignersSquadModels
import Foundation

/// Sentence embeddings of plain texts (mean-pooled, L2-normalised MiniLM, as sentence-transformers
/// makes them), with an optional on-disk cache. The judge and the reference checks see answers
/// through this view, not through the inspectors' pair features.
public final class TextEmbedder: @unchecked Sendable {
    public let encoder: BERTEncoder
    public let tokenizer: WordPieceTokenizer
    public let maxLength: Int
    public var dimension: Int { encoder.config.hiddenSize }
    /// Names the view in caches and judge cards.
    public var recipe: String { "sentence-embedding@\(maxLength)/v1" }
    private let cache: FeatureCache?

    public init(encoder: BERTEncoder, tokenizer: WordPieceTokenizer, maxLength: Int = 256, cache: FeatureCache? = nil) {
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.maxLength = maxLength
        self.cache = cache
    }

    /// The encoder the inspectors use, found through `ModelLocator`; `cacheFile` keeps embeddings across runs.
    public static func load(modelsDir: String? = nil, maxLength: Int = 256, cacheFile: URL? = nil, pool: ComputePool) throws -> TextEmbedder {
        let weights = try ModelLocator.locate(InspectorFeaturizer.encoderRelativePath + "/model.safetensors", explicit: modelsDir)
        let dir = weights.deletingLastPathComponent()
        let encoder = try BERTEncoder(modelDirectory: dir, pool: pool)
        let tokenizer = try WordPieceTokenizer(vocabFile: dir.appendingPathComponent("vocab.txt"))
        return TextEmbedder(encoder: encoder, tokenizer: tokenizer, maxLength: maxLength,
                            cache: try cacheFile.map { try FeatureCache(url: $0) })
    }

    /// How many word pieces `text` has (uncut), for length features.
    public func tokenCount(_ text: String) -> Int { tokenizer.tokenize(text).count }

    /// One embedding per text, in order. Texts seen before (in this call or in the cache) are encoded once.
    public func embed(_ texts: [String], batchSize: Int = 32, progress: ((Int, Int) -> Void)? = nil) throws -> [[Float]] {
        let keys = texts.map { FeatureCache.Key(recipe + "\u{1}" + $0) }
        var out = [[Float]](repeating: [], count: texts.count)
        var firstOf: [FeatureCache.Key: Int] = [:]
        var missing: [Int] = []
        for (i, k) in keys.enumerated() {
            if let v = cache?[k], v.count == dimension { out[i] = v } else if firstOf[k] == nil { firstOf[k] = i; missing.append(i) }
        }
        // Chunks keep progress moving and let an interrupted run keep what it computed.
        let chunk = 1024
        for lo in stride(from: 0, to: missing.count, by: chunk) {
            let idx = Array(missing[lo..<min(lo + chunk, missing.count)])
            let encodings = idx.map { tokenizer.build(tokenizer.tokenize(texts[$0]), nil, maxLength: maxLength) }
            let embeddings = try encoder.embed(encodings, batchSize: batchSize)
            for (j, i) in idx.enumerated() { out[i] = embeddings[j]; cache?[keys[i]] = embeddings[j] }
            try cache?.flush()
            progress?(min(lo + chunk, missing.count), missing.count)
        }
        for (i, k) in keys.enumerated() where out[i].isEmpty { out[i] = out[firstOf[k]!] }
        return out
    }
}

@inline(__always) func dot(_ a: [Float], _ b: [Float]) -> Float {
    var s: Float = 0
    for i in 0..<min(a.count, b.count) { s += a[i] * b[i] }
    return s
}
