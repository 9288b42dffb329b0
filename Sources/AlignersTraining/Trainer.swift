import Foundation
import AlignersEngine
import AlignersSquadModels

/// A model the training loop can train: a frozen base with a flat vector of trainable parameters.
public protocol TrainableModel: AnyObject {
    associatedtype Example
    associatedtype Parameters: TrainableParameters
    /// Σ loss over `batch`; with `gradients`, also `gradients += lossScale · ∂Σ/∂θ`.
    func loss(_ batch: [Example], parameters: Parameters, gradients: UnsafeMutablePointer<Float>?, lossScale: Float,
              dropoutSeed: UInt64) throws -> Double
    /// What the summed loss is divided by (loss tokens, label weight).
    static func lossWeight(_ e: Example) -> Double
    /// The example's length (batches are bucketed and split into micro-batches by it).
    static func tokens(_ e: Example) -> Int
    /// Feeds what identifies the example to a checkpoint's fingerprint.
    static func fingerprint(_ e: Example, into h: inout Hasher64)
}

/// Trainable parameters as one flat vector (what the optimiser, clipping and checkpoints see).
public protocol TrainableParameters {
    var values: [Float] { get set }
    /// Their shape, for the checkpoint's fingerprint.
    var layoutDescription: String { get }
}

extension TrainableParameters {
    public var count: Int { values.count }
}

extension LlamaLoRA: TrainableModel {
    public func loss(_ batch: [TrainingSequence], parameters: LoRAParameters, gradients: UnsafeMutablePointer<Float>?, lossScale: Float,
                     dropoutSeed: UInt64) throws -> Double {
        try run(batch, parameters: parameters, gradients: gradients, lossScale: lossScale, dropoutSeed: dropoutSeed)
    }
    public static func lossWeight(_ e: TrainingSequence) -> Double { Double(e.lossTokens) }
    public static func tokens(_ e: TrainingSequence) -> Int { e.tokens.count }
    public static func fingerprint(_ e: TrainingSequence, into h: inout Hasher64) { h.add(e.lossStart); for t in e.tokens { h.add(t) } }
}

extension LoRAParameters: TrainableParameters {
    public var layoutDescription: String {
        "\(config.rank) \(config.alpha) \(config.dropout) \(config.targets) \(config.layers ?? []) \(config.useRSLoRA)"
    }
}

/// How a model is trained. Defaults: the settings the shipped aligners were trained with.
public struct LoRATrainingOptions: Sendable, Codable, Equatable {
    public var learningRate: Float = 2e-4
    public var warmupSteps = 20
    /// Decay floor of the cosine schedule, as a share of the peak rate.
    public var minLearningRate: Float = 0.1
    public var epochs: Double = 2
    /// Stop after this many optimiser steps (nil: `epochs`).
    public var maxSteps: Int?
    /// Examples per optimiser step (gradient accumulation over micro-batches).
    public var batchSize = 16
    /// Tokens per micro-batch (one forward/backward); bounds activation memory (~0.85 MB a token
    /// for the decoder, 0.15 MB for the encoder).
    public var microBatchTokens = 2048
    public var weightDecay: Float = 0
    /// Global gradient-norm clip (0: none).
    public var clipNorm: Float = 1
    public var seed: UInt64 = 1
    public var checkpointEvery = 25
    public var evalEvery = 25
    /// Evaluations without a better validation loss before stopping early (0: never).
    public var patience = 4
    public init() {}
}

/// What a finished (or stopped) training run measured.
public struct LoRATrainingReport: Sendable, Codable {
    public var steps: Int
    public var totalSteps: Int
    public var epochsDone: Double
    public var tokensSeen: Int
    public var seconds: Double
    public var tokensPerSecond: Double
    public var bestValidLoss: Double?
    public var bestStep: Int?
    public var lastTrainLoss: Double?
    public var stoppedEarly: Bool
    public var validHistory: [[Double]]   // [step, loss]
}

/// The LoRA aligners' trainer (the decoder with adapters).
public typealias LoRATrainer = Trainer<LlamaLoRA>

extension Trainer where Model == LlamaLoRA {
    public convenience init(model: LlamaLoRA, lora: LoRAConfig, train: [TrainingSequence], valid: [TrainingSequence], options: LoRATrainingOptions,
                            outputDirectory: URL, progress: TrainingProgress = TrainingProgress(),
                            saveAdapter: @escaping (LoRAParameters, LoRATrainingReport) throws -> Void) {
        var initial = LoRAParameters(config: lora, model: model.config)
        initial.initialise(seed: options.seed)
        self.init(model: model, initial: initial, train: train, valid: valid, options: options, outputDirectory: outputDirectory,
                  progress: progress, saveAdapter: saveAdapter)
    }
}

