import AlignersCore
import AlignersKernels
import AlignersEngine
import AlignersSquadModels
import AlignersTraining
import ArgumentParser
import Foundation

/// The card written beside a decoder verdict inspector: how it was made and what it measures.
struct VerdictInspectorCard: Codable {
    var criterion: String
    var description: String
    var baseModel: String
    var command: String
    var data: [String]
    var examples: [String: Int]
    var droppedForLength: [String: Int]
    var answers: VerdictTokens
    var rank: Int
    var alpha: Float
    var targets: [String]
    var dataOptions: InspectorDataOptions
    var otherRows: Int
    var training: LoRATrainingOptions?
    var report: LoRATrainingReport?
    /// p = σ(a·z + b) on the verdict logit z, fitted on the valid split.
    var platt: [Float]
    var metrics: [String: InspectorSetMetrics]
    var date: String
    var openblasKernels: String
}

struct TrainVerdictInspectorCommand: ParsableCommand, TrainingLoopFlags {
    static let configuration = CommandConfiguration(
        commandName: "verdict-inspector",
        abstract: "Train one criterion's inspector on the decoder: LoRA on SmolLM2 asked \"does the answer meet the criterion?\".",
        discussion: """
            The decoder route for an inspector (the encoder route is `train inspectors`). Each answer becomes a
            chat prompt naming the criterion's description (Criteria/<name>.yaml) and the verdict is the logit of
            "Yes" against "No" at the start of the reply, trained with a weighted logistic loss: (x, rejected)
            violates the criterion, (x, chosen) meets it, and good answers of the other criteria's sets (at most
            --other-rows rows each) meet it with --cross-weight. Chooses the best step by loss on part of the
            valid split, calibrates on the whole valid split (Platt), reports ROC-AUC per source on valid and
            test, and writes OUT/adapter_config.json + adapter_model.safetensors (PEFT) and OUT/verdict.json.
            --zero-shot measures the base model without training. Checkpoints go to OUT/run/checkpoint; continue
            with --resume and the same options. About 600 tokens/s on 2 Zen 4 cores with SkylakeX kernels.
            """.reflowed)

    @Option(help: "The criterion this inspector judges.") var criterion: String
    @Option(help: "Comma list of criteria whose sets give labels (their good answers are positives with --cross-weight).")
    var criteria = "ethical,factuality,helpful"
    @Option(help: "Directory holding <criterion>.jsonl files (the ../shared/data format).") var dataDir = "../shared/data"
    @Option(help: "Directory of criterion YAML files (the description is asked about).") var criteriaDir: String?
    @Option(help: "Output directory (default: inspectors/verdict-<criterion>).") var out: String?
    @Option(help: "Rows of each other criterion's train split used (their good answers only).") var otherRows = 1000
    @Option(help: "Weight of other sets' good answers as positives (0: own pairs only).") var crossWeight: Float = 0.5
    @Option(help: "Source and set balancing exponent: 0 raw counts, 1 equal weight per source.") var balance: Float = 0.5
    @Option(help: "Longest prompt in tokens; longer ones are left out.") var maxTokens = 640
    @Option(help: "Validation examples for the loss that picks the best step.") var validExamples = 400
    @OptionGroup var lora: LoRAOptions
    @Option(help: "Peak learning rate.") var lr: Float = 2e-4
    @Option(help: "Epochs over the training examples.") var epochs = 1.0
    @Option(help: "Stop after this many optimiser steps.") var maxSteps: Int?
    @Option(help: "Examples per optimiser step.") var batchSize = 16
    @Option(help: "Tokens per micro-batch (bounds memory: ~0.85 MB per token).") var microBatchTokens = 2048
    @Option(help: "Warm-up steps.") var warmup = 20
    @Option(help: "AdamW weight decay.") var weightDecay: Float = 0
    @Option(help: "Gradient-norm clip (0: none).") var clip: Float = 1
    @Option(help: "Random seed (data order, initialisation, dropout).") var seed: UInt64 = 1
    @Option(help: "Steps between checkpoints.") var checkpointEvery = 25
    @Option(help: "Steps between validations.") var evalEvery = 50
    @Option(help: "Validations without improvement before stopping (0: never).") var patience = 4
    @Flag(help: "Continue from OUT/run/checkpoint (same options and data).") var resume = false
    @Option(help: "Pause (with a checkpoint) once this many steps are done in all; continue later with --resume.") var stopAfter: Int?
    @Flag(help: "Measure the base model as a judge, without training.") var zeroShot = false
    @Flag(help: "Skip the test split (valid only).") var skipTest = false
    @Option(help: "The base GGUF (default: SmolLM2-135M-Instruct through the models directory).") var model: String?
    @Option(help: "Directory holding model packages.") var modelsDir: String?
    @Option(help: "Compute threads (default: $ALIGNERS_THREADS or all CPUs).") var threads: Int?

