import AlignersCore
import AlignersSchema
import Foundation

extension Envelope {
    /// The `(x, y)` pair models see.
    var exchange: Exchange {
        Exchange(conversation: conversation.map { Turn(role: $0.role, content: $0.content) }, response: response)
    }
}

/// Scores every envelope on every criterion of an inspector set (one job per sample chunk) and
/// appends a score record per criterion.
public struct InspectorStage: StageHandler {
    public let inspectors: any InspectorSet
    public init(_ inspectors: any InspectorSet) { self.inspectors = inspectors }
    /// Inspectors that share nothing, side by side.
    public init(_ inspectors: [any Inspector]) { self.init(InspectorGroup(inspectors)) }
    public init(_ inspector: any Inspector) { self.init(OneInspector(inspector)) }
    public var service: StageService { .inspect }
    public var model: String { inspectors.modelName }
    public var criteria: [String] { inspectors.criteria }

    public func process(_ envelopes: [Envelope]) throws -> [Envelope] {
        let criteria = inspectors.criteria
        let rows = try inspectors.score(envelopes.map(\.exchange))
        guard rows.count == envelopes.count, rows.allSatisfy({ $0.count == criteria.count }) else {
            throw StageError("inspectors \(model) returned \(rows.count) rows of scores for \(envelopes.count) samples "
                             + "(each should hold \(criteria.count))")
        }
        let now = unixNanos()
        return zip(envelopes, rows).map { envelope, scores in
            var out = envelope
            for (criterion, score) in zip(criteria, scores) {
                var record = Aligners_V1_ScoreRecord()
                record.criterion = criterion
                record.score = score.isFinite ? min(max(score, 0), 1) : 0
                record.model = model
                record.scoredUnixNs = now
                out.scores.append(record)
            }
            return out
        }
    }
}

/// Rewrites every envelope's response with one aligner and records the step.
public struct AlignerStage: StageHandler {
    public let aligner: any Aligner
    public init(_ aligner: any Aligner) { self.aligner = aligner }
    public var service: StageService { .align(aligner.criterion) }
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
    public var service: StageService { .generate }
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
                out.error = EnvelopeError(.modelFailed, "generator \(model) produced an empty response", stage: service.name)
            }
            return out
        }
    }
}
