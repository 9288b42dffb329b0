import AlignersCore
import AlignersKernels
import AlignersEngine
import AlignersSquadModels
import AlignersTraining
import ArgumentParser
import Foundation

/// LoRA settings shared by `train aligner` and `train bench`.
struct LoRAOptions: ParsableArguments {
    @Option(help: "LoRA rank.") var rank = 8
    @Option(help: "LoRA alpha (the update is scaled by alpha / rank).") var alpha: Float = 16
    @Option(help: "LoRA dropout on the adapter's input.") var dropout: Float = 0.05
    @Option(help: "Projections to adapt: all, or a comma list of q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj.")
    var targets = "all"

    func config() throws -> LoRAConfig {
        guard rank > 0 else { throw ValidationError("--rank must be positive") }
        guard (0..<1).contains(dropout) else { throw ValidationError("--dropout must be in [0, 1)") }
        let list: [LoRATarget] = try targets == "all" ? LoRATarget.allCases : targets.split(separator: ",").map {
            guard let t = LoRATarget(rawValue: String($0).trimmingCharacters(in: .whitespaces)) else {
                throw ValidationError("--targets: '\($0)' is not one of \(LoRATarget.allCases.map(\.rawValue).joined(separator: ","))")
            }
            return t
        }
        return LoRAConfig(rank: rank, alpha: alpha, dropout: dropout, targets: list)
    }
}

struct TrainAlignerCommand: ParsableCommand, TrainingLoopFlags {
    static let configuration = CommandConfiguration(
        commandName: "aligner",
        abstract: "Train a criterion's aligner: a LoRA adapter on the decoder, in PEFT's format.",
        discussion: """
            Trains on `x [INIT] y [ALIGNED] y' [DONE]` (loss on y' [DONE] only) from the train split of
            --data: a correction per row (y = rejected, y' = chosen) plus no-op pairs (y = y' = chosen) so the
            aligner learns to leave good answers alone. Chooses the best step by loss on the valid split,
            keeps a checkpoint in OUT/checkpoint every --checkpoint-every steps (continue with --resume and
            the same options), and writes OUT/adapter_config.json + adapter_model.safetensors (F16) with a
            card (OUT/README.md, OUT/training.json). Use it from Criteria/<name>.yaml:
              aligner: {kind: trained, adapter: ../adapters/<name>}
            Takes about 10 s per step of 16 sequences on 2 Zen 4 cores; run long trainings under nohup.
            """.reflowed)

    @Option(help: "Criterion name (names the adapter).") var criterion: String
    @Option(help: "Preference data JSONL (../shared/data/<criterion>.jsonl format); split=train trains, split=valid validates.")
    var data: String
    @Option(help: "Adapter directory (default: adapters/<criterion>).") var out: String?
    @Option(parsing: .upToNextOption, help: "Other criteria's data files: some of their good answers become no-op pairs.")
    var noopData: [String] = []
    @Option(help: "Share of no-op pairs (y' = y).") var noopFraction = 0.25
    @Option(help: "Comma list of sources to train on (default: all in --data).") var sources: String?
    @Option(help: "Most rows per source (balances sources).") var maxPerSource: Int?
    @Option(help: "Longest example in tokens; longer ones are left out.") var maxTokens = 512
    @Option(help: "Validation examples used (the first N of the valid split's).") var validExamples = 160
    @OptionGroup var lora: LoRAOptions
    @Option(help: "Peak learning rate.") var lr: Float = 2e-4
    @Option(help: "Epochs over the training examples.") var epochs = 2.0
    @Option(help: "Stop after this many optimiser steps.") var maxSteps: Int?
    @Option(help: "Sequences per optimiser step.") var batchSize = 16
    @Option(help: "Tokens per micro-batch (bounds memory: ~0.85 MB per token).") var microBatchTokens = 2048
    @Option(help: "Warm-up steps.") var warmup = 20
    @Option(help: "AdamW weight decay.") var weightDecay: Float = 0
    @Option(help: "Gradient-norm clip (0: none).") var clip: Float = 1
    @Option(help: "Random seed (data order, initialisation, dropout).") var seed: UInt64 = 1
    @Option(help: "Steps between checkpoints.") var checkpointEvery = 25
    @Option(help: "Steps between validations.") var evalEvery = 25
    @Option(help: "Validations without improvement before stopping (0: never).") var patience = 4
    @Flag(help: "Continue from OUT/checkpoint (same options and data).") var resume = false
    @Option(help: "Pause (with a checkpoint) once this many steps are done in all; continue later with --resume.") var stopAfter: Int?
    @Option(help: "The base GGUF (default: SmolLM2-135M-Instruct through the models directory).") var model: String?
    @Option(help: "Directory holding model packages.") var modelsDir: String?
    @Option(help: "Compute threads (default: $ALIGNERS_THREADS or all CPUs).") var threads: Int?

