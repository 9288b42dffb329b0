import AlignersEngine
import Foundation
import AlignersCore
import AlignersKernels

/// The encoder's projections a LoRA adapter can adapt, by their module paths inside a Hugging Face
/// `BertLayer` (what PEFT's `target_modules` match).
public enum EncoderLoRATarget: String, CaseIterable, Sendable, Codable {
    case query = "attention.self.query", key = "attention.self.key", value = "attention.self.value"
    case attentionOutput = "attention.output.dense", intermediate = "intermediate.dense", output = "output.dense"

    public var index: Int { Self.allCases.firstIndex(of: self)! }

    /// (inputs, outputs) of the projection.
    public func shape(_ c: BERTConfig) -> (inputs: Int, outputs: Int) {
        switch self {
        case .query, .key, .value, .attentionOutput: (c.hiddenSize, c.hiddenSize)
        case .intermediate: (c.hiddenSize, c.intermediateSize)
        case .output: (c.intermediateSize, c.hiddenSize)
        }
    }
}

/// `W' = W + scale · B·A` on the chosen projections of the chosen layers; scale = alpha / rank.
public struct EncoderLoRAConfig: Sendable, Equatable, Codable {
    public var rank: Int
    public var alpha: Float
    public var targets: [EncoderLoRATarget]
    /// Layers that carry the adapter (nil: all).
    public var layers: [Int]?

    public init(rank: Int = 8, alpha: Float = 16, targets: [EncoderLoRATarget] = EncoderLoRATarget.allCases, layers: [Int]? = nil) {
        self.rank = rank
        self.alpha = alpha
        self.targets = EncoderLoRATarget.allCases.filter(targets.contains)
        self.layers = layers
    }

    public var scale: Float { alpha / Float(rank) }
    public func adapts(layer: Int) -> Bool { layers.map { $0.contains(layer) } ?? true }
}

/// An encoder's adapted projection.
public typealias EncoderLoRAModule = LoRAMatrices<EncoderLoRATarget>

/// What a fine-tuned inspector set adds to the frozen encoder: LoRA modules, one logistic head per
/// criterion on the mean-pooled last layer, and each head's Platt calibration (p = σ(a·z + b)).
/// Served merged into the encoder's weights, so scoring every criterion costs one plain encoder pass.
public struct EncoderInspectorAdapter: Sendable {
    public var config: EncoderLoRAConfig
    public var criteria: [String]
    public var modules: [EncoderLoRAModule]
    /// [criteria × hidden] and [criteria].
    public var headWeights: [Float]
    public var headBiases: [Float]
    /// Per criterion (a, b); (1, 0) until calibrated.
    public var platt: [[Float]]

    public init(config: EncoderLoRAConfig, criteria: [String], modules: [EncoderLoRAModule], headWeights: [Float], headBiases: [Float],
                platt: [[Float]]? = nil) {
        self.config = config; self.criteria = criteria; self.modules = modules
        self.headWeights = headWeights; self.headBiases = headBiases
        self.platt = platt ?? criteria.map { _ in [1, 0] }
    }

    public func module(layer: Int, _ target: EncoderLoRATarget) -> EncoderLoRAModule? {
        modules.first { $0.layer == layer && $0.target == target }
    }

    /// The encoder with `scale · B·A` added to each adapted weight (q|k|v stacked as the encoder keeps them).
    public func merged(into base: BERTEncoder) throws -> BERTEncoder {
        let c = base.config, h = c.hiddenSize, r = config.rank, scale = config.scale
        var layers = base.layers
        for m in modules {
            guard m.layer < layers.count, m.a.count == r * m.inputs, m.b.count == m.outputs * r,
                  (m.inputs, m.outputs) == m.target.shape(c) else {
                throw BERTError(description: "inspector adapter: \(m.target.rawValue) of layer \(m.layer) does not fit the encoder")
            }
            func add(_ w: inout [Float], rowOffset: Int) {
                w.withUnsafeMutableBufferPointer { wb in
                    BLAS.gemm(transposeA: false, transposeB: false, m: m.outputs, n: m.inputs, k: r, a: m.b, lda: r, b: m.a, ldb: m.inputs,
                              c: wb.baseAddress! + rowOffset * m.inputs, ldc: m.inputs, alpha: scale, beta: 1)
                }
            }
            switch m.target {
            case .query: add(&layers[m.layer].wqkv, rowOffset: 0)
            case .key: add(&layers[m.layer].wqkv, rowOffset: h)
            case .value: add(&layers[m.layer].wqkv, rowOffset: 2 * h)
            case .attentionOutput: add(&layers[m.layer].wo, rowOffset: 0)
            case .intermediate: add(&layers[m.layer].w1, rowOffset: 0)
            case .output: add(&layers[m.layer].w2, rowOffset: 0)
            }
        }
        return BERTEncoder(base, layers: layers)
    }

