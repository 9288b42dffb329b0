import AlignersEngine
import Foundation
import AlignersCore
import AlignersKernels

/// The card written beside a head: what it judges, from what data, how well, when.
public struct InspectorCard: Codable, Sendable {
    public var criterion: String
    public var encoder: String
    public var featureRecipe: String
    public var head: String
    public var options: InspectorTrainer.Options
    public var data: String
    public var rows: [String: Int]
    public var metrics: [String: InspectorMetrics]
    public var perSource: [String: [String: InspectorMetrics]]?
    public var date: String
    public var trainingSeconds: Double?
    public var epochs: Int?

    public init(criterion: String, encoder: String, featureRecipe: String, head: String, options: InspectorTrainer.Options,
                data: String, rows: [String: Int], metrics: [String: InspectorMetrics],
                perSource: [String: [String: InspectorMetrics]]?, date: String, trainingSeconds: Double?, epochs: Int?) {
        self.criterion = criterion; self.encoder = encoder; self.featureRecipe = featureRecipe; self.head = head
        self.options = options; self.data = data; self.rows = rows; self.metrics = metrics; self.perSource = perSource
        self.date = date; self.trainingSeconds = trainingSeconds; self.epochs = epochs
    }
}

/// Finds and writes trained heads: `<dir>/<criterion>.safetensors` + `<dir>/<criterion>.json`.
///
/// Search order: an explicit directory, `$ALIGNERS_INSPECTORS_DIR`, `./inspectors`, `inspectors/`
/// beside the repository that built the executable, `/var/lib/aligners/inspectors`.
public enum InspectorStore {
    public static let environmentVariable = "ALIGNERS_INSPECTORS_DIR"

    public static func searchDirectories(explicit: String? = nil) -> [URL] {
        SearchPath.directories(folder: "inspectors", explicit: explicit, environment: environmentVariable,
                               system: "/var/lib/aligners/inspectors")
    }

    public static func locate(criterion: String, explicit: String? = nil) throws -> URL {
        let dirs = searchDirectories(explicit: explicit)
        for d in dirs {
            let u = d.appendingPathComponent("\(criterion).safetensors")
            if FileManager.default.fileExists(atPath: u.path) { return u }
        }
        throw InspectorError("no inspector head for criterion '\(criterion)'; looked for \(criterion).safetensors in: "
            + dirs.map(\.path).joined(separator: ", ") + ". Train one with `aligners train inspector --criterion \(criterion) --data FILE`.")
    }

    public static func save(head: InspectorHead, card: InspectorCard, to dir: URL) throws {
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        try SafetensorsWriter.write(head.tensors(), metadata: [
            "criterion": card.criterion, "encoder": card.encoder, "feature_recipe": card.featureRecipe, "date": card.date,
        ], to: dir.appendingPathComponent("\(card.criterion).safetensors"))
        let enc = JSONEncoder()
        enc.outputFormatting = [.prettyPrinted, .sortedKeys]
        try enc.encode(card).write(to: dir.appendingPathComponent("\(card.criterion).json"), options: .atomic)
    }

    public static func loadHead(_ url: URL) throws -> (InspectorHead, [String: String]) {
        let f = try SafetensorsFile(path: url.path)
        return (try InspectorHead(file: f), f.metadata)
    }
}

/// An inspector: the frozen MiniLM encoder's features of `(x, y)` and a small trained head.
///
///     let inspector = try EncoderInspector.load(criterion: "ethical", pool: compute.pool)   // models/ and inspectors/ found by the locators
///     let p = try inspector.score([Exchange(conversation: [Turn(role: "user", content: q)], response: a)])
///
/// The head's card names its feature views (`feature_recipe`); the featurizer may compute more views
/// (those of every head in the same directory), and the inspector takes its own from them, so all
/// criteria share one encoder pass (see `EncoderInspectorSet` and `InspectorFeaturizer.shared`).
public final class EncoderInspector: Inspector, @unchecked Sendable {
    public let criterion: String
    public let modelName: String
    public let featurizer: InspectorFeaturizer
    public let head: InspectorHead
    /// The head's views, and where each sits in the featurizer's raw output.
    public let views: [FeatureView]
    let viewIndex: [Int]