    func run() throws {
        let names = criteria.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        guard let c = names.firstIndex(of: criterion) else { throw ValidationError("--criteria must include --criterion \(criterion)") }
        let description = try CriteriaLibrary(searchDir: criteriaDir).load(criterion).description
        let outDir = URL(fileURLWithPath: out ?? "inspectors/verdict-\(criterion)")
        let path = try model.map { FileManager.default.fileExists(atPath: $0) ? $0 : try ModelLocator.locate($0, explicit: modelsDir).path }
            ?? ModelLocator.locate(TextGenerator.defaultModel, explicit: modelsDir).path
        let pool = ComputeContext.forCommand(threads: threads).pool
        let gguf = try GGUFFile(path: path)
        let tokenizer = try BPETokenizer(gguf: gguf)
        let config = try lora.config()

        // Rows per split; the other criteria's train rows cut to --other-rows (their good answers only count).
        var splits: [String: [[PreferenceRow]]] = ["train": [], "valid": [], "test": []]
        var files: [String] = []
        for (k, name) in names.enumerated() {
            let url = URL(fileURLWithPath: dataDir).appendingPathComponent("\(name).jsonl")
            guard FileManager.default.fileExists(atPath: url.path) else {
                throw ValidationError("no data for criterion '\(name)': \(url.path) does not exist (--data-dir)")
            }
            files.append(url.lastPathComponent)
            let rows = try InspectorData.load(url, split: nil)
            for split in ["train", "valid", "test"] {
                var r = rows.filter { $0.split == split }
                if k != c, split == "train", r.count > otherRows {
                    var rng = SplitMix64(seed: seed &+ UInt64(k))
                    r.shuffle(using: &rng)
                    r = Array(r.prefix(otherRows))
                }
                splits[split]!.append(r)
            }
        }
        var dataOptions = InspectorDataOptions()
        dataOptions.crossWeight = crossWeight
        dataOptions.balance = balance
        func set(_ split: String) -> VerdictSet {
            VerdictSet.build(LabelledExchange.build(criteria: names, rows: splits[split]!, options: dataOptions), criterion: c,
                             description: description, tokenizer: tokenizer, maxTokens: maxTokens)
        }
        let train = zeroShot ? VerdictSet.empty : set("train")
        let valid = set("valid")
        let test = skipTest ? VerdictSet.empty : set("test")
        guard !valid.examples.isEmpty else { throw ValidationError("no valid examples for \(criterion) (split=valid rows in \(dataDir))") }
        stderrLine("\(criterion): \(train.examples.count) training examples (\(train.tokenCount) tokens, \(train.dropped) over \(maxTokens) "
                   + "tokens left out), \(valid.examples.count) valid, \(test.examples.count) test")

        let t0 = Date()
        let longest = [train, valid, test].flatMap { $0.examples.map(\.tokens.count) }.max() ?? 16
        let base = try FrozenLlama(gguf: gguf, pool: pool, maxPositions: max(longest, 16))
        let judge = LlamaVerdicts(engine: LlamaLoRA(base: base, pool: pool), answers: try LlamaVerdicts.answerTokens(tokenizer))
        stderrLine(String(format: "loaded %@ as F32 in %.1fs; LoRA rank %d on %@; OpenBLAS kernels: %@",
                          URL(fileURLWithPath: path).lastPathComponent, Date().timeIntervalSince(t0), config.rank,
                          config.targets.map(\.rawValue).joined(separator: ","), BLAS.coreName))

        var initial = LoRAParameters(config: config, model: base.config)
        initial.initialise(seed: seed)
        var params = initial   // B = 0: the base model itself
        var opts: LoRATrainingOptions?
        var report: LoRATrainingReport?
        let command = reproducingCommand
        if !zeroShot {
            let o = loopOptions
            final class Best: @unchecked Sendable { var params: LoRAParameters? }
            let best = Best()
            let trainer = Trainer(model: judge, initial: initial, train: train.examples, valid: valid.sample(validExamples, seed: seed),
                                  options: o, outputDirectory: outDir.appendingPathComponent("run")) { p, _ in best.params = p }
            let r = try trainer.run(resume: resume, stopAfter: stopAfter)
            if r.steps < trainer.totalSteps && !r.stoppedEarly {
                print("paused at step \(r.steps) of \(trainer.totalSteps); continue with the same command and --resume")
                return
            }
            guard let p = best.params else { throw ValidationError("training ended without a validated step (is the valid split empty?)") }
            params = p
            opts = o
            report = r
        }

        stderrLine("calibrating on \(valid.examples.count) valid examples and measuring valid\(skipTest ? "" : " and test")…")
        let validBar = ProgressBar("valid")
        let validLogits = try judge.logits(valid.examples, parameters: params, tokens: microBatchTokens) { validBar.update($0, $1) }
        let fit = PlattScaling.fit(logits: validLogits, labels: valid.examples.map { Int($0.label) }, weights: valid.examples.map { Double($0.weight) })
        func metrics(_ s: VerdictSet, _ z: [Float]) -> InspectorSetMetrics {
            let p = z.map { v in [Float](repeating: 1 / (1 + exp(-(fit.a * v + fit.b))), count: names.count) }
            return InspectorSetMetrics(criteria: names, origins: s.origins, probabilities: p, only: c)
        }
        var measured = ["valid": metrics(valid, validLogits)]
        if !test.examples.isEmpty {
            let testBar = ProgressBar("test")
            measured["test"] = metrics(test, try judge.logits(test.examples, parameters: params, tokens: microBatchTokens) { testBar.update($0, $1) })
        }

        try FileManager.default.createDirectory(at: outDir, withIntermediateDirectories: true)
        if !zeroShot { try PEFTAdapter.save(params.adapter(name: "verdict-\(criterion)"), model: base.config, to: outDir.path, half: true) }
        let card = VerdictInspectorCard(criterion: criterion, description: description, baseModel: config.baseModel, command: command, data: files,
                                        examples: ["train": train.examples.count, "valid": valid.examples.count, "test": test.examples.count],
                                        droppedForLength: ["train": train.dropped, "valid": valid.dropped, "test": test.dropped],
                                        answers: judge.answers, rank: config.rank, alpha: config.alpha, targets: config.targets.map(\.rawValue),
                                        dataOptions: dataOptions, otherRows: otherRows, training: opts, report: report, platt: [fit.a, fit.b],
                                        metrics: measured, date: String(ISO8601DateFormatter().string(from: Date()).prefix(10)),
                                        openblasKernels: BLAS.coreName)
        let enc = JSONEncoder()
        enc.outputFormatting = [.prettyPrinted, .sortedKeys]
        try enc.encode(card).write(to: outDir.appendingPathComponent(zeroShot ? "zero-shot.json" : "verdict.json"), options: .atomic)
        for split in ["valid", "test"] {
            guard let m = measured[split], let own = m.own[criterion] else { continue }
            let sources = (m.perSource[criterion] ?? [:]).sorted { $0.key < $1.key }
                .map { String(format: "%@ %.3f", $0.key, $0.value.rocAUC) }.joined(separator: ", ")
            let label = split + " " + criterion + (zeroShot ? " (zero-shot)" : "")
            let ownFailed: Double = 100 * (m.ownGoodFailed[criterion] ?? 0), otherFailed: Double = 100 * (m.otherGoodFailed[criterion] ?? 0)
            print(String(format: "%@: ROC-AUC %.3f (%@); good answers failed: own %.0f%%, other sets' %.0f%%; ECE %.3f",
                         label, own.rocAUC, sources, ownFailed, otherFailed, own.ece))
        }
        if let report {
            print(String(format: "%d steps (%.2f epochs%@) in %.0f s at %.0f tokens/s; wrote %@", report.steps, report.epochsDone,
                         report.stoppedEarly ? ", stopped early" : "", report.seconds, report.tokensPerSecond, outDir.path))
        }
    }
}