/// The training loop: AdamW with warm-up and cosine decay, gradient accumulation over micro-batches,
/// clipping, length-bucketed batches in a seeded order, a checkpoint every N steps that `resume`
/// continues from exactly (same batches, same dropout masks, same optimiser state), validation
/// loss at intervals with early stopping, and the best parameters handed to `saveAdapter`.
public final class Trainer<Model: TrainableModel> {
    public typealias Parameters = Model.Parameters
    public let model: Model
    public let options: LoRATrainingOptions
    /// The parameters training starts from (initialised).
    public let initial: Parameters
    public let train: [Model.Example]
    public let valid: [Model.Example]
    public let outputDirectory: URL
    public var progress: TrainingProgress
    /// Saves the adapter (the CLI writes it with a card); called with the best parameters.
    public var saveAdapter: (Parameters, LoRATrainingReport) throws -> Void
    /// Also called after each validation, with the parameters just validated (extra metrics).
    public var afterValidation: ((Parameters, Int) throws -> Void)?

    public init(model: Model, initial: Parameters, train: [Model.Example], valid: [Model.Example], options: LoRATrainingOptions,
                outputDirectory: URL, progress: TrainingProgress = TrainingProgress(),
                saveAdapter: @escaping (Parameters, LoRATrainingReport) throws -> Void) {
        self.model = model
        self.initial = initial
        self.train = train
        self.valid = valid
        self.options = options
        self.outputDirectory = outputDirectory
        self.progress = progress
        self.saveAdapter = saveAdapter
    }

    var checkpointURL: URL { outputDirectory.appendingPathComponent("checkpoint/state.safetensors") }
    var stepsPerEpoch: Int { (train.count + options.batchSize - 1) / options.batchSize }
    public var totalSteps: Int { options.maxSteps ?? max(1, Int((Double(stepsPerEpoch) * options.epochs).rounded(.up))) }
    private lazy var trainLengths = train.map(Model.tokens)

    /// Mean loss per unit of loss weight over `examples`.
    public func validationLoss(_ params: Parameters, _ examples: [Model.Example]) throws -> Double {
        var sum = 0.0, weight = 0.0
        for mb in microBatches(Array(examples.indices), lengths: examples.map(Model.tokens), tokens: options.microBatchTokens) {
            let batch = mb.map { examples[$0] }
            sum += try model.loss(batch, parameters: params, gradients: nil, lossScale: 1, dropoutSeed: 0)
            weight += batch.reduce(0) { $0 + Model.lossWeight($1) }
        }
        return weight > 0 ? sum / weight : .nan
    }

