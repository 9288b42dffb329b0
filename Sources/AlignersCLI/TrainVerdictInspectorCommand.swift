import AlignersCore
import AlignersKernels
import AlignersEngine
import AlignersSquadModels
import AlignersTraining
import ArgumentParser
import Foundation

struct TrainVerdictInspectorCommand: ParsableCommand, TrainingLoopFlags {
    static let configuration = CommandConfiguration(
        commandName: "verdict-inspector",
        abstract: "Train one criterion's inspector on the decoder: LoRA on SmolLM2 asked \"does the answer meet the criterion?\".",
        discussion: """
            The decoder route for an inspector (the encoder route is `train inspectors`). Each answer becomes a
            chat prompt naming the criterion's description (Criteria/<name>.yaml) and the verdict is the logit of
            "Yes" against "No" at the start of the reply, trained with a weighted logistic loss: (x, rejected)
            violates the criterion, (x, chosen) meets it, and good answers of the other criteria's sets (at most
            --other-rows rows each), and their misaligned answers where --rejected-meets says so, meet it with
            --cross-weight. Chooses the best step by loss on part of the
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
    @Option(help: "Rows of each other criterion's train split used (their good answers, and their misaligned ones where --rejected-meets says).") var otherRows = 1000
    @Option(help: "Weight of other sets' good answers as positives (0: own pairs only).") var crossWeight: Float = 0.5
    @Option(help: "Source and set balancing exponent: 0 raw counts, 1 equal weight per source.") var balance: Float = 0.5
    @Option(help: "Sources whose misaligned answers still meet other criteria, as positives weighted by --cross-weight: SOURCE=CRITERION[+CRITERION],… ('none': no such labels; default: alpaca-eval=ethical when ethical is among --criteria).")
    var rejectedMeets: String?
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
        guard names.contains(criterion) else { throw ValidationError("--criteria must include --criterion \(criterion)") }
        let description = try CriteriaLibrary(searchDir: criteriaDir).load(criterion).description
        let outDir = URL(fileURLWithPath: out ?? "inspectors/verdict-\(criterion)")
        let path = try model.map { FileManager.default.fileExists(atPath: $0) ? $0 : try ModelLocator.locate($0, explicit: modelsDir).path }
            ?? ModelLocator.locate(TextGenerator.defaultModel, explicit: modelsDir).path
        var job = VerdictInspectorTrainingJob(criterion: criterion, criteria: names, description: description,
                                              dataDirectory: URL(fileURLWithPath: dataDir), outputDirectory: outDir, model: path,
                                              lora: try lora.config(), loop: loopOptions, command: reproducingCommand)
        job.dataOptions.crossWeight = crossWeight
        job.dataOptions.balance = balance
        job.dataOptions.rejectedMeets = try parseRejectedMeets(rejectedMeets, criteria: names)
        job.otherRows = otherRows
        job.maxTokens = maxTokens
        job.validExamples = validExamples
        job.zeroShot = zeroShot
        job.skipTest = skipTest
        let bars = ["valid": ProgressBar("valid"), "test": ProgressBar("test")]
        let outcome = try job.run(pool: ComputeContext.forCommand(threads: threads).pool, resume: resume, stopAfter: stopAfter,
                                  log: stderrLine, progress: { split, done, total in bars[split]?.update(done, total) })
        switch outcome {
        case .paused(let step, let total):
            print("paused at step \(step) of \(total); continue with the same command and --resume")
        case .finished(let card):
            for split in ["valid", "test"] {
                guard let m = card.metrics[split], let own = m.own[criterion] else { continue }
                let sources = (m.perSource[criterion] ?? [:]).sorted { $0.key < $1.key }
                    .map { String(format: "%@ %.3f", $0.key, $0.value.rocAUC) }.joined(separator: ", ")
                let label = split + " " + criterion + (zeroShot ? " (zero-shot)" : "")
                let ownFailed: Double = 100 * (m.ownGoodFailed[criterion] ?? 0), otherFailed: Double = 100 * (m.otherGoodFailed[criterion] ?? 0)
                print(String(format: "%@: ROC-AUC %.3f (%@); good answers failed: own %.0f%%, other sets' %.0f%%; ECE %.3f",
                             label, own.rocAUC, sources, ownFailed, otherFailed, own.ece))
            }
            if let report = card.report {
                print(String(format: "%d steps (%.2f epochs%@) in %.0f s at %.0f tokens/s; wrote %@", report.steps, report.epochsDone,
                             report.stoppedEarly ? ", stopped early" : "", report.seconds, report.tokensPerSecond, outDir.path))
            }
        }
    }
}
