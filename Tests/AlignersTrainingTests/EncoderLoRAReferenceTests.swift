import Foundation
import Testing
import AlignersKernels
@testable import AlignersModels
@testable import AlignersTraining

enum EncoderTestModel {
    static let relativePath = InspectorFeaturizer.encoderRelativePath
    static let directory: URL? = {
        var dirs = ModelLocator.searchDirectories()
        let src = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        dirs.append(src.appendingPathComponent("models"))
        return dirs.map { $0.appendingPathComponent(relativePath) }
            .first { FileManager.default.fileExists(atPath: $0.appendingPathComponent("model.safetensors").path) }
    }()
    static var available: Bool { directory != nil }
    static let skipMessage: Comment = "MiniLM encoder not installed (run `make models` or set ALIGNERS_MODELS_DIR): skipping"
    static let encoder: BERTEncoder? = directory.flatMap { try? BERTEncoder(modelDirectory: $0, pool: ComputePool(threads: 2)) }
}

/// The inspectors' training step against PyTorch + PEFT (scripts/reference/encoder_lora_reference.py,
/// float64): MiniLM with rank-4 adapters on layers 0 and 5, three heads, a fixed batch of two
/// sequences (13 and 70 tokens) with partly missing labels; the loss, logits and every gradient.
@Suite(.enabled(if: EncoderTestModel.available, EncoderTestModel.skipMessage))
struct EncoderLoRAReferenceTests {
    static let dir = Bundle.module.url(forResource: "Fixtures/encoder-lora", withExtension: nil)!

    static func fixture() throws -> (batch: [EncodedVerdicts], loss: Double, logits: [[Double]]) {
        let j = try JSONSerialization.jsonObject(with: Data(contentsOf: dir.appendingPathComponent("batch.json"))) as! [String: Any]
        let ids = j["ids"] as! [[NSNumber]], types = j["type_ids"] as! [[NSNumber]]
        let labels = j["labels"] as! [[NSNumber]], weights = j["weights"] as! [[NSNumber]]
        let batch = ids.indices.map { i in
            EncodedVerdicts(encoding: BertEncoding(ids: ids[i].map(\.int32Value), typeIds: types[i].map(\.int32Value)),
                             labels: labels[i].map(\.floatValue), weights: weights[i].map(\.floatValue))
        }
        return (batch, (j["loss"] as! NSNumber).doubleValue, (j["logits"] as! [[NSNumber]]).map { $0.map(\.doubleValue) })
    }

    static func adapter(_ name: String, _ model: BERTConfig) throws -> EncoderInspectorAdapter {
        try EncoderInspectorAdapter(file: SafetensorsFile(path: dir.appendingPathComponent(name).path), model: model)
    }

    @Test func lossLogitsAndGradientsMatchPEFT() throws {
        let base = try #require(EncoderTestModel.encoder)
        let reference = try Self.adapter("parameters.safetensors", base.config)
        var params = EncoderInspectorParameters(config: reference.config, model: base.config, criteria: reference.criteria)
        try params.load(reference)
        let (batch, loss, logits) = try Self.fixture()
        let engine = BERTLoRA(base: base, pool: ComputePool(threads: 2))
        var grads = [Float](repeating: 0, count: params.count)
        let result = try grads.withUnsafeMutableBufferPointer { try engine.run(batch, parameters: params, gradients: $0.baseAddress!) }
        #expect(abs(result.loss - loss) < 1e-4 * loss, "loss \(result.loss) vs PEFT \(loss)")
        for (a, b) in zip(result.logits.flatMap { $0 }, logits.flatMap { $0 }) { #expect(abs(Double(a) - b) < 2e-4, "logit \(a) vs \(b)") }

        // Every module's gradients, and the heads', within 1e-3 of PEFT's (relative, per tensor).
        var got = params
        got.values = grads
        let mine = got.adapter(), want = try Self.adapter("gradients.safetensors", base.config)
        var worst = 0.0
        for m in want.modules {
            let g = try #require(mine.module(layer: m.layer, m.target))
            let e = max(LoRAReferenceTests.relativeError(g.a, m.a), LoRAReferenceTests.relativeError(g.b, m.b))
            #expect(e < 1e-3, "layer \(m.layer) \(m.target.rawValue): relative error \(e)")
            worst = max(worst, e)
        }
        #expect(LoRAReferenceTests.relativeError(mine.headWeights, want.headWeights) < 1e-3)
        #expect(LoRAReferenceTests.relativeError(mine.headBiases, want.headBiases) < 1e-3)
        #expect(worst > 0)

        // The forward without gradients gives the same loss.
        let plain = try engine.run(batch, parameters: params, gradients: nil)
        #expect(plain.loss == result.loss)
    }

    /// Served merged into the encoder's weights, the adapter gives the training forward's logits.
    @Test func mergedEncoderScoresLikeTheTrainingForward() throws {
        let base = try #require(EncoderTestModel.encoder)
        let reference = try Self.adapter("parameters.safetensors", base.config)
        let (batch, _, logits) = try Self.fixture()
        let merged = try reference.merged(into: base)
        let (states, offsets) = try merged.hiddenStates(batch.map { $0.encoding })
        let h = base.config.hiddenSize
        for i in batch.indices {
            var pooled = [Float](repeating: 0, count: h)
            for t in offsets[i]..<offsets[i + 1] { for j in 0..<h { pooled[j] += states[t * h + j] } }
            for j in 0..<h { pooled[j] /= Float(offsets[i + 1] - offsets[i]) }
            let p = reference.probabilities(pooled: pooled, hidden: h)
            for c in reference.criteria.indices {
                #expect(abs(Double(p[c]) - 1 / (1 + exp(-logits[i][c]))) < 2e-4)
            }
        }
    }
}