    /// Calibrated probabilities that each criterion is met, from a mean-pooled last layer.
    public func probabilities(pooled: UnsafePointer<Float>, hidden: Int) -> [Float] {
        criteria.indices.map { c in
            var z = headBiases[c]
            for j in 0..<hidden { z += headWeights[c * hidden + j] * pooled[j] }
            return 1 / (1 + exp(-(platt[c][0] * z + platt[c][1])))
        }
    }

    // MARK: file

    static func tensorName(_ m: EncoderLoRAModule, _ matrix: String) -> String {
        "encoder.layer.\(m.layer).\(m.target.rawValue).lora_\(matrix).weight"
    }

    public func write(to url: URL, metadata extra: [String: String] = [:]) throws {
        let hidden = headWeights.count / max(criteria.count, 1)
        var tensors: [SafetensorsWriter.Tensor] = []
        for m in modules {
            tensors.append(.init(name: Self.tensorName(m, "A"), shape: [config.rank, m.inputs], values: m.a))
            tensors.append(.init(name: Self.tensorName(m, "B"), shape: [m.outputs, config.rank], values: m.b))
        }
        tensors.append(.init(name: "heads.weight", shape: [criteria.count, hidden], values: headWeights))
        tensors.append(.init(name: "heads.bias", shape: [criteria.count], values: headBiases))
        tensors.append(.init(name: "heads.platt", shape: [criteria.count, 2], values: platt.flatMap { $0 }))
        var meta = extra
        meta["criteria"] = criteria.joined(separator: ",")
        meta["lora_rank"] = String(config.rank)
        meta["lora_alpha"] = String(config.alpha)
        meta["lora_targets"] = config.targets.map(\.rawValue).joined(separator: ",")
        meta["lora_layers"] = config.layers.map { $0.map(String.init).joined(separator: ",") } ?? "all"
        try SafetensorsWriter.write(tensors, metadata: meta, to: url)
    }

    public init(file f: SafetensorsFile, model: BERTConfig) throws {
        func meta(_ k: String) throws -> String {
            guard let v = f.metadata[k] else { throw BERTError(description: "\(f.path): not an inspector adapter (no \(k) in its metadata)") }
            return v
        }
        let criteria = try meta("criteria").split(separator: ",").map(String.init)
        guard let rank = Int(try meta("lora_rank")), let alpha = Float(try meta("lora_alpha")) else {
            throw BERTError(description: "\(f.path): unreadable LoRA rank or alpha")
        }
        let targets = try meta("lora_targets").split(separator: ",").compactMap { EncoderLoRATarget(rawValue: String($0)) }
        let layersText = try meta("lora_layers")
        let layers = layersText == "all" ? nil : layersText.split(separator: ",").compactMap { Int($0) }
        let config = EncoderLoRAConfig(rank: rank, alpha: alpha, targets: targets, layers: layers)
        var modules: [EncoderLoRAModule] = []
        for l in 0..<model.numHiddenLayers where config.adapts(layer: l) {
            for t in config.targets {
                let (i, o) = t.shape(model)
                let probe = EncoderLoRAModule(layer: l, target: t, inputs: i, outputs: o, a: [], b: [])
                modules.append(EncoderLoRAModule(layer: l, target: t, inputs: i, outputs: o,
                                                 a: try f.floats(Self.tensorName(probe, "A"), shape: [rank, i]),
                                                 b: try f.floats(Self.tensorName(probe, "B"), shape: [o, rank])))
            }
        }
        let h = model.hiddenSize, n = criteria.count
        let platt = try f.floats("heads.platt", shape: [n, 2])
        self.init(config: config, criteria: criteria, modules: modules,
                  headWeights: try f.floats("heads.weight", shape: [n, h]), headBiases: try f.floats("heads.bias", shape: [n]),
                  platt: (0..<n).map { [platt[2 * $0], platt[2 * $0 + 1]] })
    }
}

