import AlignersCore
import Foundation
import AlignersEngine
import AlignersSquadModels

/// Where each adapted projection's A and B sit in a flat parameter vector: by layer, then target,
/// A [rank × in] before B [out × rank]. Shared by the decoder's adapters and the encoder inspectors'
/// (targets named by their module paths).
public struct LoRALayout<Target: Hashable & Sendable & RawRepresentable<String>>: Sendable {
    public struct Slot: Sendable {
        public let layer: Int
        public let target: Target
        public let inputs: Int
        public let outputs: Int
        public let a: Int   // offset of A
        public let b: Int   // offset of B
    }
    private struct Key: Hashable { let layer: Int, target: Target }

    public let rank: Int
    public let slots: [Slot]
    /// The offset just past the last B.
    public let end: Int
    private let lookup: [Key: Int]

    public init(rank: Int, layers: Int, targets: [Target], adapts: (Int) -> Bool, shape: (Target) -> (inputs: Int, outputs: Int)) {
        self.rank = rank
        var slots: [Slot] = []
        var at = 0
        for layer in 0..<layers where adapts(layer) {
            for t in targets {
                let (i, o) = shape(t)
                slots.append(Slot(layer: layer, target: t, inputs: i, outputs: o, a: at, b: at + rank * i))
                at += rank * (i + o)
            }
        }
        self.slots = slots
        end = at
        lookup = Dictionary(uniqueKeysWithValues: slots.enumerated().map { (Key(layer: $1.layer, target: $1.target), $0) })
    }

    /// The position of that module in `slots` (and of its activations on a training tape).
    public func slotIndex(layer: Int, _ target: Target) -> Int? { lookup[Key(layer: layer, target: target)] }

    /// PEFT's initialisation: A ~ kaiming-uniform(a = √5), i.e. U(−1/√in, 1/√in); B = 0 (so training
    /// starts from the base model exactly).
    public func initialise(_ values: inout [Float], rng: inout SplitMix64) {
        for s in slots {
            let bound = 1 / Float(s.inputs).squareRoot()
            for i in 0..<(rank * s.inputs) { values[s.a + i] = (rng.uniform() * 2 - 1) * bound }
            for i in 0..<(s.outputs * rank) { values[s.b + i] = 0 }
        }
    }

    /// The matrices held in `values`.
    public func matrices(_ values: [Float]) -> [LoRAMatrices<Target>] {
        slots.map { s in
            LoRAMatrices(layer: s.layer, target: s.target, inputs: s.inputs, outputs: s.outputs,
                         a: Array(values[s.a..<s.a + rank * s.inputs]), b: Array(values[s.b..<s.b + s.outputs * rank]))
        }
    }

    /// Copies each slot's matrices from `module` into `values`; every slot must be found at this rank.
    public func load(_ module: (Int, Target) -> LoRAMatrices<Target>?, into values: inout [Float]) throws {
        for s in slots {
            guard let m = module(s.layer, s.target), m.a.count == rank * s.inputs, m.b.count == s.outputs * rank else {
                throw TrainingError.adapterMismatch("the adapter has no \(s.target.rawValue) of layer \(s.layer) at rank \(rank)")
            }
            for i in 0..<m.a.count { values[s.a + i] = m.a[i] }
            for i in 0..<m.b.count { values[s.b + i] = m.b[i] }
        }
    }
}

/// Every trainable LoRA matrix of a decoder adapter in one flat buffer (values, and gradients of the
/// same layout), so the optimiser, clipping and checkpoints see one vector. B's rows are in the
/// GGUF's order (`LoRAModule`).
public struct LoRAParameters: Sendable {
    public let config: LoRAConfig
    public let layout: LoRALayout<LoRATarget>
    public var slots: [LoRALayout<LoRATarget>.Slot] { layout.slots }
    public var values: [Float]
    public var count: Int { values.count }

    public init(config: LoRAConfig, model: DecoderConfig) {
        self.config = config
        layout = LoRALayout(rank: config.rank, layers: model.layers, targets: config.targets, adapts: config.adapts(layer:),
                            shape: { $0.shape(model) })
        values = [Float](repeating: 0, count: layout.end)
    }

    public func slotIndex(layer: Int, _ target: LoRATarget) -> Int? { layout.slotIndex(layer: layer, target) }

    /// PEFT's initialisation (`LoRALayout.initialise`).
    public mutating func initialise(seed: UInt64) {
        var rng = SplitMix64(seed: seed)
        layout.initialise(&values, rng: &rng)
    }

    /// The parameters as a servable adapter.
    public func adapter(name: String = "adapter") -> LoRAAdapter {
        LoRAAdapter(config: config, modules: layout.matrices(values), name: name)
    }

    /// Takes the values of an adapter of the same configuration (to continue training it, or to
    /// check gradients at given weights).
    public mutating func load(_ adapter: LoRAAdapter) throws {
        try layout.load({ adapter.module(layer: $0, $1) }, into: &values)
    }
}

public enum TrainingError: Error, CustomStringConvertible {
    case adapterMismatch(String)
    case data(String)
    case checkpoint(String)
    public var description: String {
        switch self {
        case let .adapterMismatch(s): "adapter does not match the training configuration: \(s)"
        case let .data(s): s
        case let .checkpoint(s): s
        }
    }
}
