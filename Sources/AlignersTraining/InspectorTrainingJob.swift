import AlignersCore
import AlignersEngine
import AlignersKernels
import AlignersSquadModels
import Foundation

/// The fine-tuned inspectors' training, end to end: every criterion's rows (with the other sets'
/// good answers as positives), LoRA on the encoder with a head per criterion, the training loop,
/// Platt calibration of each head on the valid split, the metrics on valid and test, and the
/// artifact and its card. `aligners train inspectors` only turns its flags into one of these.
public struct InspectorTrainingJob: Sendable {
    public var criteria: [String]
    /// Holds `<criterion>.jsonl` per criterion (the `../shared/data` format).
    public var dataDirectory: URL
    public var outputDirectory: URL
    public var lora: EncoderLoRAConfig
    public var dataOptions = InspectorDataOptions()
    public var loop: LoRATrainingOptions
    /// Most rows of each criterion's train split (nil: all).
    public var maxRows: Int?
    /// Validation examples for the loss that picks the best step.
    public var validExamples = 1200
    public var modelsDirectory: String?
    /// The command that reproduces the artifact (for its card).
    public var command: String

    public init(criteria: [String], dataDirectory: URL, outputDirectory: URL, lora: EncoderLoRAConfig, loop: LoRATrainingOptions,
                command: String) {
        self.criteria = criteria
        self.dataDirectory = dataDirectory
        self.outputDirectory = outputDirectory
        self.lora = lora
        self.loop = loop
        self.command = command
    }

    public enum Outcome: Sendable {
        /// Stopped by `stopAfter` before the end: continue with `resume`.
        case paused(step: Int, of: Int)
        /// Trained, calibrated and written: the card (metrics per split) and the artifact's path.
        case finished(FineTunedInspectorCard, artifact: URL)
    }

    /// Trains (or continues with `resume`), then calibrates, measures and writes. `log` gets lines on
    /// the data, the model and the calibration beside the loop's own progress.
    public func run(pool: ComputePool, resume: Bool, stopAfter: Int? = nil, log: (String) -> Void) throws -> Outcome {
        guard !criteria.isEmpty else { throw TrainingError.data("no criteria to train") }
        let featurizer = try InspectorFeaturizer.load(modelsDir: modelsDirectory, maxLength: dataOptions.maxLength, pool: pool)
        let rows = try CriterionRows.load(criteria, from: dataDirectory, trainCap: { _ in maxRows }, seed: { _ in loop.seed })
        let splits = rows.splits, counts = rows.counts, files = rows.files
        for name in criteria where counts[name]!["train"]! == 0 || counts[name]!["valid"]! == 0 {
            throw TrainingError.data("\(dataDirectory.appendingPathComponent("\(name).jsonl").path): needs rows with split=train and split=valid")
        }
        let encode = { (e: Exchange) in featurizer.pairEncoding(e) }
        let train = InspectorTrainingSet.build(criteria: criteria, rows: splits["train"]!, options: dataOptions, encode: encode)
        let valid = InspectorTrainingSet.build(criteria: criteria, rows: splits["valid"]!, options: dataOptions, encode: encode)
        let test = InspectorTrainingSet.build(criteria: criteria, rows: splits["test"]!, options: dataOptions, encode: encode)
        let validSample = valid.sample(validExamples, seed: loop.seed)
        log("\(criteria.joined(separator: ", ")): \(train.examples.count) training examples (\(train.tokenCount) tokens), "
            + "\(valid.examples.count) valid (\(validSample.examples.count) for the loss), \(test.examples.count) test")

        var initial = EncoderInspectorParameters(config: lora, model: featurizer.encoder.config, criteria: criteria)
        initial.initialise(seed: loop.seed)
        log("LoRA rank \(lora.rank) on \(lora.targets.count) projections of \(featurizer.encoder.config.numHiddenLayers) layers + "
            + "\(criteria.count) heads: \(initial.count) parameters; OpenBLAS kernels: \(BLAS.coreName)")

        let engine = BERTLoRA(base: featurizer.encoder, pool: pool)
        final class Best: @unchecked Sendable { var params: EncoderInspectorParameters? }
        let best = Best()
        let trainer = Trainer(model: engine, initial: initial, train: train.examples, valid: validSample.examples, options: loop,
                              outputDirectory: outputDirectory.appendingPathComponent("fine-tuned-run")) { params, _ in best.params = params }
        let report = try trainer.run(resume: resume, stopAfter: stopAfter)
        if report.steps < trainer.totalSteps && !report.stoppedEarly { return .paused(step: report.steps, of: trainer.totalSteps) }
        guard let params = best.params else { throw TrainingError.data("training ended without a validated step (is the valid split empty?)") }

        // Each head calibrated on the whole valid split (the examples that carry its label, weighted as in training).
        log("calibrating on \(valid.examples.count) valid examples and measuring valid and test…")
        let validLogits = try engine.logits(valid.examples, parameters: params, tokens: loop.microBatchTokens)
        var adapter = params.adapter()
        for c in criteria.indices {
            let idx = valid.examples.indices.filter { valid.examples[$0].weights[c] > 0 }
            let fit = PlattScaling.fit(logits: idx.map { validLogits[$0][c] }, labels: idx.map { Int(valid.examples[$0].labels[c]) },
                                       weights: idx.map { Double(valid.examples[$0].weights[c]) })
            adapter.platt[c] = [fit.a, fit.b]
        }
        func probabilities(_ logits: [[Float]]) -> [[Float]] {
            logits.map { z in criteria.indices.map { c in 1 / (1 + exp(-(adapter.platt[c][0] * z[c] + adapter.platt[c][1]))) } }
        }
        var metrics = ["valid": InspectorSetMetrics(set: valid, probabilities: probabilities(validLogits))]
        if !test.examples.isEmpty {
            let testLogits = try engine.logits(test.examples, parameters: params, tokens: loop.microBatchTokens)
            metrics["test"] = InspectorSetMetrics(set: test, probabilities: probabilities(testLogits))
        }
        try FileManager.default.createDirectory(at: outputDirectory, withIntermediateDirectories: true)
        let date = String(ISO8601DateFormatter().string(from: Date()).prefix(10))
        let artifact = outputDirectory.appendingPathComponent(FineTunedInspectors.fileName)
        try adapter.write(to: artifact, metadata: ["encoder": "all-MiniLM-L6-v2", "max_length": String(dataOptions.maxLength), "date": date])
        let card = FineTunedInspectorCard(criteria: criteria, encoder: "all-MiniLM-L6-v2", command: command, data: files, rows: counts,
                                          lora: lora, dataOptions: dataOptions, training: loop, report: report,
                                          platt: Dictionary(uniqueKeysWithValues: criteria.indices.map { (criteria[$0], adapter.platt[$0]) }),
                                          metrics: metrics, date: date, openblasKernels: BLAS.coreName)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        try encoder.encode(card).write(to: outputDirectory.appendingPathComponent(FineTunedInspectors.cardName), options: .atomic)
        return .finished(card, artifact: artifact)
    }
}

/// The card written beside fine-tuned inspectors: how they were made and what they measure.
public struct FineTunedInspectorCard: Codable, Sendable {
    public var criteria: [String]
    public var encoder: String
    public var command: String
    public var data: [String]
    public var rows: [String: [String: Int]]
    public var lora: EncoderLoRAConfig
    public var dataOptions: InspectorDataOptions
    public var training: LoRATrainingOptions
    public var report: LoRATrainingReport
    public var platt: [String: [Float]]
    public var metrics: [String: InspectorSetMetrics]
    public var date: String
    public var openblasKernels: String
}
