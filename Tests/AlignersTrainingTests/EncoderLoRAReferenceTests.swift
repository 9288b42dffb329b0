import Foundation
import Testing
import AlignersCore
import AlignersKernels
@testable import AlignersEngine
@testable import AlignersSquadModels
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
    static let encoder: BERTEncoder? = directory.flatMap { try? BERTEncoder(modelDirectory: $0, pool: ComputeContext(threads: 2).pool) }
    /// The models directory the encoder was found in.
    static var modelsDir: String? {
        directory.map { $0.deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path }
    }
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
        let engine = BERTLoRA(base: base, pool: ComputeContext(threads: 2).pool)
        _ = try engine.run(batch + batch, parameters: params, gradients: nil)   // the kept tape is now larger than needed
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

    /// Served as `FineTunedInspectors` (what `inspector: {head: inspectors/fine-tuned}` loads): every
    /// criterion of an exchange from one pass, equal to the training forward on the same pair
    /// encoding; repeated exchanges come from the memo; an unknown criterion is refused by name.
    @Test func fineTunedInspectorsServeTheTrainedHeads() throws {
        let base = try #require(EncoderTestModel.encoder)
        let url = Self.dir.appendingPathComponent("parameters.safetensors")
        let set = try FineTunedInspectors(file: url, modelsDir: EncoderTestModel.modelsDir, pool: ComputeContext(threads: 2).pool)
        #expect(FineTunedInspectors.isFineTuned(try SafetensorsFile(path: url.path)))
        let exchanges = [
            Exchange(conversation: [Turn(role: "user", content: "How can I steal a stop sign?")], response: "You cannot steal a stop sign."),
            Exchange(conversation: [Turn(role: "user", content: "Who was too lazy to work?")], response: "Cannot be determined."),
        ]
        let p = try set.probabilities(exchanges)
        var params = EncoderInspectorParameters(config: set.adapter.config, model: base.config, criteria: set.adapter.criteria)
        try params.load(set.adapter)
        let batch = exchanges.map { EncodedVerdicts(encoding: set.featurizer.pairEncoding($0), labels: [0, 0, 0], weights: [0, 0, 0]) }
        let forward = try BERTLoRA(base: base, pool: ComputeContext(threads: 2).pool).run(batch, parameters: params, gradients: nil)
        for i in exchanges.indices {
            for c in 0..<3 { #expect(abs(p[i][c] - 1 / (1 + exp(-forward.logits[i][c]))) < 1e-4) }
        }
        #expect(try set.probabilities(exchanges.reversed()) == p.reversed())
        let helpful = try set.inspector(for: "helpful")
        #expect(try helpful.score(exchanges) == p.map { Double($0[2]) })
        #expect(throws: InspectorError.self) { try set.inspector(for: "brevity") }
    }
}

/// The label semantics of the inspectors' training set (Criteria/README.md): a row's rejected answer
/// violates its own criterion only; its chosen answer meets its own and, at the cross weight, every
/// other criterion; sources and sets are balanced by the exponent.
struct InspectorTrainingSetTests {
    static func row(_ criterion: String, _ source: String, _ i: Int, condition: String? = nil) throws -> PreferenceRow {
        var o: [String: Any] = ["id": "\(source)-\(i)", "criterion": criterion, "source": source, "split": "train",
                                "conversation": [["role": "user", "content": "q\(i)"]], "prompt": "q\(i)", "rejected": "bad", "chosen": "good"]
        if let condition { o["context_condition"] = condition }
        return try JSONDecoder().decode(PreferenceRow.self, from: JSONSerialization.data(withJSONObject: o))
    }

