import AlignersCore
import AlignersSchema
import Foundation

extension Envelope {
    /// The `(x, y)` pair models see.
    var exchange: Exchange {
        Exchange(conversation: conversation.map { Turn(role: $0.role, content: $0.content) }, response: response)
    }
}

/// Scores every envelope with one inspector and appends the score to its history.
public struct InspectorStage: StageHandler {
    public let inspector: any Inspector
    public init(_ inspector: any Inspector) { self.inspector = inspector }
    public var service: String { ServiceName.inspect(inspector.criterion) }
    public var model: String { inspector.modelName }

    public func process(_ envelopes: [Envelope]) throws -> [Envelope] {
        let scores = try inspector.score(envelopes.map(\.exchange))
        guard scores.count == envelopes.count else {
            throw StageError("inspector \(model) returned \(scores.count) scores for \(envelopes.count) samples")
        }
        let now = unixNanos()
        return zip(envelopes, scores).map { envelope, score in
            var out = envelope
            var record = Aligners_V1_ScoreRecord()
            record.criterion = inspector.criterion
            record.score = score.isFinite ? min(max(score, 0), 1) : 0
            record.model = model
            record.scoredUnixNs = now
            out.scores.append(record)
            return out
        }
    }
}

/// Scores every envelope on several criteria in one job (service `inspect.*`): the router's
/// `combinedInspection`. Inspectors that share a model (fine-tuned inspectors on one merged encoder,
/// heads on one featurizer) then encode each sample once for all criteria.
public struct InspectorSetStage: StageHandler {
    public let stages: [InspectorStage]
    public init(_ inspectors: [any Inspector]) { stages = inspectors.map(InspectorStage.init) }
    public var service: String { ServiceName.inspectAll }
    public var model: String { Array(Set(stages.map(\.model))).sorted().joined(separator: ",") }
    public var criteria: [String] { stages.map(\.inspector.criterion) }

    public func process(_ envelopes: [Envelope]) throws -> [Envelope] {
        var out = envelopes
        for stage in stages { out = try stage.process(out) }
        return out
    }
}

/// Rewrites every envelope's response with one aligner and records the step.
public struct AlignerStage: StageHandler {
    public let aligner: any Aligner
    public init(_ aligner: any Aligner) { self.aligner = aligner }
    public var service: String { ServiceName.align(aligner.criterion) }
    public var model: String { aligner.modelName }

    public func process(_ envelopes: [Envelope]) throws -> [Envelope] {
        let started = unixNanos()
        let t0 = monotonicNanos()
        let alignments = try aligner.align(envelopes.map(\.exchange))
        guard alignments.count == envelopes.count else {
            throw StageError("aligner \(model) returned \(alignments.count) answers for \(envelopes.count) samples")
        }
        // Batched models take the batch's time together; each step records its share.
        let share = (monotonicNanos() - t0) / UInt64(max(1, envelopes.count))
        return zip(envelopes, alignments).map { envelope, alignment in
            var out = envelope
            var step = Aligners_V1_Step()
            step.criterion = aligner.criterion
            step.aligner = model
            step.startedUnixNs = started
            step.durationNs = share
            let usable = !alignment.response.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty
            if usable { out.response = alignment.response }
            step.changed = usable && alignment.response != envelope.response
            step.note = alignment.note ?? (usable ? "" : "aligner produced an empty response; original kept")
            out.steps.append(step)
            return out
        }
    }
}

/// Writes the response of envelopes that arrived without one.
public struct GeneratorStage: StageHandler {
    public let generator: any Generator
    public init(_ generator: any Generator) { self.generator = generator }
    public var service: String { ServiceName.generate }
    public var model: String { generator.modelName }

    public func process(_ envelopes: [Envelope]) throws -> [Envelope] {
        let answers = try generator.generate(envelopes.map { $0.conversation.map { Turn(role: $0.role, content: $0.content) } })
        guard answers.count == envelopes.count else {
            throw StageError("generator \(model) returned \(answers.count) answers for \(envelopes.count) prompts")
        }
        return zip(envelopes, answers).map { envelope, answer in
            var out = envelope
            out.response = answer
            out.originalResponse = answer
            out.generated = true
            if answer.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty {
                out.error = EnvelopeError(.modelFailed, "generator \(model) produced an empty response", stage: service)
            }
            return out
        }
    }
}
