import AlignersCore
import Foundation
import AlignersEngine
import AlignersSquadModels

/// Trainable parameters of the fine-tuned inspectors: LoRA matrices on the encoder's projections and
/// one logistic head per criterion on the mean-pooled last layer, in one flat buffer (the optimiser,
/// clipping and checkpoints see one vector). LoRA modules by layer, then target, A [rank × in] before
/// B [out × rank]; then the heads' weights [criteria × hidden], then their biases.
public struct EncoderInspectorParameters: Sendable {
    public struct Slot: Sendable {
        public let layer: Int
        public let target: EncoderLoRATarget
        public let inputs: Int
        public let outputs: Int
        public let a: Int
        public let b: Int
    }

    public let config: EncoderLoRAConfig
    public let criteria: [String]
    public let hidden: Int
    public let slots: [Slot]
    /// Offsets of the heads' weights and biases.
    public let headWeights: Int
    public let headBiases: Int
    public var values: [Float]
    public var count: Int { values.count }
    private let lookup: [[Int?]]

    public init(config: EncoderLoRAConfig, model: BERTConfig, criteria: [String]) {
        self.config = config
        self.criteria = criteria
        hidden = model.hiddenSize
        var slots: [Slot] = []
        var offset = 0
        for layer in 0..<model.numHiddenLayers where config.adapts(layer: layer) {
            for t in config.targets {
                let (i, o) = t.shape(model)
                slots.append(Slot(layer: layer, target: t, inputs: i, outputs: o, a: offset, b: offset + config.rank * i))
                offset += config.rank * (i + o)
            }
        }
        self.slots = slots
        headWeights = offset
        headBiases = offset + criteria.count * hidden
        values = [Float](repeating: 0, count: headBiases + criteria.count)
        var table = [[Int?]](repeating: [Int?](repeating: nil, count: EncoderLoRATarget.allCases.count), count: model.numHiddenLayers)
        for (n, s) in slots.enumerated() { table[s.layer][s.target.index] = n }
        lookup = table
    }

    public func slotIndex(layer: Int, _ target: EncoderLoRATarget) -> Int? {
        guard layer < lookup.count else { return nil }
        return lookup[layer][target.index]
    }

    /// PEFT's LoRA initialisation (A ~ U(−1/√in, 1/√in), B = 0: training starts from the frozen
    /// encoder exactly) and heads ~ U(−1/√hidden, 1/√hidden) with zero biases, so the first steps
    /// already pass gradients into the adapters.
    public mutating func initialise(seed: UInt64) {
        var rng = SplitMix64(seed: seed)
        for s in slots {
            let bound = 1 / Float(s.inputs).squareRoot()
            for i in 0..<(config.rank * s.inputs) { values[s.a + i] = (rng.uniform() * 2 - 1) * bound }
            for i in 0..<(s.outputs * config.rank) { values[s.b + i] = 0 }
        }
        let bound = 1 / Float(hidden).squareRoot()
        for i in 0..<(criteria.count * hidden) { values[headWeights + i] = (rng.uniform() * 2 - 1) * bound }
        for c in criteria.indices { values[headBiases + c] = 0 }
    }

    /// The parameters in the servable form.
    public func adapter() -> EncoderInspectorAdapter {
        let r = config.rank
        return EncoderInspectorAdapter(
            config: config, criteria: criteria,
            modules: slots.map { s in
                EncoderLoRAModule(layer: s.layer, target: s.target, inputs: s.inputs, outputs: s.outputs,
                                  a: Array(values[s.a..<s.a + r * s.inputs]), b: Array(values[s.b..<s.b + s.outputs * r]))
            },
            headWeights: Array(values[headWeights..<headBiases]), headBiases: Array(values[headBiases...]))
    }

    /// Takes the values of an adapter of the same configuration.
    public mutating func load(_ adapter: EncoderInspectorAdapter) throws {
        guard adapter.criteria == criteria, adapter.headWeights.count == criteria.count * hidden else {
            throw TrainingError.adapterMismatch("the adapter's criteria \(adapter.criteria) differ from \(criteria)")
        }
        for s in slots {
            guard let m = adapter.module(layer: s.layer, s.target), m.a.count == config.rank * s.inputs,
                  m.b.count == s.outputs * config.rank else {
                throw TrainingError.adapterMismatch("the adapter has no \(s.target.rawValue) of layer \(s.layer) at rank \(config.rank)")
            }
            for i in 0..<m.a.count { values[s.a + i] = m.a[i] }
            for i in 0..<m.b.count { values[s.b + i] = m.b[i] }
        }
        for i in adapter.headWeights.indices { values[headWeights + i] = adapter.headWeights[i] }
        for i in adapter.headBiases.indices { values[headBiases + i] = adapter.headBiases[i] }
    }
}
