import Foundation
import AlignersKernels

/// The seven projections of a Llama block that a LoRA adapter can adapt, named as PEFT names
/// them (`target_modules`).
public enum LoRATarget: String, CaseIterable, Sendable, Codable, Comparable {
    case q = "q_proj", k = "k_proj", v = "v_proj", o = "o_proj", gate = "gate_proj", up = "up_proj", down = "down_proj"

    /// Position in `allCases` (for tables indexed by target).
    public var index: Int { Self.allCases.firstIndex(of: self)! }
    public static func < (a: Self, b: Self) -> Bool { a.index < b.index }

    /// The module's path inside a Hugging Face `LlamaDecoderLayer`.
    public var modulePath: String {
        switch self {
        case .q, .k, .v, .o: "self_attn.\(rawValue)"
        case .gate, .up, .down: "mlp.\(rawValue)"
        }
    }

    /// (inputs, outputs) of the projection.
    public func shape(_ c: DecoderConfig) -> (inputs: Int, outputs: Int) {
        switch self {
        case .q: (c.embedding, c.qDim)
        case .k, .v: (c.embedding, c.kvDim)
        case .o: (c.qDim, c.embedding)
        case .gate, .up: (c.embedding, c.feedForward)
        case .down: (c.feedForward, c.embedding)
        }
    }
}

/// What a LoRA adapter adapts and how strongly: `W' = W + scale · B·A` with A [rank × in] and
/// B [out × rank]; `scale` is alpha / rank (alpha / √rank with rsLoRA), as PEFT defines it.
public struct LoRAConfig: Sendable, Equatable {
    public var rank: Int
    public var alpha: Float
    public var dropout: Float
    public var targets: [LoRATarget]
    /// Blocks that carry the adapter (nil: all).
    public var layers: [Int]?
    public var useRSLoRA: Bool
    /// The Hugging Face model the base GGUF was converted from (recorded in adapter_config.json).
    public var baseModel: String

    public init(rank: Int = 8, alpha: Float = 16, dropout: Float = 0, targets: [LoRATarget] = LoRATarget.allCases,
                layers: [Int]? = nil, useRSLoRA: Bool = false, baseModel: String = "HuggingFaceTB/SmolLM2-135M-Instruct") {
        self.rank = rank
        self.alpha = alpha
        self.dropout = dropout
        self.targets = targets.sorted()
        self.layers = layers
        self.useRSLoRA = useRSLoRA
        self.baseModel = baseModel
    }

    public var scale: Float { useRSLoRA ? alpha / Float(rank).squareRoot() : alpha / Float(rank) }

    public func adapts(layer: Int) -> Bool { layers.map { $0.contains(layer) } ?? true }
}

/// One adapted projection of a model whose projections `Target` names: A [rank × inputs] and
/// B [outputs × rank], row-major.
public struct LoRAMatrices<Target: Hashable & Sendable>: Sendable, Equatable {
    public let layer: Int
    public let target: Target
    public let inputs: Int
    public let outputs: Int
    public var a: [Float]
    public var b: [Float]

    public init(layer: Int, target: Target, inputs: Int, outputs: Int, a: [Float], b: [Float]) {
        self.layer = layer
        self.target = target
        self.inputs = inputs
        self.outputs = outputs
        self.a = a
        self.b = b
    }
}

/// A decoder's adapted projection. B's rows follow the GGUF's row order (for Q and K, llama.cpp's
/// permuted layout; the PEFT reader and writer convert).
public typealias LoRAModule = LoRAMatrices<LoRATarget>

/// A LoRA adapter for a decoder, served over the shared frozen base (`DecoderSegment.adapter`):
/// several adapters run in one batch over one copy of the base weights.
public final class LoRAAdapter: @unchecked Sendable {
    public let config: LoRAConfig
    public let modules: [LoRAModule]
    /// A name for logs (the adapter's directory, usually).
    public let name: String
    private let lookup: [[Int?]]

    public init(config: LoRAConfig, modules: [LoRAModule], name: String = "adapter") {
        self.config = config
        self.modules = modules.sorted { ($0.layer, $0.target) < ($1.layer, $1.target) }
        self.name = name
        let layers = (self.modules.map(\.layer).max() ?? -1) + 1
        var table = [[Int?]](repeating: [Int?](repeating: nil, count: LoRATarget.allCases.count), count: layers)
        for (i, m) in self.modules.enumerated() { table[m.layer][m.target.index] = i }
        lookup = table
    }

    public func module(layer: Int, _ target: LoRATarget) -> LoRAModule? {
        guard layer < lookup.count, let i = lookup[layer][target.index] else { return nil }
        return modules[i]
    }

    public var parameterCount: Int { modules.reduce(0) { $0 + $1.a.count + $1.b.count } }

    /// Checks that every module fits a model of `config`.
    public func check(against c: DecoderConfig) throws {
        for m in modules {
            let (i, o) = m.target.shape(c)
            guard m.layer < c.layers, m.inputs == i, m.outputs == o, m.a.count == config.rank * i, m.b.count == o * config.rank else {
                throw DecoderError.shape("adapter \(name): \(m.target.rawValue) of layer \(m.layer) is [\(m.outputs)×\(m.inputs)] at rank "
                    + "\(config.rank); the model has \(c.layers) layers and that projection is [\(o)×\(i)]")
            }
        }
    }

    /// out[r, :] += scale · (x[r, :]·Aᵀ)·Bᵀ for the `rows` rows of x (row stride = inputs) and out
    /// (row stride `ldOut`).
    func add(layer: Int, _ target: LoRATarget, x: UnsafePointer<Float>, rows: Int, out: UnsafeMutablePointer<Float>, ldOut: Int,
             pool: ComputePool) {
        guard rows > 0, let m = module(layer: layer, target) else { return }
        let r = config.rank
        withUnsafeTemporaryAllocation(of: Float.self, capacity: rows * r) { tbuf in
            let t = tbuf.baseAddress!
            m.a.withUnsafeBufferPointer { a in
                BLAS.gemm(transposeA: false, transposeB: true, m: rows, n: r, k: m.inputs, a: x, lda: m.inputs, b: a.baseAddress!, ldb: m.inputs,
                          c: t, ldc: r, alpha: config.scale, pool: pool)
            }
            m.b.withUnsafeBufferPointer { b in
                BLAS.gemm(transposeA: false, transposeB: true, m: rows, n: m.outputs, k: r, a: t, lda: r, b: b.baseAddress!, ldb: r,
                          c: out, ldc: ldOut, beta: 1, pool: pool)
            }
        }
    }
}