    func run() throws {
        let outDir = URL(fileURLWithPath: out ?? "adapters/\(criterion)")
        let path = try model.map { FileManager.default.fileExists(atPath: $0) ? $0 : try ModelLocator.locate($0, explicit: modelsDir).path }
            ?? ModelLocator.locate(TextGenerator.defaultModel, explicit: modelsDir).path
        var job = AlignerTrainingJob(criterion: criterion, data: URL(fileURLWithPath: data), lora: try lora.config(), loop: loopOptions,
                                     model: path, outputDirectory: outDir, command: reproducingCommand)
        job.noopData = noopData.map { URL(fileURLWithPath: $0) }
        job.dataOptions.noopFraction = noopFraction
        job.dataOptions.maxPerSource = maxPerSource
        job.dataOptions.sources = sources.map { Set($0.split(separator: ",").map { String($0) }) }
        job.dataOptions.maxTokens = maxTokens
        job.dataOptions.seed = seed
        job.validExamples = validExamples
        let report = try job.run(pool: ComputeContext.forCommand(threads: threads).pool, resume: resume, stopAfter: stopAfter,
                                 log: stderrLine)
        print(String(format: "%@ aligner: %d steps (%.2f epochs%@), %d tokens at %.0f tokens/s, best valid loss %@; adapter in %@",
                     criterion, report.steps, report.epochsDone, report.stoppedEarly ? ", stopped early" : "", report.tokensSeen,
                     report.tokensPerSecond, report.bestValidLoss.map { String(format: "%.4f (step %d)", $0, report.bestStep ?? 0) } ?? "–",
                     outDir.path))
    }
}

/// Training speed on synthetic batches, for the comparison with PyTorch (scripts/bench/train_bench.sh).
struct TrainBenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench", abstract: "Time LoRA training steps (forward, backward, AdamW) on synthetic batches; prints one JSON line.")
    @Option(help: "Tokens per sequence.") var seqLen = 256
    @Option(help: "Sequences per step.") var batch = 4
    @Option(help: "Timed steps (after one warm-up step).") var steps = 5
    @OptionGroup var lora: LoRAOptions
    @Option(help: "Compute threads.") var threads = 2
    @Option(help: "Directory holding model packages.") var modelsDir: String?

    func run() throws {
        let path = try ModelLocator.locate(TextGenerator.defaultModel, explicit: modelsDir).path
        let compute = ComputeContext.forCommand(threads: threads)
        let pool = compute.pool
        let base = try FrozenLlama(path: path, pool: pool, maxPositions: seqLen)
        let engine = LlamaLoRA(base: base, pool: pool)
        let config = try lora.config()
        var params = LoRAParameters(config: config, model: base.config)
        params.initialise(seed: 1)
        var adam = AdamW(count: params.count)
        var rng = SplitMix64(seed: 3)
        // The loss on each sequence's second half, as the PyTorch peer does.
        let seqs = (0..<batch).map { _ in
            TrainingSequence(tokens: (0..<seqLen).map { _ in 100 + Int(rng.next() % 40_000) }, lossStart: seqLen / 2)
        }
        let lossTokens = seqs.reduce(0) { $0 + $1.lossTokens }
        var grads = [Float](repeating: 0, count: params.count)
        func step() throws {
            for i in grads.indices { grads[i] = 0 }
            _ = try grads.withUnsafeMutableBufferPointer {
                try engine.run(seqs, parameters: params, gradients: $0.baseAddress!, lossScale: 1 / Float(lossTokens))
            }
            adam.update(&params.values, gradients: grads, learningRate: 1e-4)
        }
        try step()
        let t0 = Date()
        for _ in 0..<steps { try step() }
        let s = Date().timeIntervalSince(t0) / Double(steps)
        print(String(format: #"{"peer":"aligners","tokens_per_s":%.1f,"step_s":%.3f,"seq_len":%d,"batch":%d,"rank":%d,"threads":%d,"vnni":%@,"blas":"%@"}"#,
                     Double(seqLen * batch) / s, s, seqLen, batch, config.rank, threads, compute.plan.vnni ? "true" : "false", BLAS.coreName))
    }
}
