import AlignersCore
import AlignersEngine
import AlignersKernels
import AlignersSquadModels
import Foundation

/// One criterion's inspector on the decoder, end to end: the verdict prompts (own pairs, other sets'
/// good answers as positives), LoRA on the frozen decoder trained on the "Yes"/"No" logit, Platt
/// calibration on the valid split, metrics on valid and test, and the PEFT adapter and its card.
/// `aligners train verdict-inspector` only turns its flags into one of these.
public struct VerdictInspectorTrainingJob: Sendable {
    public var criterion: String
    /// Criteria whose sets give labels (`criterion` among them).
    public var criteria: [String]
    /// The criterion's description, as the prompt asks about it.
    public var description: String
    /// Holds `<criterion>.jsonl` per criterion.
    public var dataDirectory: URL
    public var outputDirectory: URL
    public var model: String
    public var lora: LoRAConfig
    public var loop: LoRATrainingOptions
    public var dataOptions = InspectorDataOptions()
    /// Rows of each other criterion's train split used (their good answers only).
    public var otherRows = 1000
    public var maxTokens = 640
    public var validExamples = 400
    /// Measure the base model as a judge, without training.
    public var zeroShot = false
    public var skipTest = false
    public var command: String

    public init(criterion: String, criteria: [String], description: String, dataDirectory: URL, outputDirectory: URL, model: String,
                lora: LoRAConfig, loop: LoRATrainingOptions, command: String) {
        self.criterion = criterion
        self.criteria = criteria
        self.description = description
        self.dataDirectory = dataDirectory
        self.outputDirectory = outputDirectory
        self.model = model
        self.lora = lora
        self.loop = loop
        self.command = command
    }

    public enum Outcome: Sendable {
        case paused(step: Int, of: Int)
        case finished(VerdictInspectorCard)
    }