/// Fine-tuned inspectors of several criteria over one merged encoder: one encoder pass per exchange
/// scores every criterion (`aligners train inspectors` writes them). A criterion uses them with
/// `inspector: {head: inspectors/fine-tuned}` in its file; its name picks its head.
public final class FineTunedInspectors: @unchecked Sendable {
    public static let fileName = "fine-tuned.safetensors"
    public static let cardName = "fine-tuned.json"

    public let adapter: EncoderInspectorAdapter
    /// The encoder with the adapter merged in, its tokenizer and length limit.
    public let featurizer: InspectorFeaturizer
    public let modelName: String

    /// Whether a safetensors file holds fine-tuned inspectors (rather than one frozen-feature head).
    public static func isFineTuned(_ file: SafetensorsFile) -> Bool { file.metadata["criteria"] != nil && file.metadata["lora_rank"] != nil }

    public init(file url: URL, modelsDir: String? = nil, pool: ComputePool) throws {
        let f = try SafetensorsFile(path: url.path)
        let base = try InspectorFeaturizer.load(modelsDir: modelsDir, maxLength: Int(f.metadata["max_length"] ?? "") ?? 256, pool: pool)
        adapter = try EncoderInspectorAdapter(file: f, model: base.encoder.config)
        featurizer = InspectorFeaturizer(encoder: try adapter.merged(into: base.encoder), tokenizer: base.tokenizer,
                                         maxLength: base.maxLength, views: [FeatureView(.pair, base.encoder.config.numHiddenLayers)])
        modelName = "\(InspectorFeaturizer.encoderName)+\(url.deletingPathExtension().lastPathComponent)"
            + (f.metadata["date"].map { "@\($0)" } ?? "")
    }

    /// Per exchange, the calibrated probability that it meets each criterion (`adapter.criteria` order).
    public func probabilities(_ batch: [Exchange]) throws -> [[Float]] {
        let h = featurizer.hidden
        return try featurizer.encoder.embed(batch.map(featurizer.pairEncoding), pooled: { states, rows in
            var pooled = [Float](repeating: 0, count: h)
            for r in rows { for j in 0..<h { pooled[j] += states[r * h + j] } }
            for j in 0..<h { pooled[j] /= Float(max(rows.count, 1)) }
            return pooled.withUnsafeBufferPointer { self.adapter.probabilities(pooled: $0.baseAddress!, hidden: h) }
        })
    }

    /// Some of its criteria as an inspector set: one encoder pass per exchange scores them all.
    public func subset(_ criteria: [String]) throws -> FineTunedInspectorSet {
        FineTunedInspectorSet(inspectors: self, indices: try criteria.map { try inspector(for: $0).index })
    }

    /// The inspector of one criterion.
    public func inspector(for criterion: String) throws -> FineTunedInspector {
        guard let i = adapter.criteria.firstIndex(of: criterion) else {
            throw InspectorError("the fine-tuned inspectors (\(modelName)) have no head for '\(criterion)'; they judge "
                                 + adapter.criteria.joined(separator: ", "))
        }
        return FineTunedInspector(criterion: criterion, inspectors: self, index: i)
    }
}

/// One criterion's view of `FineTunedInspectors` (several criteria scoring one batch share one pass).
public struct FineTunedInspector: Inspector {
    public let criterion: String
    public let inspectors: FineTunedInspectors
    public let index: Int
    public var modelName: String { inspectors.modelName }
    public func score(_ batch: [Exchange]) throws -> [Double] { try inspectors.probabilities(batch).map { Double($0[index]) } }
}

/// Criteria of one `FineTunedInspectors` scored together (one pass per exchange).
public struct FineTunedInspectorSet: InspectorSet {
    public let inspectors: FineTunedInspectors
    public let indices: [Int]
    public var criteria: [String] { indices.map { inspectors.adapter.criteria[$0] } }
    public var modelName: String { inspectors.modelName }
    public func score(_ batch: [Exchange]) throws -> [[Double]] {
        try inspectors.probabilities(batch).map { p in indices.map { Double(p[$0]) } }
    }
}