    @Test func labelsAndWeights() throws {
        let ethical = try (0..<4).map { try Self.row("ethical", "pku", $0) }
        let factual = try (0..<8).map { try Self.row("factuality", "bbq", $0, condition: "ambig") }
            + [try Self.row("factuality", "truthfulqa", 9)]
        var o = InspectorDataOptions()
        o.crossWeight = 0.5
        o.balance = 1
        let set = InspectorTrainingSet.build(criteria: ["ethical", "factuality"], rows: [ethical, factual], options: o) { _ in
            BertEncoding(ids: [101, 102], typeIds: [0, 0])
        }
        #expect(set.examples.count == 2 * (4 + 9))
        // First ethical row: rejected, then chosen.
        let bad = set.examples[0], good = set.examples[1]
        #expect(bad.labels == [0, 0] && bad.weights[1] == 0 && bad.weights[0] > 0)
        #expect(good.labels == [1, 1] && good.weights[0] == bad.weights[0] && good.weights[1] > 0)
        #expect(set.origins[0] == VerdictOrigin(set: 0, source: "pku", good: false))
        #expect(set.origins[8].source == "bbq-ambig")
        // balance 1: the one TruthfulQA row weighs as much as the eight BBQ rows together.
        let bbq = set.examples[8].weights[1], tqa = set.examples[2 * 12].weights[1]
        #expect(abs(tqa - 8 * bbq) < 1e-4)
        // Sets are balanced too: 4 ethical rows against 9 factuality rows, in total weight per set.
        let ethicalTotal = (0..<4).reduce(Float(0)) { $0 + set.examples[2 * $1].weights[0] }
        let factualTotal = (4..<13).reduce(Float(0)) { $0 + set.examples[2 * $1].weights[1] }
        #expect(abs(ethicalTotal - factualTotal) < 1e-3 * factualTotal)
        #expect(set.sample(6, seed: 1).examples.count == 6)
    }

    /// A misaligned answer of a source `rejectedMeets` names is a positive for the criteria it names
    /// (at the cross weight) and stays unlabelled for the rest; the metrics count how many of those fail.
    @Test func rejectedAnswersThatMeetOtherCriteria() throws {
        let ethical = try [Self.row("ethical", "pku", 0)]
        let helpful = try [Self.row("helpful", "alpaca-eval", 1), Self.row("helpful", "alpaca-eval", 2)]
        let factual = try [Self.row("factuality", "truthfulqa", 3)]
        var o = InspectorDataOptions()
        o.crossWeight = 0.5
        o.balance = 0
        o.rejectedMeets = ["alpaca-eval": ["ethical"]]
        let criteria = ["ethical", "factuality", "helpful"]
        let set = InspectorTrainingSet.build(criteria: criteria, rows: [ethical, factual, helpful], options: o) { _ in
            BertEncoding(ids: [101, 102], typeIds: [0, 0])
        }
        let weakHelpful = set.examples[4]  // helpful's first row, rejected
        #expect(set.origins[4] == VerdictOrigin(set: 2, source: "alpaca-eval", good: false))
        #expect(weakHelpful.labels == [1, 0, 0])
        // balance 0: every set and source weighs 1, so the cross weight is 0.5 itself.
        #expect(weakHelpful.weights == [0.5, 0, 1])
        // TruthfulQA's misaligned answer keeps no label outside factuality.
        #expect(set.examples[2].labels == [0, 0, 0] && set.examples[2].weights == [0, set.examples[2].weights[1], 0])
        // The ethical head fails one of the two weak helpful answers.
        var p = [[Float]](repeating: [0.9, 0.9, 0.9], count: set.examples.count)
        p[4][0] = 0.2
        let m = InspectorSetMetrics(set: set, probabilities: p)
        #expect(m.otherMisalignedFailed?["ethical"] == 0.5)
        #expect(m.otherMisalignedFailed?["factuality"] == nil)
        // Options from cards written before the field decode as "none".
        let old = try JSONDecoder().decode(InspectorDataOptions.self, from: Data(#"{"crossWeight":0.5,"balance":0.5,"maxLength":256}"#.utf8))
        #expect(old.rejectedMeets.isEmpty)
        let round = try JSONDecoder().decode(InspectorDataOptions.self, from: JSONEncoder().encode(o))
        #expect(round == o)
        // The default keeps only the criteria a run trains: training factuality alone needs no flag.
        #expect(InspectorDataOptions.defaultRejectedMeets(training: criteria) == ["alpaca-eval": ["ethical"]])
        #expect(InspectorDataOptions.defaultRejectedMeets(training: ["factuality"]).isEmpty)
    }
}
