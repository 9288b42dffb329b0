import AlignersCore
import AlignersKernels
import AlignersEngine
import AlignersSquadModels
import AlignersTraining
import ArgumentParser
import Foundation

struct TrainInspectorsCommand: ParsableCommand, TrainingLoopFlags {
    static let configuration = CommandConfiguration(
        commandName: "inspectors",
        abstract: "Fine-tune the inspectors of several criteria at once: LoRA on the encoder, a calibrated head per criterion.",
        discussion: """
            Trains LoRA adapters on MiniLM's projections and one logistic head per criterion on the mean-pooled
            last layer, on every criterion's train split together: (x, rejected) violates its own criterion,
            (x, chosen) meets its own and, weighted by --cross-weight, every other criterion, and a misaligned
            answer of a source --rejected-meets names also meets the criteria it names (default: a weak
            AlpacaEval answer is not unethical). See Criteria/README.md, "What an inspector's score means". Chooses the best step by loss on part of
            the valid split, calibrates each head on the whole valid split (Platt), reports valid and test, and
            writes OUT/fine-tuned.safetensors with its card OUT/fine-tuned.json. Checkpoints go to
            OUT/fine-tuned-run/checkpoint every --checkpoint-every steps; continue with --resume and the same
            options. The inspectors then score every criterion in one encoder pass.
            """.reflowed)

    @Option(help: "Directory holding <criterion>.jsonl files (the ../shared/data format).") var dataDir = "../shared/data"
    @Option(help: "Comma list of criteria, each with a data file.") var criteria = "ethical,factuality,helpful"
    @Option(help: "Where to write fine-tuned.safetensors and its card.") var out = "inspectors"
    @Option(help: "LoRA rank.") var rank = 8
    @Option(help: "LoRA alpha (the update is scaled by alpha / rank).") var alpha: Float = 16
    @Option(help: "Weight of other sets' good answers as positives (0: own pairs only).") var crossWeight: Float = 0.5
    @Option(help: "Source and set balancing exponent: 0 raw counts, 1 equal weight per source.") var balance: Float = 0.5
    @Option(help: "Sources whose misaligned answers still meet other criteria, as positives weighted by --cross-weight: SOURCE=CRITERION[+CRITERION],… ('none': no such labels; default: alpaca-eval=ethical when ethical is trained).")
    var rejectedMeets: String?
    @Option(help: "Longest pair in tokens (the conversation is cut from the left).") var maxLength = 256
    @Option(help: "Most rows per criterion's train split (for quick runs; default: all).") var maxRows: Int?
    @Option(help: "Validation examples for the loss that picks the best step.") var validExamples = 1200
    @Option(help: "Peak learning rate.") var lr: Float = 5e-4
    @Option(help: "Epochs over the training examples.") var epochs = 1.0
    @Option(help: "Stop after this many optimiser steps.") var maxSteps: Int?
    @Option(help: "Examples per optimiser step.") var batchSize = 32
    @Option(help: "Tokens per micro-batch (bounds memory: ~0.15 MB per token).") var microBatchTokens = 4096
    @Option(help: "Warm-up steps.") var warmup = 30
    @Option(help: "AdamW weight decay.") var weightDecay: Float = 0.01
    @Option(help: "Gradient-norm clip (0: none).") var clip: Float = 1
    @Option(help: "Random seed (data order, initialisation).") var seed: UInt64 = 1
    @Option(help: "Steps between checkpoints.") var checkpointEvery = 50
    @Option(help: "Steps between validations.") var evalEvery = 100
    @Option(help: "Validations without improvement before stopping (0: never).") var patience = 4
    @Flag(help: "Continue from OUT/fine-tuned-run/checkpoint (same options and data).") var resume = false
    @Option(help: "Pause (with a checkpoint) once this many steps are done in all; continue later with --resume.") var stopAfter: Int?
    @Option(help: "Directory holding model packages.") var modelsDir: String?
    @Option(help: "Compute threads (default: $ALIGNERS_THREADS or all CPUs).") var threads: Int?

    func run() throws {
        let names = criteria.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        guard !names.isEmpty else { throw ValidationError("--criteria is empty") }
        guard rank > 0 else { throw ValidationError("--rank must be positive") }
        var job = InspectorTrainingJob(criteria: names, dataDirectory: URL(fileURLWithPath: dataDir), outputDirectory: URL(fileURLWithPath: out),
                                       lora: EncoderLoRAConfig(rank: rank, alpha: alpha), loop: loopOptions, command: reproducingCommand)
        job.dataOptions.crossWeight = crossWeight
        job.dataOptions.balance = balance
        job.dataOptions.rejectedMeets = try parseRejectedMeets(rejectedMeets, criteria: names)
        job.dataOptions.maxLength = maxLength
        job.maxRows = maxRows
        job.validExamples = validExamples
        job.modelsDirectory = modelsDir
        switch try job.run(pool: ComputeContext.forCommand(threads: threads).pool, resume: resume, stopAfter: stopAfter, log: stderrLine) {
        case .paused(let step, let total):
            print("paused at step \(step) of \(total); continue with the same command and --resume")
        case .finished(let card, let artifact):
            for split in ["valid", "test"] {
                guard let m = card.metrics[split] else { continue }
                for name in names {
                    guard let own = m.own[name] else { continue }
                    let sources = (m.perSource[name] ?? [:]).sorted { $0.key < $1.key }
                        .map { String(format: "%@ %.3f", $0.key, $0.value.rocAUC) }.joined(separator: ", ")
                    let misaligned = m.otherMisalignedFailed?[name].map { String(format: ", other sets' misaligned answers that meet it %.0f%%", 100 * $0) } ?? ""
                    print(String(format: "%@ %@: ROC-AUC %.3f (%@); good answers failed: own %.0f%%, other sets' %.0f%%%@; ECE %.3f",
                                 split, name, own.rocAUC, sources, 100 * (m.ownGoodFailed[name] ?? 0), 100 * (m.otherGoodFailed[name] ?? 0),
                                 misaligned, own.ece))
                }
            }
            let report = card.report
            print(String(format: "%d steps (%.2f epochs%@) in %.0f s; wrote %@", report.steps, report.epochsDone,
                         report.stoppedEarly ? ", stopped early" : "", report.seconds, artifact.path))
        }
    }
}

/// `--rejected-meets`: "alpaca-eval=ethical,truthfulqa=ethical+helpful" → source → criteria; "none" → none;
/// absent → the default for the criteria being trained.
func parseRejectedMeets(_ text: String?, criteria: [String]) throws -> [String: [String]] {
    guard let text else { return InspectorDataOptions.defaultRejectedMeets(training: criteria) }
    let spec = text.trimmingCharacters(in: .whitespaces)
    guard spec != "none", !spec.isEmpty else { return [:] }
    var out: [String: [String]] = [:]
    for item in spec.split(separator: ",") {
        let parts = item.split(separator: "=", maxSplits: 1).map { $0.trimmingCharacters(in: .whitespaces) }
        guard parts.count == 2, !parts[0].isEmpty, !parts[1].isEmpty else {
            throw ValidationError("--rejected-meets: '\(item)' is not SOURCE=CRITERION[+CRITERION] (e.g. alpaca-eval=ethical, or none)")
        }
        let names = parts[1].split(separator: "+").map { String($0) }
        for n in names where !criteria.contains(n) {
            throw ValidationError("--rejected-meets: '\(n)' is not one of the criteria being trained (\(criteria.joined(separator: ", ")))")
        }
        out[parts[0], default: []] += names
    }
    return out
}