    /// Trains (unless `zeroShot`; continues with `resume`), calibrates, measures and writes.
    /// `progress(split, done, total)` follows the scoring of the valid and test splits.
    public func run(pool: ComputePool, resume: Bool, stopAfter: Int? = nil, log: (String) -> Void,
                    progress: @escaping (String, Int, Int) -> Void = { _, _, _ in }) throws -> Outcome {
        guard let c = criteria.firstIndex(of: criterion) else { throw TrainingError.data("the criteria must include \(criterion)") }
        let gguf = try GGUFFile(path: model)
        let tokenizer = try BPETokenizer(gguf: gguf)
        // Rows per split; the other criteria's train rows cut to `otherRows` (their good answers only count).
        let rows = try CriterionRows.load(criteria, from: dataDirectory, trainCap: { $0 == c ? nil : otherRows },
                                          seed: { loop.seed &+ UInt64($0) })
        let splits = rows.splits, files = rows.files
        func set(_ split: String) -> VerdictSet {
            VerdictSet.build(LabelledExchange.build(criteria: criteria, rows: splits[split]!, options: dataOptions), criterion: c,
                             description: description, tokenizer: tokenizer, maxTokens: maxTokens)
        }
        let train = zeroShot ? VerdictSet.empty : set("train")
        let valid = set("valid")
        let test = skipTest ? VerdictSet.empty : set("test")
        guard !valid.examples.isEmpty else { throw TrainingError.data("no valid examples for \(criterion) (split=valid rows in \(dataDirectory.path))") }
        log("\(criterion): \(train.examples.count) training examples (\(train.tokenCount) tokens, \(train.dropped) over \(maxTokens) "
            + "tokens left out), \(valid.examples.count) valid, \(test.examples.count) test")

        let t0 = Date()
        let longest = [train, valid, test].flatMap { $0.examples.map(\.tokens.count) }.max() ?? 16
        let base = try FrozenLlama(gguf: gguf, pool: pool, maxPositions: max(longest, 16))
        let judge = LlamaVerdicts(engine: LlamaLoRA(base: base, pool: pool), answers: try LlamaVerdicts.answerTokens(tokenizer))
        log(String(format: "loaded %@ as F32 in %.1fs; LoRA rank %d on %@; OpenBLAS kernels: %@",
                   URL(fileURLWithPath: model).lastPathComponent, Date().timeIntervalSince(t0), lora.rank,
                   lora.targets.map(\.rawValue).joined(separator: ","), BLAS.coreName))

        var initial = LoRAParameters(config: lora, model: base.config)
        initial.initialise(seed: loop.seed)
        var params = initial   // B = 0: the base model itself
        var report: LoRATrainingReport?
        if !zeroShot {
            final class Best: @unchecked Sendable { var params: LoRAParameters? }
            let best = Best()
            let trainer = Trainer(model: judge, initial: initial, train: train.examples, valid: valid.sample(validExamples, seed: loop.seed),
                                  options: loop, outputDirectory: outputDirectory.appendingPathComponent("run")) { p, _ in best.params = p }
            let r = try trainer.run(resume: resume, stopAfter: stopAfter)
            if r.steps < trainer.totalSteps && !r.stoppedEarly { return .paused(step: r.steps, of: trainer.totalSteps) }
            guard let p = best.params else { throw TrainingError.data("training ended without a validated step (is the valid split empty?)") }
            params = p
            report = r
        }

        log("calibrating on \(valid.examples.count) valid examples and measuring valid\(skipTest ? "" : " and test")…")
        let validLogits = try judge.logits(valid.examples, parameters: params, tokens: loop.microBatchTokens) { progress("valid", $0, $1) }
        let fit = PlattScaling.fit(logits: validLogits, labels: valid.examples.map { Int($0.label) }, weights: valid.examples.map { Double($0.weight) })
        func metrics(_ s: VerdictSet, _ z: [Float]) -> InspectorSetMetrics {
            let p = z.map { v in [Float](repeating: 1 / (1 + exp(-(fit.a * v + fit.b))), count: criteria.count) }
            return InspectorSetMetrics(criteria: criteria, origins: s.origins, probabilities: p, only: c, rejectedMeets: dataOptions.rejectedMeets)
        }
        var measured = ["valid": metrics(valid, validLogits)]
        if !test.examples.isEmpty {
            let testLogits = try judge.logits(test.examples, parameters: params, tokens: loop.microBatchTokens) { progress("test", $0, $1) }
            measured["test"] = metrics(test, testLogits)
        }

        try FileManager.default.createDirectory(at: outputDirectory, withIntermediateDirectories: true)
        if !zeroShot { try PEFTAdapter.save(params.adapter(name: "verdict-\(criterion)"), model: base.config, to: outputDirectory.path, half: true) }
        let card = VerdictInspectorCard(criterion: criterion, description: description, baseModel: lora.baseModel, command: command, data: files,
                                        examples: ["train": train.examples.count, "valid": valid.examples.count, "test": test.examples.count],
                                        droppedForLength: ["train": train.dropped, "valid": valid.dropped, "test": test.dropped],
                                        answers: judge.answers, rank: lora.rank, alpha: lora.alpha, targets: lora.targets.map(\.rawValue),
                                        dataOptions: dataOptions, otherRows: otherRows, training: zeroShot ? nil : loop, report: report,
                                        platt: [fit.a, fit.b], metrics: measured,
                                        date: String(ISO8601DateFormatter().string(from: Date()).prefix(10)), openblasKernels: BLAS.coreName)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        try encoder.encode(card).write(to: outputDirectory.appendingPathComponent(zeroShot ? "zero-shot.json" : "verdict.json"), options: .atomic)
        return .finished(card)
    }
}

/// The card written beside a decoder verdict inspector: how it was made and what it measures.
public struct VerdictInspectorCard: Codable, Sendable {
    public var criterion: String
    public var description: String
    public var baseModel: String
    public var command: String
    public var data: [String]
    public var examples: [String: Int]
    public var droppedForLength: [String: Int]
    public var answers: VerdictTokens
    public var rank: Int
    public var alpha: Float
    public var targets: [String]
    public var dataOptions: InspectorDataOptions
    public var otherRows: Int
    public var training: LoRATrainingOptions?
    public var report: LoRATrainingReport?
    /// p = σ(a·z + b) on the verdict logit z, fitted on the valid split.
    public var platt: [Float]
    public var metrics: [String: InspectorSetMetrics]
    public var date: String
    public var openblasKernels: String
}