    public convenience init(criterion: String, featurizer: InspectorFeaturizer, head: InspectorHead, date: String = "",
                            views: [FeatureView]? = nil) throws {
        try self.init(criterion: criterion, featurizer: featurizer, head: head, views: views,
                      modelName: "\(InspectorFeaturizer.encoderName)+\(criterion)-head" + (date.isEmpty ? "" : "@\(date)"))
    }

    init(criterion: String, featurizer: InspectorFeaturizer, head: InspectorHead, views: [FeatureView]?, modelName: String) throws {
        self.criterion = criterion
        self.featurizer = featurizer
        self.head = head
        let views = views ?? featurizer.views
        self.views = views
        viewIndex = try views.map { v in
            guard let i = featurizer.views.firstIndex(of: v) else {
                throw InspectorError("head for '\(criterion)' needs feature view \(v), which the featurizer (\(featurizer.recipe)) lacks")
            }
            return i
        }
        self.modelName = modelName
    }

    /// (max length, views) a head's metadata names; heads without a recipe are v1 at 256 tokens.
    static func recipe(of meta: [String: String]) throws -> (maxLength: Int, views: [FeatureView]) {
        try meta["feature_recipe"].map { try InspectorFeaturizer.parseRecipe($0) } ?? (256, FeatureView.v1())
    }

    /// Views of every head (`*.safetensors`) in `dir` with the given max length, in file-name order,
    /// each view once, then those of `extra` not yet there: what one featurizer computes for all of
    /// them. The order does not depend on which head asks, so every head of a directory gets the same
    /// shared featurizer.
    static func unionViews(in dir: URL, maxLength: Int, extra: [FeatureView]) -> [FeatureView] {
        var out: [FeatureView] = []
        let files = ((try? FileManager.default.contentsOfDirectory(atPath: dir.path)) ?? []).filter { $0.hasSuffix(".safetensors") }.sorted()
        for name in files {
            guard let f = try? SafetensorsFile(path: dir.appendingPathComponent(name).path),
                  let (n, views) = try? recipe(of: f.metadata), n == maxLength else { continue }
            for v in views where !out.contains(v) { out.append(v) }
        }
        for v in extra where !out.contains(v) { out.append(v) }
        return out
    }

    /// Loads the encoder (via `ModelLocator`, `modelsDir` first) and the criterion's head (via
    /// `InspectorStore`, `inspectorsDir` first). Inspectors loaded through one `featurizers` pool
    /// share one encoder and, when their heads sit in one directory, one featurizer, so an
    /// `EncoderInspectorSet` of them encodes a batch once for all criteria. A given `featurizer` is
    /// used when it computes every view the head needs.
    public static func load(criterion: String, modelsDir: String? = nil, inspectorsDir: String? = nil,
                            featurizer: InspectorFeaturizer? = nil, featurizers: FeaturizerPool) throws -> EncoderInspector {
        let url = try InspectorStore.locate(criterion: criterion, explicit: inspectorsDir)
        let (head, meta) = try InspectorStore.loadHead(url)
        let (maxLength, views) = try recipe(of: meta)
        let f: InspectorFeaturizer
        if let featurizer, featurizer.maxLength == maxLength, views.allSatisfy(featurizer.views.contains) {
            f = featurizer
        } else {
            let all = unionViews(in: url.deletingLastPathComponent(), maxLength: maxLength, extra: views)
            f = try featurizers.featurizer(modelsDir: modelsDir, maxLength: maxLength, views: all)
        }
        let dim = InspectorHead.transformedDimension(views: views, hidden: f.hidden)
        guard head.inputDim == dim else {
            throw InspectorError("\(url.path): head expects \(head.inputDim) features, its recipe gives \(dim)")
        }
        return try EncoderInspector(criterion: criterion, featurizer: f, head: head, date: meta["date"] ?? "", views: views)
    }