    /// Trains to `totalSteps` (or until early stopping); with `stopAfter`, pauses once that many
    /// steps are done in all (after a checkpoint), to be continued with `resume`.
    public func run(resume: Bool, stopAfter: Int? = nil) throws -> LoRATrainingReport {
        guard !train.isEmpty else { throw TrainingError.data("no training examples") }
        var params = initial
        var adam = AdamW(count: params.count, weightDecay: options.weightDecay)
        var state = TrainerState(fingerprint: fingerprint())
        /// The parameters of the best validation so far (what the adapter holds); kept in checkpoints.
        var best: [Float]?
        if resume {
            guard FileManager.default.fileExists(atPath: checkpointURL.path) else {
                throw TrainingError.checkpoint("--resume: no checkpoint at \(checkpointURL.path) (start without --resume)")
            }
            (state, best) = try loadCheckpoint(into: &params, adam: &adam)
            if state.finished {
                // Nothing left to train: write the adapter again from the checkpoint (e.g. its files were lost).
                var kept = params
                kept.values = best ?? params.values
                let rep = report(state, seconds: state.secondsBefore, rate: Double(state.tokensSeen) / max(state.secondsBefore, 1e-9),
                                 stoppedEarly: state.step < totalSteps)
                try saveAdapter(kept, rep)
                progress.log("the run had finished at step \(state.step); wrote its adapter again from the checkpoint")
                return rep
            }
            progress.log("resuming at step \(state.step) of \(totalSteps) (best valid loss \(state.bestValid.map { String(format: "%.4f", $0) } ?? "–"))")
        }
        progress.firstStep = state.step
        let schedule = LearningRateSchedule(peak: options.learningRate, warmupSteps: options.warmupSteps, totalSteps: totalSteps,
                                            floor: options.minLearningRate)
        if state.step == 0 && !valid.isEmpty {
            let v = try validationLoss(params, valid)
            state.history.append([0, v])
            progress.log(String(format: "step 0: valid loss %.4f (the base model)", v))
        }
        var grads = [Float](repeating: 0, count: params.count)
        let secondsBefore = state.secondsBefore
        let started = Date()
        var sessionTokens = 0
        var stoppedEarly = false
        var order: (epoch: Int, batches: [[Int]]) = (-1, [])
        while state.step < totalSteps {
            let epoch = state.step / stepsPerEpoch
            if order.epoch != epoch {
                order = (epoch, lengthBucketedBatches(lengths: trainLengths, batchSize: options.batchSize, seed: options.seed, epoch: epoch))
            }
            let batch = order.batches[state.step % stepsPerEpoch]
            let lossWeight = max(1e-9, batch.reduce(0) { $0 + Model.lossWeight(train[$1]) })
            for i in grads.indices { grads[i] = 0 }
            var lossSum = 0.0
            let scale = Float(1 / lossWeight)
            try grads.withUnsafeMutableBufferPointer { g in
                for (k, mb) in microBatches(batch, lengths: trainLengths, tokens: options.microBatchTokens).enumerated() {
                    lossSum += try model.loss(mb.map { train[$0] }, parameters: params, gradients: g.baseAddress!, lossScale: scale,
                                              dropoutSeed: options.seed ^ (UInt64(state.step) << 20) ^ UInt64(k))
                }
            }
            let norm = clipGradientNorm(&grads, maxNorm: options.clipNorm)
            let lr = schedule.rate(at: state.step)
            adam.update(&params.values, gradients: grads, learningRate: lr)
            let tokens = batch.reduce(0) { $0 + trainLengths[$1] }
            state.step += 1
            state.tokensSeen += tokens
            sessionTokens += tokens
            state.lastLoss = lossSum / lossWeight
            let elapsed = Date().timeIntervalSince(started)
            progress.step(state.step, of: totalSteps, loss: state.lastLoss!, tokensPerSecond: Double(sessionTokens) / max(elapsed, 1e-9),
                          learningRate: lr, gradNorm: norm)

            let last = state.step == totalSteps
            if !valid.isEmpty && (state.step % max(1, options.evalEvery) == 0 || last) {
                let v = try validationLoss(params, valid)
                state.history.append([Double(state.step), v])
                try afterValidation?(params, state.step)
                if state.bestValid.map({ v < $0 }) ?? true {
                    state.bestValid = v; state.bestStep = state.step; state.sinceBest = 0
                    best = params.values
                    try saveAdapter(params, report(state, seconds: secondsBefore + elapsed, rate: Double(sessionTokens) / max(elapsed, 1e-9), stoppedEarly: false))
                    progress.log(String(format: "step %d: valid loss %.4f (best; adapter saved)", state.step, v))
                } else {
                    state.sinceBest += 1
                    progress.log(String(format: "step %d: valid loss %.4f (best %.4f at step %d)", state.step, v, state.bestValid!, state.bestStep!))
                }
                if options.patience > 0 && state.sinceBest >= options.patience {
                    stoppedEarly = true
                    progress.log("stopping early: \(options.patience) evaluations without a better validation loss")
                }
            }
            let pausing = stopAfter.map { state.step >= $0 } ?? false
            state.finished = last || stoppedEarly
            if state.step % max(1, options.checkpointEvery) == 0 || last || stoppedEarly || pausing {
                state.secondsBefore = secondsBefore + Date().timeIntervalSince(started)
                try saveCheckpoint(params, adam, state, best: best)
            }
            if stoppedEarly { break }
            if pausing {
                progress.log("paused at step \(state.step) of \(totalSteps); continue with --resume")
                break
            }
        }
        let elapsed = Date().timeIntervalSince(started)
        let rep = report(state, seconds: secondsBefore + elapsed, rate: Double(sessionTokens) / max(elapsed, 1e-9), stoppedEarly: stoppedEarly)
        if valid.isEmpty { try saveAdapter(params, rep) }
        progress.finish()
        return rep
    }

    func report(_ s: TrainerState, seconds: Double, rate: Double, stoppedEarly: Bool) -> LoRATrainingReport {
        LoRATrainingReport(steps: s.step, totalSteps: totalSteps, epochsDone: Double(s.step) / Double(stepsPerEpoch), tokensSeen: s.tokensSeen,
                           seconds: seconds, tokensPerSecond: rate,
                           bestValidLoss: s.bestValid, bestStep: s.bestStep, lastTrainLoss: s.lastLoss, stoppedEarly: stoppedEarly,
                           validHistory: s.history)
    }

    // MARK: checkpoints

