import AlignersCore
import AlignersKernels
import AlignersEngine
import AlignersSquadModels
import AlignersTraining
import ArgumentParser
import Foundation

/// The card written beside fine-tuned inspectors: how they were made and what they measure.
struct FineTunedInspectorCard: Codable {
    var criteria: [String]
    var encoder: String
    var command: String
    var data: [String]
    var rows: [String: [String: Int]]
    var lora: EncoderLoRAConfig
    var dataOptions: InspectorDataOptions
    var training: LoRATrainingOptions
    var report: LoRATrainingReport
    var platt: [String: [Float]]
    var metrics: [String: InspectorSetMetrics]
    var date: String
    var openblasKernels: String
}

struct TrainInspectorsCommand: ParsableCommand, TrainingLoopFlags {
    static let configuration = CommandConfiguration(
        commandName: "inspectors",
        abstract: "Fine-tune the inspectors of several criteria at once: LoRA on the encoder, a calibrated head per criterion.",
        discussion: """
            Trains LoRA adapters on MiniLM's projections and one logistic head per criterion on the mean-pooled
            last layer, on every criterion's train split together: (x, rejected) violates its own criterion,
            (x, chosen) meets its own and, weighted by --cross-weight, every other criterion (see
            Criteria/README.md, "What an inspector's score means"). Chooses the best step by loss on part of
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
        let pool = ComputeContext.forCommand(threads: threads).pool
        let featurizer = try InspectorFeaturizer.load(modelsDir: modelsDir, maxLength: maxLength, pool: pool)
        let outDir = URL(fileURLWithPath: out)

        var splits: [String: [[PreferenceRow]]] = ["train": [], "valid": [], "test": []]
        var counts: [String: [String: Int]] = [:]
        var files: [String] = []
        for name in names {
            let url = URL(fileURLWithPath: dataDir).appendingPathComponent("\(name).jsonl")
            guard FileManager.default.fileExists(atPath: url.path) else {
                throw ValidationError("no data for criterion '\(name)': \(url.path) does not exist (--data-dir)")
            }
            files.append(url.lastPathComponent)
            let rows = try InspectorData.load(url, split: nil)
            for split in ["train", "valid", "test"] {
                var r = rows.filter { $0.split == split }
                if split == "train", let maxRows, r.count > maxRows {
                    var rng = SplitMix64(seed: seed)
                    r.shuffle(using: &rng)
                    r = Array(r.prefix(maxRows))
                }
                splits[split]!.append(r)
                counts[name, default: [:]][split] = r.count
            }
            guard counts[name]!["train"]! > 0, counts[name]!["valid"]! > 0 else {
                throw ValidationError("\(url.path): needs rows with split=train and split=valid")
            }
        }
        var dataOptions = InspectorDataOptions()
        dataOptions.crossWeight = crossWeight
        dataOptions.balance = balance
        dataOptions.maxLength = maxLength
        let encode = { (e: Exchange) in featurizer.pairEncoding(e) }
        let train = InspectorTrainingSet.build(criteria: names, rows: splits["train"]!, options: dataOptions, encode: encode)
        let valid = InspectorTrainingSet.build(criteria: names, rows: splits["valid"]!, options: dataOptions, encode: encode)
        let test = InspectorTrainingSet.build(criteria: names, rows: splits["test"]!, options: dataOptions, encode: encode)
        let validSample = valid.sample(validExamples, seed: seed)
        stderrLine("\(names.joined(separator: ", ")): \(train.examples.count) training examples (\(train.tokenCount) tokens), "
                   + "\(valid.examples.count) valid (\(validSample.examples.count) for the loss), \(test.examples.count) test")

        let lora = EncoderLoRAConfig(rank: rank, alpha: alpha)
        var initial = EncoderInspectorParameters(config: lora, model: featurizer.encoder.config, criteria: names)
        initial.initialise(seed: seed)
        let opts = loopOptions
        stderrLine("LoRA rank \(rank) on \(lora.targets.count) projections of \(featurizer.encoder.config.numHiddenLayers) layers + "
                   + "\(names.count) heads: \(initial.count) parameters; OpenBLAS kernels: \(BLAS.coreName)")

        let engine = BERTLoRA(base: featurizer.encoder, pool: pool)
        let command = reproducingCommand
        final class Best: @unchecked Sendable { var params: EncoderInspectorParameters? }
        let best = Best()
        let trainer = Trainer(model: engine, initial: initial, train: train.examples, valid: validSample.examples, options: opts,
                              outputDirectory: outDir.appendingPathComponent("fine-tuned-run")) { params, _ in best.params = params }
        let report = try trainer.run(resume: resume, stopAfter: stopAfter)
        if report.steps < trainer.totalSteps && !report.stoppedEarly {
            print("paused at step \(report.steps) of \(trainer.totalSteps); continue with the same command and --resume")
            return
        }
        guard let params = best.params else { throw ValidationError("training ended without a validated step (is the valid split empty?)") }

        // Calibrate each head on the whole valid split (the examples that carry its label, weighted as in training).
        stderrLine("calibrating on \(valid.examples.count) valid examples and measuring valid and test…")
        let validLogits = try engine.logits(valid.examples, parameters: params, tokens: microBatchTokens)
        var adapter = params.adapter()
        for c in names.indices {
            let idx = valid.examples.indices.filter { valid.examples[$0].weights[c] > 0 }
            let fit = PlattScaling.fit(logits: idx.map { validLogits[$0][c] }, labels: idx.map { Int(valid.examples[$0].labels[c]) },
                                       weights: idx.map { Double(valid.examples[$0].weights[c]) })
            adapter.platt[c] = [fit.a, fit.b]
        }
        func probabilities(_ logits: [[Float]]) -> [[Float]] {
            logits.map { z in names.indices.map { c in 1 / (1 + exp(-(adapter.platt[c][0] * z[c] + adapter.platt[c][1]))) } }
        }
        var metrics = ["valid": InspectorSetMetrics(set: valid, probabilities: probabilities(validLogits))]
        if !test.examples.isEmpty {
            metrics["test"] = InspectorSetMetrics(set: test, probabilities: probabilities(try engine.logits(test.examples, parameters: params,
                                                                                                          tokens: microBatchTokens)))
        }
        try FileManager.default.createDirectory(at: outDir, withIntermediateDirectories: true)
        let date = ISO8601DateFormatter().string(from: Date()).prefix(10)
        try adapter.write(to: outDir.appendingPathComponent(FineTunedInspectors.fileName),
                          metadata: ["encoder": "all-MiniLM-L6-v2", "max_length": String(maxLength), "date": String(date)])
        let card = FineTunedInspectorCard(criteria: names, encoder: "all-MiniLM-L6-v2", command: command, data: files, rows: counts,
                                          lora: lora, dataOptions: dataOptions, training: opts, report: report,
                                          platt: Dictionary(uniqueKeysWithValues: names.indices.map { (names[$0], adapter.platt[$0]) }),
                                          metrics: metrics, date: String(date), openblasKernels: BLAS.coreName)
        let enc = JSONEncoder()
        enc.outputFormatting = [.prettyPrinted, .sortedKeys]
        try enc.encode(card).write(to: outDir.appendingPathComponent(FineTunedInspectors.cardName), options: .atomic)
        for split in ["valid", "test"] {
            guard let m = metrics[split] else { continue }
            for name in names {
                guard let own = m.own[name] else { continue }
                let sources = (m.perSource[name] ?? [:]).sorted { $0.key < $1.key }
                    .map { String(format: "%@ %.3f", $0.key, $0.value.rocAUC) }.joined(separator: ", ")
                print(String(format: "%@ %@: ROC-AUC %.3f (%@); good answers failed: own %.0f%%, other sets' %.0f%%; ECE %.3f",
                             split, name, own.rocAUC, sources, 100 * (m.ownGoodFailed[name] ?? 0), 100 * (m.otherGoodFailed[name] ?? 0), own.ece))
            }
        }
        print(String(format: "%d steps (%.2f epochs%@) in %.0f s; wrote %@", report.steps, report.epochsDone,
                     report.stoppedEarly ? ", stopped early" : "", report.seconds,
                     outDir.appendingPathComponent(FineTunedInspectors.fileName).path))
    }
}
