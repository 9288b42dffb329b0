import Foundation
import AlignersModels

/// How a LoRA adapter is trained. Defaults: the settings the shipped aligners were trained with.
public struct LoRATrainingOptions: Sendable, Codable, Equatable {
    public var learningRate: Float = 2e-4
    public var warmupSteps = 20
    /// Decay floor of the cosine schedule, as a share of the peak rate.
    public var minLearningRate: Float = 0.1
    public var epochs: Double = 2
    /// Stop after this many optimiser steps (nil: `epochs`).
    public var maxSteps: Int?
    /// Sequences per optimiser step (gradient accumulation over micro-batches).
    public var batchSize = 16
    /// Tokens per micro-batch (one forward/backward); bounds activation memory (~0.85 MB a token).
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

/// The training loop: AdamW with warm-up and cosine decay, gradient accumulation over micro-batches,
/// clipping, length-bucketed batches in a seeded order, a checkpoint every N steps that `resume`
/// continues from exactly (same batches, same dropout masks, same optimiser state), validation
/// loss at intervals with early stopping, and the best adapter kept in PEFT's format.
public final class LoRATrainer {
    public let model: LlamaLoRA
    public let options: LoRATrainingOptions
    public let loraConfig: LoRAConfig
    public let train: [TrainingSequence]
    public let valid: [TrainingSequence]
    public let outputDirectory: URL
    public var progress: TrainingProgress
    /// Saves the adapter (the CLI writes PEFT files plus a card); called with the best parameters.
    public var saveAdapter: (LoRAParameters, LoRATrainingReport) throws -> Void

    public init(model: LlamaLoRA, lora: LoRAConfig, train: [TrainingSequence], valid: [TrainingSequence], options: LoRATrainingOptions,
                outputDirectory: URL, progress: TrainingProgress = TrainingProgress(),
                saveAdapter: @escaping (LoRAParameters, LoRATrainingReport) throws -> Void) {
        self.model = model
        self.loraConfig = lora
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

    /// Mean cross-entropy per loss token over `sequences`.
    public func validationLoss(_ params: LoRAParameters, _ sequences: [TrainingSequence]) throws -> Double {
        var sum = 0.0, tokens = 0
        for mb in microBatches(Array(sequences.indices), sequences, tokens: options.microBatchTokens) {
            let batch = mb.map { sequences[$0] }
            sum += try model.run(batch, parameters: params, gradients: nil)
            tokens += batch.reduce(0) { $0 + $1.lossTokens }
        }
        return tokens > 0 ? sum / Double(tokens) : .nan
    }

    /// Trains to `totalSteps` (or until early stopping); with `stopAfter`, pauses once that many
    /// steps are done in all (after a checkpoint), to be continued with `resume`.
    public func run(resume: Bool, stopAfter: Int? = nil) throws -> LoRATrainingReport {
        guard !train.isEmpty else { throw TrainingError.data("no training examples") }
        var params = LoRAParameters(config: loraConfig, model: model.config)
        params.initialise(seed: options.seed)
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
            if order.epoch != epoch { order = (epoch, lengthBucketedBatches(train, batchSize: options.batchSize, seed: options.seed, epoch: epoch)) }
            let batch = order.batches[state.step % stepsPerEpoch]
            let lossTokens = batch.reduce(0) { $0 + train[$1].lossTokens }
            for i in grads.indices { grads[i] = 0 }
            var lossSum = 0.0
            let scale = 1 / Float(max(1, lossTokens))
            try grads.withUnsafeMutableBufferPointer { g in
                for (k, mb) in microBatches(batch, train, tokens: options.microBatchTokens).enumerated() {
                    lossSum += try model.run(mb.map { train[$0] }, parameters: params, gradients: g.baseAddress!, lossScale: scale,
                                             dropoutSeed: options.seed ^ (UInt64(state.step) << 20) ^ UInt64(k))
                }
            }
            let norm = clipGradientNorm(&grads, maxNorm: options.clipNorm)
            let lr = schedule.rate(at: state.step)
            adam.update(&params.values, gradients: grads, learningRate: lr)
            let tokens = batch.reduce(0) { $0 + train[$1].tokens.count }
            state.step += 1
            state.tokensSeen += tokens
            sessionTokens += tokens
            state.lastLoss = lossSum / Double(max(1, lossTokens))
            let elapsed = Date().timeIntervalSince(started)
            progress.step(state.step, of: totalSteps, loss: state.lastLoss!, tokensPerSecond: Double(sessionTokens) / max(elapsed, 1e-9),
                          learningRate: lr, gradNorm: norm)

            let last = state.step == totalSteps
            if !valid.isEmpty && (state.step % max(1, options.evalEvery) == 0 || last) {
                let v = try validationLoss(params, valid)
                state.history.append([Double(state.step), v])
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

    /// What must not change between a run and its resumption: options, LoRA shape, data.
    func fingerprint() -> String {
        var h = Hasher64()
        let enc = JSONEncoder()
        enc.outputFormatting = .sortedKeys
        h.add(String(decoding: (try? enc.encode(options)) ?? Data(), as: UTF8.self))
        h.add("\(loraConfig.rank) \(loraConfig.alpha) \(loraConfig.dropout) \(loraConfig.targets) \(loraConfig.layers ?? []) \(loraConfig.useRSLoRA)")
        for s in train { h.add(s.lossStart); for t in s.tokens { h.add(t) } }
        h.add(-1)
        for s in valid { h.add(s.lossStart); for t in s.tokens { h.add(t) } }
        return String(h.value, radix: 16)
    }

    func saveCheckpoint(_ p: LoRAParameters, _ adam: AdamW, _ s: TrainerState, best: [Float]?) throws {
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
    func loadCheckpoint(into p: inout LoRAParameters, adam: inout AdamW) throws -> (TrainerState, [Float]?) {
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
struct Hasher64 {
    var value: UInt64 = 0xcbf2_9ce4_8422_2325
    mutating func add(_ s: String) { for b in s.utf8 { value = (value ^ UInt64(b)) &* 0x100_0000_01b3 } }
    mutating func add(_ i: Int) { var x = UInt64(bitPattern: Int64(i)); for _ in 0..<8 { value = (value ^ (x & 0xff)) &* 0x100_0000_01b3; x >>= 8 } }
}