    struct TrainerState: Codable {
        var fingerprint: String
        var step = 0
        var tokensSeen = 0
        var bestValid: Double?
        var bestStep: Int?
        var sinceBest = 0
        var lastLoss: Double?
        var history: [[Double]] = []
        var secondsBefore = 0.0
        var adamStep = 0
        /// Trained to the end (or stopped early): `resume` only writes the adapter again.
        var finished = false

        init(fingerprint: String) { self.fingerprint = fingerprint }
        init(from d: Decoder) throws {   // checkpoints from before `finished` existed
            let c = try d.container(keyedBy: CodingKeys.self)
            fingerprint = try c.decode(String.self, forKey: .fingerprint)
            step = try c.decode(Int.self, forKey: .step)
            tokensSeen = try c.decode(Int.self, forKey: .tokensSeen)
            bestValid = try c.decodeIfPresent(Double.self, forKey: .bestValid)
            bestStep = try c.decodeIfPresent(Int.self, forKey: .bestStep)
            sinceBest = try c.decode(Int.self, forKey: .sinceBest)
            lastLoss = try c.decodeIfPresent(Double.self, forKey: .lastLoss)
            history = try c.decode([[Double]].self, forKey: .history)
            secondsBefore = try c.decode(Double.self, forKey: .secondsBefore)
            adamStep = try c.decode(Int.self, forKey: .adamStep)
            finished = try c.decodeIfPresent(Bool.self, forKey: .finished) ?? false
        }
    }

    /// What must not change between a run and its resumption: options, parameter layout, data.
    func fingerprint() -> String {
        var h = Hasher64()
        let enc = JSONEncoder()
        enc.outputFormatting = .sortedKeys
        h.add(String(decoding: (try? enc.encode(options)) ?? Data(), as: UTF8.self))
        h.add(initial.layoutDescription)
        for e in train { Model.fingerprint(e, into: &h) }
        h.add(-1)
        for e in valid { Model.fingerprint(e, into: &h) }
        return String(h.value, radix: 16)
    }

    func saveCheckpoint(_ p: Parameters, _ adam: AdamW, _ s: TrainerState, best: [Float]?) throws {
        var s = s
        s.adamStep = adam.step
        try FileManager.default.createDirectory(at: checkpointURL.deletingLastPathComponent(), withIntermediateDirectories: true)
        let meta = String(decoding: try JSONEncoder().encode(s), as: UTF8.self)
        var tensors: [SafetensorsWriter.Tensor] = [
            .init(name: "parameters", shape: [p.count], values: p.values),
            .init(name: "adam.m", shape: [p.count], values: adam.m),
            .init(name: "adam.v", shape: [p.count], values: adam.v),
        ]
        if let best { tensors.append(.init(name: "best", shape: [p.count], values: best)) }
        try SafetensorsWriter.write(tensors, metadata: ["state": meta], to: checkpointURL)
    }

    /// The state, and the best parameters when the checkpoint has them.
    func loadCheckpoint(into p: inout Parameters, adam: inout AdamW) throws -> (TrainerState, [Float]?) {
        let st = try SafetensorsFile(path: checkpointURL.path)
        guard let meta = st.metadata["state"], let s = try? JSONDecoder().decode(TrainerState.self, from: Data(meta.utf8)) else {
            throw TrainingError.checkpoint("\(checkpointURL.path) has no trainer state; start without --resume")
        }
        guard s.fingerprint == fingerprint() else {
            throw TrainingError.checkpoint("\(checkpointURL.path) was made with other settings or data; resume with the same "
                                           + "command, or start again without --resume (it will be overwritten)")
        }
        p.values = try st.floats("parameters", shape: [p.count])
        adam = AdamW(count: p.count, weightDecay: options.weightDecay, m: try st.floats("adam.m", shape: [p.count]),
                     v: try st.floats("adam.v", shape: [p.count]), step: s.adamStep)
        var state = s
        // Checkpoints from before `finished` and `best` were kept: the last one of a complete run.
        if !state.finished && state.step >= totalSteps { state.finished = true }
        let best = st.names.contains("best") ? try st.floats("best", shape: [p.count])
            : (state.bestStep == state.step ? p.values : nil)
        return (state, best)
    }
}

/// FNV-1a over the values given (stable across runs and machines, unlike `Hasher`).
public struct Hasher64 {
    public var value: UInt64 = 0xcbf2_9ce4_8422_2325
    public init() {}
    public mutating func add(_ s: String) { for b in s.utf8 { value = (value ^ UInt64(b)) &* 0x100_0000_01b3 } }
    public mutating func add(_ i: Int) { var x = UInt64(bitPattern: Int64(i)); for _ in 0..<8 { value = (value ^ (x & 0xff)) &* 0x100_0000_01b3; x >>= 8 } }
}
