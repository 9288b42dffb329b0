import AlignersCore
import Foundation
import AlignersEngine
import AlignersSquadModels

/// Trainable parameters of the fine-tuned inspectors: LoRA matrices on the encoder's projections and
/// one logistic head per criterion on the mean-pooled last layer, in one flat buffer (the optimiser,
/// clipping and checkpoints see one vector). LoRA modules by layer, then target, A [rank × in] before
/// B [out × rank]; then the heads' weights [criteria × hidden], then their biases.
public struct EncoderInspectorParameters: Sendable {
    public let config: EncoderLoRAConfig
    public let criteria: [String]
    public let hidden: Int
    public let layout: LoRALayout<EncoderLoRATarget>
    public var slots: [LoRALayout<EncoderLoRATarget>.Slot] { layout.slots }
    /// Offsets of the heads' weights and biases.
    public let headWeights: Int
    public let headBiases: Int
    public var values: [Float]
    public var count: Int { values.count }

    public init(config: EncoderLoRAConfig, model: BERTConfig, criteria: [String]) {
        self.config = config
        self.criteria = criteria
        hidden = model.hiddenSize
        layout = LoRALayout(rank: config.rank, layers: model.numHiddenLayers, targets: config.targets, adapts: config.adapts(layer:),
                            shape: { $0.shape(model) })
        headWeights = layout.end
        headBiases = layout.end + criteria.count * hidden
        values = [Float](repeating: 0, count: headBiases + criteria.count)
    }

    public func slotIndex(layer: Int, _ target: EncoderLoRATarget) -> Int? { layout.slotIndex(layer: layer, target) }

    /// PEFT's LoRA initialisation (A ~ U(−1/√in, 1/√in), B = 0: training starts from the frozen
    /// encoder exactly) and heads ~ U(−1/√hidden, 1/√hidden) with zero biases, so the first steps
    /// already pass gradients into the adapters.
    public mutating func initialise(seed: UInt64) {
        var rng = SplitMix64(seed: seed)
        layout.initialise(&values, rng: &rng)
        let bound = 1 / Float(hidden).squareRoot()
        for i in 0..<(criteria.count * hidden) { values[headWeights + i] = (rng.uniform() * 2 - 1) * bound }
        for c in criteria.indices { values[headBiases + c] = 0 }
    }

    /// The parameters in the servable form.
    public func adapter() -> EncoderInspectorAdapter {
        EncoderInspectorAdapter(config: config, criteria: criteria, modules: layout.matrices(values),
                                headWeights: Array(values[headWeights..<headBiases]), headBiases: Array(values[headBiases...]))
    }

    /// Takes the values of an adapter of the same configuration.
    public mutating func load(_ adapter: EncoderInspectorAdapter) throws {
        guard adapter.criteria == criteria, adapter.headWeights.count == criteria.count * hidden else {
            throw TrainingError.adapterMismatch("the adapter's criteria \(adapter.criteria) differ from \(criteria)")
        }
        try layout.load({ adapter.module(layer: $0, $1) }, into: &values)
        for i in adapter.headWeights.indices { values[headWeights + i] = adapter.headWeights[i] }
        for i in adapter.headBiases.indices { values[headBiases + i] = adapter.headBiases[i] }
    }
}
