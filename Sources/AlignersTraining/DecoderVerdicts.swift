import Foundation
import AlignersCore
import AlignersEngine
import AlignersSquadModels

/// The decoder as an inspector of one criterion: LoRA on SmolLM2 trained on `VerdictPrompt`s with a
/// weighted logistic loss on the "Yes"/"No" logit (`LlamaLoRA.runVerdicts`), through the same
/// `Trainer` as the aligners (optimiser, checkpoints, `--resume`, progress).
public final class LlamaVerdicts: TrainableModel {
    public let engine: LlamaLoRA
    public let answers: VerdictTokens

    public init(engine: LlamaLoRA, answers: VerdictTokens) {
        self.engine = engine
        self.answers = answers
    }

    /// "Yes" and "No" as the tokenizer writes them at the start of a reply (one token each).
    public static func answerTokens(_ tokenizer: BPETokenizer) throws -> VerdictTokens {
        let yes = tokenizer.encode(VerdictPrompt.yes, parseSpecial: false, addBOS: false)
        let no = tokenizer.encode(VerdictPrompt.no, parseSpecial: false, addBOS: false)
        guard yes.count == 1, no.count == 1 else {
            throw TrainingError.data("the tokenizer splits '\(VerdictPrompt.yes)' or '\(VerdictPrompt.no)' into several tokens")
        }
        return VerdictTokens(yes: yes[0], no: no[0])
    }

    public func loss(_ batch: [VerdictSequence], parameters: LoRAParameters, gradients: UnsafeMutablePointer<Float>?, lossScale: Float,
                     dropoutSeed: UInt64) throws -> Double {
        try engine.runVerdicts(batch, answers: answers, parameters: parameters, gradients: gradients, lossScale: lossScale,
                               dropoutSeed: dropoutSeed).loss
    }
    public static func lossWeight(_ e: VerdictSequence) -> Double { Double(e.weight) }
    public static func tokens(_ e: VerdictSequence) -> Int { e.tokens.count }
    public static func fingerprint(_ e: VerdictSequence, into h: inout Hasher64) {
        for t in e.tokens { h.add(t) }
        h.add(Int(e.label * 1000)); h.add(Int(e.weight * 1_000_000))
    }

    /// The verdict logits of many examples, in input order, in micro-batches of about `tokens` tokens.
    public func logits(_ examples: [VerdictSequence], parameters: LoRAParameters, tokens: Int = 2048,
                       progress: ((Int, Int) -> Void)? = nil) throws -> [Float] {
        var out = [Float](repeating: 0, count: examples.count)
        var done = 0
        let order = examples.indices.sorted { examples[$0].tokens.count < examples[$1].tokens.count }
        for mb in microBatches(order, lengths: examples.map(\.tokens.count), tokens: tokens) {
            let r = try engine.runVerdicts(mb.map { examples[$0] }, answers: answers, parameters: parameters, gradients: nil)
            for (k, i) in mb.enumerated() { out[i] = r.logits[k] }
            done += mb.count
            progress?(done, examples.count)
        }
        return out
    }
}

/// One criterion's verdict examples from labelled answers (those that carry its label), with where
/// each came from.
public struct VerdictSet: Sendable {
    public var examples: [VerdictSequence]
    public var origins: [VerdictOrigin]
    /// Answers left out for length.
    public var dropped: Int
    public var tokenCount: Int { examples.reduce(0) { $0 + $1.tokens.count } }

    public static let empty = VerdictSet(examples: [], origins: [], dropped: 0)

    public static func build(_ labelled: [LabelledExchange], criterion c: Int, description: String, tokenizer: BPETokenizer,
                             maxTokens: Int) -> VerdictSet {
        var set = VerdictSet(examples: [], origins: [], dropped: 0)
        for e in labelled where e.weights[c] > 0 {
            let tokens = tokenizer.encode(VerdictPrompt.text(criterion: description, exchange: e.exchange), parseSpecial: true)
            guard tokens.count <= maxTokens else { set.dropped += 1; continue }
            set.examples.append(VerdictSequence(tokens: tokens, label: e.labels[c], weight: e.weights[c]))
            set.origins.append(e.origin)
        }
        return set
    }

    /// About `limit` examples in a seeded order (the validation loss that picks the best step).
    public func sample(_ limit: Int, seed: UInt64) -> [VerdictSequence] {
        guard examples.count > limit else { return examples }
        var rng = SplitMix64(seed: seed)
        return Array(examples.shuffled(using: &rng).prefix(limit))
    }
}
