import AlignersCore
import Foundation
import AlignersEngine
import AlignersSquadModels

/// Every trainable LoRA matrix in one flat buffer (values, and gradients of the same layout), so
/// the optimiser, clipping and checkpoints see one vector. Module order: by layer, then target;
/// A [rank × in] before B [out × rank]. B's rows are in the GGUF's order (`LoRAModule`).
public struct LoRAParameters: Sendable {
    public struct Slot: Sendable {
        public let layer: Int
        public let target: LoRATarget
        public let inputs: Int
        public let outputs: Int
        public let a: Int   // offset of A
        public let b: Int   // offset of B
    }

    public let config: LoRAConfig
    public let slots: [Slot]
    public var values: [Float]
    public var count: Int { values.count }
    private let lookup: [[Int?]]

    public init(config: LoRAConfig, model: DecoderConfig) {
        self.config = config
        var slots: [Slot] = []
        var offset = 0
        for layer in 0..<model.layers where config.adapts(layer: layer) {
            for t in config.targets {
                let (i, o) = t.shape(model)
                slots.append(Slot(layer: layer, target: t, inputs: i, outputs: o, a: offset, b: offset + config.rank * i))
                offset += config.rank * (i + o)
            }
        }
        self.slots = slots
        values = [Float](repeating: 0, count: offset)
        var table = [[Int?]](repeating: [Int?](repeating: nil, count: LoRATarget.allCases.count), count: model.layers)
        for (n, s) in slots.enumerated() { table[s.layer][s.target.index] = n }
        lookup = table
    }

    public func slot(layer: Int, _ target: LoRATarget) -> Slot? { slotIndex(layer: layer, target).map { slots[$0] } }

    /// The position of that module in `slots` (and of its activations on the training tape).
    public func slotIndex(layer: Int, _ target: LoRATarget) -> Int? {
        guard layer < lookup.count else { return nil }
        return lookup[layer][target.index]
    }

    /// PEFT's initialisation: A ~ kaiming-uniform(a = √5), i.e. U(−1/√in, 1/√in); B = 0 (so training
    /// starts from the base model exactly).
    public mutating func initialise(seed: UInt64) {
        var rng = SplitMix64(seed: seed)
        for s in slots {
            let bound = 1 / Float(s.inputs).squareRoot()
            for i in 0..<(config.rank * s.inputs) { values[s.a + i] = (rng.uniform() * 2 - 1) * bound }
            for i in 0..<(s.outputs * config.rank) { values[s.b + i] = 0 }
        }
    }

    /// The parameters as a servable adapter.
    public func adapter(name: String = "adapter") -> LoRAAdapter {
        let r = config.rank
        return LoRAAdapter(config: config, modules: slots.map { s in
            LoRAModule(layer: s.layer, target: s.target, inputs: s.inputs, outputs: s.outputs,
                       a: Array(values[s.a..<s.a + r * s.inputs]), b: Array(values[s.b..<s.b + s.outputs * r]))
        }, name: name)
    }

    /// Takes the values of an adapter of the same configuration (to continue training it, or to
    /// check gradients at given weights).
    public mutating func load(_ adapter: LoRAAdapter) throws {
        for s in slots {
            guard let m = adapter.module(layer: s.layer, s.target), m.a.count == config.rank * s.inputs,
                  m.b.count == s.outputs * config.rank else {
                throw TrainingError.adapterMismatch("the adapter has no \(s.target.rawValue) of layer \(s.layer) at rank \(config.rank)")
            }
            for i in 0..<m.a.count { values[s.a + i] = m.a[i] }
            for i in 0..<m.b.count { values[s.b + i] = m.b[i] }
        }
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
