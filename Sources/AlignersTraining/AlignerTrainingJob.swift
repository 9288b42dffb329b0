import AlignersEngine
import AlignersKernels
import AlignersSquadModels
import Foundation

/// One aligner's training, end to end: the data of a criterion (with no-op pairs), the frozen base
/// decoder, LoRA on top, the training loop, and the PEFT adapter and its card written at every new
/// best step. `aligners train aligner` only turns its flags into one of these.
public struct AlignerTrainingJob: Sendable {
    public var criterion: String
    /// Preference rows (`../shared/data/<criterion>.jsonl`): split=train trains, split=valid validates.
    public var data: URL
    /// Other criteria's files whose good answers become no-op pairs.
    public var noopData: [URL] = []
    public var dataOptions = AlignerDataOptions()
    /// The first N validation examples are used.
    public var validExamples = 160
    public var lora: LoRAConfig
    public var loop: LoRATrainingOptions
    /// The base GGUF.
    public var model: String
    public var outputDirectory: URL
    /// The command that reproduces the adapter (for its card).
    public var command: String

    public init(criterion: String, data: URL, lora: LoRAConfig, loop: LoRATrainingOptions, model: String, outputDirectory: URL,
                command: String) {
        self.criterion = criterion
        self.data = data
        self.lora = lora
        self.loop = loop
        self.model = model
        self.outputDirectory = outputDirectory
        self.command = command
    }

    /// Trains from scratch, or continues from the checkpoint with `resume`; pauses after `stopAfter`
    /// steps in all. `log` gets a line on the data and one on the model before the loop's own progress.
    public func run(pool: ComputePool, resume: Bool, stopAfter: Int? = nil, log: (String) -> Void) throws -> LoRATrainingReport {
        let gguf = try GGUFFile(path: model)
        let tokenizer = try BPETokenizer(gguf: gguf)
        let trainRows = try InspectorData.load(data, split: "train")
        guard !trainRows.isEmpty else { throw TrainingError.data("\(data.path): no rows with split=train") }
        let otherRows = try noopData.flatMap { try InspectorData.load($0, split: "train") }
        let trainSet = AlignerDataset.build(rows: trainRows, otherRows: otherRows, tokenizer: tokenizer, options: dataOptions)
        var validOptions = dataOptions
        validOptions.maxPerSource = nil
        let validSet = AlignerDataset.build(rows: try InspectorData.load(data, split: "valid"), tokenizer: tokenizer, options: validOptions)
        let valid = Array(validSet.examples.prefix(validExamples).map(\.sequence))
        log("\(criterion): \(trainSet.examples.count) training examples (\(trainSet.tokenCount) tokens; \(trainSet.summary); "
            + "\(trainSet.droppedForLength) over \(dataOptions.maxTokens) tokens left out), \(valid.count) validation examples")

        let t0 = Date()
        let longest = max(trainSet.examples.map(\.sequence.tokens.count).max() ?? 0, valid.map(\.tokens.count).max() ?? 0)
        let base = try FrozenLlama(gguf: gguf, pool: pool, maxPositions: max(longest, 16))
        let engine = LlamaLoRA(base: base, pool: pool)
        log(String(format: "loaded %@ as F32 for training in %.1fs; LoRA rank %d on %@ (%d parameters); OpenBLAS kernels: %@",
                   URL(fileURLWithPath: model).lastPathComponent, Date().timeIntervalSince(t0), lora.rank,
                   lora.targets.map(\.rawValue).joined(separator: ","), LoRAParameters(config: lora, model: base.config).count, BLAS.coreName))
        let trainer = LoRATrainer(model: engine, lora: lora, train: trainSet.examples.map(\.sequence), valid: valid, options: loop,
                                  outputDirectory: outputDirectory) { params, report in
            try PEFTAdapter.save(params.adapter(name: criterion), model: base.config, to: outputDirectory.path, half: true)
            try AdapterCard(criterion: criterion, command: command, baseModel: lora.baseModel, data: data.lastPathComponent,
                            dataSummary: trainSet.summary, trainExamples: trainSet.examples.count, trainTokens: trainSet.tokenCount,
                            validExamples: valid.count, droppedForLength: trainSet.droppedForLength, lora: lora, options: loop,
                            report: report).write(to: outputDirectory)
        }
        return try trainer.run(resume: resume, stopAfter: stopAfter)
    }
}