    public func score(_ batch: [Exchange]) throws -> [Double] {
        let raw = try featurizer.features(batch)
        return score(rawFeatures: raw)
    }

    /// Scores from the featurizer's raw features (`featurizer.rawDimension` floats per exchange).
    public func score(rawFeatures raw: [[Float]]) -> [Double] {
        head.probabilities(raw.map { InspectorHead.transform(headRaw($0), views: views, hidden: featurizer.hidden) })
    }

    /// The same head on a featurizer that computes exactly its own views (recipe = the card's), e.g.
    /// to share a feature cache with `aligners train inspector`.
    public func onOwnViews(modelsDir: String? = nil, featurizers: FeaturizerPool? = nil) throws -> EncoderInspector {
        if featurizer.views == views { return self }
        let f = try (featurizers ?? FeaturizerPool(pool: featurizer.encoder.pool))
            .featurizer(modelsDir: modelsDir, maxLength: featurizer.maxLength, views: views)
        return try EncoderInspector(criterion: criterion, featurizer: f, head: head, views: views, modelName: modelName)
    }

    /// The same inspector scoring under another criterion's name (a criterion file naming this head).
    public func renamed(_ criterion: String) -> EncoderInspector {
        if criterion == self.criterion { return self }
        // Cannot throw: the head and views were accepted once already.
        return try! EncoderInspector(criterion: criterion, featurizer: featurizer, head: head, views: views, modelName: modelName)
    }

    /// The head's views out of the featurizer's raw features.
    public func headRaw(_ raw: [Float]) -> [Float] {
        let h = featurizer.hidden
        if viewIndex == Array(0..<featurizer.views.count) { return raw }
        var out = [Float](); out.reserveCapacity(views.count * h)
        for i in viewIndex { out.append(contentsOf: raw[(i * h)..<((i + 1) * h)]) }
        return out
    }
}

/// Several inspectors over one encoder: the features of a batch are computed once per featurizer
/// for all criteria.
public struct EncoderInspectorSet: InspectorSet {
    public let inspectors: [EncoderInspector]

    public static func load(criteria: [String], modelsDir: String? = nil, inspectorsDir: String? = nil,
                            pool: ComputePool) throws -> EncoderInspectorSet {
        guard let first = criteria.first else { throw InspectorError("no criteria given") }
        let featurizers = FeaturizerPool(pool: pool)
        let a = try EncoderInspector.load(criterion: first, modelsDir: modelsDir, inspectorsDir: inspectorsDir, featurizers: featurizers)
        var all = [a]
        for c in criteria.dropFirst() {
            all.append(try EncoderInspector.load(criterion: c, modelsDir: modelsDir, inspectorsDir: inspectorsDir, featurizer: a.featurizer,
                                                 featurizers: featurizers))
        }
        return EncoderInspectorSet(inspectors: all)
    }

    public init(inspectors: [EncoderInspector]) { self.inspectors = inspectors }

    public var criteria: [String] { inspectors.map(\.criterion) }
    public var modelName: String {
        var seen: [String] = []
        for i in inspectors where !seen.contains(i.modelName) { seen.append(i.modelName) }
        return seen.joined(separator: ",")
    }

    /// Per exchange, a probability per criterion (`criteria` order). Heads on one featurizer share one encoding.
    public func score(_ batch: [Exchange]) throws -> [[Double]] {
        var raws: [ObjectIdentifier: [[Float]]] = [:]
        var out = [[Double]](repeating: [], count: batch.count)
        for ins in inspectors {
            let key = ObjectIdentifier(ins.featurizer)
            let raw = try raws[key] ?? ins.featurizer.features(batch)
            raws[key] = raw
            for (i, s) in ins.score(rawFeatures: raw).enumerated() { out[i].append(s) }
        }
        return out
    }
}
