import Foundation
import AlignersEngine
import AlignersSquadModels

/// How an adapter was made: written beside it as `training.json` and as a readable `README.md`
/// (the card), so that anyone can tell what data and settings produced it and rerun the command.
public struct AdapterCard: Codable, Sendable {
    public var criterion: String
    public var command: String
    public var baseModel: String
    public var data: String
    public var dataSummary: String
    public var trainExamples: Int
    public var trainTokens: Int
    public var validExamples: Int
    public var droppedForLength: Int
    public var rank: Int
    public var alpha: Float
    public var dropout: Float
    public var targets: [String]
    public var options: LoRATrainingOptions
    public var report: LoRATrainingReport
    public var machine: String
    public var date: String

    public init(criterion: String, command: String, baseModel: String, data: String, dataSummary: String, trainExamples: Int, trainTokens: Int,
                validExamples: Int, droppedForLength: Int, lora: LoRAConfig, options: LoRATrainingOptions, report: LoRATrainingReport) {
        self.criterion = criterion
        self.command = command
        self.baseModel = baseModel
        self.data = data
        self.dataSummary = dataSummary
        self.trainExamples = trainExamples
        self.trainTokens = trainTokens
        self.validExamples = validExamples
        self.droppedForLength = droppedForLength
        rank = lora.rank
        alpha = lora.alpha
        dropout = lora.dropout
        targets = lora.targets.map(\.rawValue)
        self.options = options
        self.report = report
        machine = Self.machineDescription()
        date = ISO8601DateFormatter().string(from: Date())
    }

    public func write(to directory: URL) throws {
        let enc = JSONEncoder()
        enc.outputFormatting = [.prettyPrinted, .sortedKeys]
        try enc.encode(self).write(to: directory.appendingPathComponent("training.json"), options: .atomic)
        try Data(markdown.utf8).write(to: directory.appendingPathComponent("README.md"), options: .atomic)
    }

    public var markdown: String {
        let r = report, o = options
        let best = r.bestValidLoss.map { String(format: "%.4f at step %d", $0, r.bestStep ?? 0) } ?? "no validation set"
        let base = r.validHistory.first.map { String(format: "%.4f", $0[1]) } ?? "–"
        return """
        # \(criterion) aligner (LoRA adapter)

        A PEFT LoRA adapter for \(baseModel), trained by `aligners train aligner` on
        `x [INIT] y [ALIGNED] y' [DONE]` with the loss on `y' [DONE]` only (the paper's aligner format).
        Loads in PEFT (`PeftModel.from_pretrained`) and in `aligners` (`aligner: {kind: trained, adapter: …}`).

        | | |
        |---|---|
        | data | `\(data)`: \(dataSummary) |
        | examples | \(trainExamples) train (\(trainTokens) tokens), \(validExamples) valid; \(droppedForLength) left out for length |
        | LoRA | rank \(rank), alpha \(alpha), dropout \(dropout), on \(targets.joined(separator: ", ")) |
        | optimiser | AdamW lr \(o.learningRate), \(o.warmupSteps) warm-up steps, cosine to \(o.minLearningRate)×, weight decay \(o.weightDecay), clip \(o.clipNorm) |
        | batches | \(o.batchSize) sequences per step, micro-batches of ≤ \(o.microBatchTokens) tokens, seed \(o.seed) |
        | steps | \(r.steps) of \(r.totalSteps) (\(String(format: "%.2f", r.epochsDone)) epochs)\(r.stoppedEarly ? ", stopped early" : "") |
        | tokens | \(r.tokensSeen) trained on, \(String(format: "%.0f", r.tokensPerSecond)) tokens/s (validation included) |
        | wall time | \(AdapterCard.duration(r.seconds)) on \(machine) |
        | valid loss | \(base) before training → best \(best) (kept) |

        Reproduce (from the repository root):

            \(command)

        """
    }

    static func duration(_ s: Double) -> String { TrainingProgress.duration(s) }

    static func machineDescription() -> String {
        let cpu = (try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8))?
            .split(separator: "\n").first { $0.hasPrefix("model name") }?
            .split(separator: ":", maxSplits: 1).last.map { $0.trimmingCharacters(in: .whitespaces) } ?? "unknown CPU"
        return "\(ProcessInfo.processInfo.activeProcessorCount) × \(cpu)"
    }
}
