import Foundation
import AlignersCore

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
///     let inspector = try EncoderInspector.load(criterion: "ethical")            // models/ and inspectors/ found by the locators
///     let p = try inspector.score([Exchange(conversation: [Turn(role: "user", content: q)], response: a)])
///
/// Several criteria share one encoder pass through `EncoderInspectorSet`.
public final class EncoderInspector: Inspector, @unchecked Sendable {
    public let criterion: String
    public let modelName: String
    public let featurizer: InspectorFeaturizer
    public let head: InspectorHead

    public init(criterion: String, featurizer: InspectorFeaturizer, head: InspectorHead, date: String = "") {
        self.criterion = criterion
        self.featurizer = featurizer
        self.head = head
        self.modelName = "\(InspectorFeaturizer.encoderName)+\(criterion)-head" + (date.isEmpty ? "" : "@\(date)")
    }

    /// Loads the encoder (via `ModelLocator`, `modelsDir` first) and the criterion's head (via
    /// `InspectorStore`, `inspectorsDir` first). Inspectors loaded in one process share one encoder
    /// (`InspectorFeaturizer.shared`) and its feature memo, so scoring the same batch for several
    /// criteria runs the encoder once.
    public static func load(criterion: String, modelsDir: String? = nil, inspectorsDir: String? = nil,
                            featurizer: InspectorFeaturizer? = nil) throws -> EncoderInspector {
        let url = try InspectorStore.locate(criterion: criterion, explicit: inspectorsDir)
        let (head, meta) = try InspectorStore.loadHead(url)
        let maxLength = meta["feature_recipe"].flatMap { r in r.split(separator: "@").last.flatMap { Int($0.split(separator: "/").first ?? "") } } ?? 256
        let f = try featurizer ?? InspectorFeaturizer.shared(modelsDir: modelsDir, maxLength: maxLength)
        if let recipe = meta["feature_recipe"], recipe != f.recipe {
            throw InspectorError("\(url.path): head was trained on features '\(recipe)' but the featurizer makes '\(f.recipe)'")
        }
        guard head.inputDim == 6 * f.hidden else {
            throw InspectorError("\(url.path): head expects \(head.inputDim) features, the encoder gives \(6 * f.hidden)")
        }
        return EncoderInspector(criterion: criterion, featurizer: f, head: head, date: meta["date"] ?? "")
    }

    public func score(_ batch: [Exchange]) throws -> [Double] {
        let raw = try featurizer.memoizedFeatures(batch)
        return score(rawFeatures: raw)
    }

    public func score(rawFeatures raw: [[Float]]) -> [Double] {
        head.probabilities(raw.map { InspectorHead.transform($0, hidden: featurizer.hidden) })
    }
}

/// Several inspectors over one encoder: the features of a batch are computed once for all criteria.
public final class EncoderInspectorSet: @unchecked Sendable {
    public let inspectors: [EncoderInspector]
    public let featurizer: InspectorFeaturizer

    public static func load(criteria: [String], modelsDir: String? = nil, inspectorsDir: String? = nil) throws -> EncoderInspectorSet {
        guard let first = criteria.first else { throw InspectorError("no criteria given") }
        let a = try EncoderInspector.load(criterion: first, modelsDir: modelsDir, inspectorsDir: inspectorsDir)
        var all = [a]
        for c in criteria.dropFirst() {
            all.append(try EncoderInspector.load(criterion: c, modelsDir: modelsDir, inspectorsDir: inspectorsDir, featurizer: a.featurizer))
        }
        return EncoderInspectorSet(inspectors: all, featurizer: a.featurizer)
    }

    public init(inspectors: [EncoderInspector], featurizer: InspectorFeaturizer) {
        self.inspectors = inspectors
        self.featurizer = featurizer
    }

    /// Scores per exchange, criterion → probability.
    public func score(_ batch: [Exchange]) throws -> [[String: Double]] {
        let raw = try featurizer.features(batch)
        var out = [[String: Double]](repeating: [:], count: batch.count)
        for ins in inspectors {
            for (i, s) in ins.score(rawFeatures: raw).enumerated() { out[i][ins.criterion] = s }
        }
        return out
    }
}
