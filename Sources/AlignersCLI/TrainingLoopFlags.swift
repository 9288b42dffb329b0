import AlignersTraining
import Foundation

/// The training-loop flags every `train` command has (each with its own defaults), turned into the
/// trainer's options in one place.
protocol TrainingLoopFlags {
    var lr: Float { get }
    var epochs: Double { get }
    var maxSteps: Int? { get }
    var batchSize: Int { get }
    var microBatchTokens: Int { get }
    var warmup: Int { get }
    var weightDecay: Float { get }
    var clip: Float { get }
    var seed: UInt64 { get }
    var checkpointEvery: Int { get }
    var evalEvery: Int { get }
    var patience: Int { get }
}

extension TrainingLoopFlags {
    var loopOptions: LoRATrainingOptions {
        var o = LoRATrainingOptions()
        o.learningRate = lr
        o.epochs = epochs
        o.maxSteps = maxSteps
        o.batchSize = batchSize
        o.microBatchTokens = microBatchTokens
        o.warmupSteps = warmup
        o.weightDecay = weightDecay
        o.clipNorm = clip
        o.seed = seed
        o.checkpointEvery = checkpointEvery
        o.evalEvery = evalEvery
        o.patience = patience
        return o
    }

    /// The command that reproduces the artifact: this one, without the flags that only pause or resume it.
    var reproducingCommand: String {
        var args = Array(CommandLine.arguments.dropFirst())
        if let i = args.firstIndex(of: "--stop-after"), i + 1 < args.count { args.removeSubrange(i...i + 1) }
        args.removeAll { $0 == "--resume" || $0.hasPrefix("--stop-after=") }
        return "aligners " + shellQuoted(args[...])
    }
}
