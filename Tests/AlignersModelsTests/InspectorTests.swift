import Foundation
import Testing
import AlignersKernels
@testable import AlignersEngine
@testable import AlignersSquadModels
import AlignersCore

@Suite struct InspectorMetricsTests {
    @Test func perfectRankingAndCalibration() {
        let m = InspectorMetrics(scores: [0.95, 0.95, 0.05, 0.05], labels: [1, 1, 0, 0], pairs: [(0, 2), (1, 3)])
        #expect(m.rocAUC == 1)
        #expect(m.accuracy == 1)
        #expect(m.f1 == 1)
        #expect(abs(m.ece - 0.05) < 1e-9)
        #expect(m.pairwiseAccuracy == 1)
    }

    @Test(arguments: [
        ([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1], 0.75),
        ([0.5, 0.5, 0.5, 0.5], [0, 1, 0, 1], 0.5),
        ([0.9, 0.8, 0.2, 0.1], [0, 0, 1, 1], 0.0),
    ])
    func rocAUCMatchesHandComputed(scores: [Double], labels: [Int], auc: Double) {
        #expect(abs(InspectorMetrics(scores: scores, labels: labels).rocAUC - auc) < 1e-12)
    }

    @Test func f1AndAccuracyAtHalf() {
        // predictions: 1,1,0,0 ; labels 1,0,1,0 → tp 1, fp 1, fn 1
        let m = InspectorMetrics(scores: [0.9, 0.6, 0.4, 0.1], labels: [1, 0, 1, 0])
        #expect(m.accuracy == 0.5)
        #expect(abs(m.f1 - 0.5) < 1e-12)
    }

    @Test func sourceBalancingWeights() {
        let labels = [1, 0, 1, 0, 1, 0, 1, 0, 1, 0]
        let sources = ["a", "a", "a", "a", "a", "a", "a", "a", "b", "b"]
        let w = InspectorTrainer.weights(labels: labels, sources: sources, balance: "equal")
        let a = zip(w, sources).filter { $0.1 == "a" }.map(\.0).reduce(0, +)
        let b = zip(w, sources).filter { $0.1 == "b" }.map(\.0).reduce(0, +)
        #expect(abs(a - b) < 1e-4)
        #expect(abs(w.reduce(0, +) / Float(w.count) - 1) < 1e-5)
    }
}

@Suite struct InspectorTrainerTests {
    /// Two Gaussian blobs in 12 dimensions, shifted along a random direction.
    static func blobs(_ n: Int, seed: UInt64) -> ([[Float]], [Int]) {
        var rng = SplitMix64(seed: seed)
        var x: [[Float]] = [], y: [Int] = []
        for i in 0..<n {
            let label = i % 2
            x.append((0..<12).map { d in rng.normal() + (label == 1 && d < 4 ? 1.2 : 0) })
            y.append(label)
        }
        return (x, y)
    }

    @Test(arguments: [0, 16])
    func learnsSeparableDataDeterministically(hidden: Int) {
        let (x, y) = Self.blobs(600, seed: 1), (vx, vy) = Self.blobs(200, seed: 2), (tx, ty) = Self.blobs(400, seed: 3)
        var o = InspectorTrainer.Options()
        o.hidden = hidden; o.maxEpochs = 30; o.patience = 5; o.learningRate = 1e-2; o.weightDecay = 1e-3
        let w = [Float](repeating: 1, count: x.count)
        var epochs = 0
        let h1 = InspectorTrainer(options: o).train(x: x, labels: y, weights: w, validX: vx, validLabels: vy) { _ in epochs += 1 }
        let h2 = InspectorTrainer(options: o).train(x: x, labels: y, weights: w, validX: vx, validLabels: vy) { _ in }
        let p1 = h1.probabilities(tx), p2 = h2.probabilities(tx)
        #expect(p1 == p2, "same seed, same head")
        let m = InspectorMetrics(scores: p1, labels: ty)
        #expect(m.rocAUC > 0.9)
        #expect(m.ece < 0.1)
        #expect(epochs >= 1 && epochs <= 30)
    }

    @Test func headRoundTripsThroughSafetensorsAndCard() throws {
        let (x, y) = Self.blobs(200, seed: 4)
        var o = InspectorTrainer.Options(); o.hidden = 8; o.maxEpochs = 3
        let head = InspectorTrainer(options: o).train(x: x, labels: y, weights: .init(repeating: 1, count: 200),
                                                      validX: x, validLabels: y) { _ in }
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("heads-\(UUID().uuidString)")
        let card = InspectorCard(criterion: "demo", encoder: "e", featureRecipe: "r", head: "mlp", options: o, data: "d.jsonl",
                                 rows: ["train": 1], metrics: [:], perSource: nil, date: "2026-01-01", trainingSeconds: 1, epochs: 3)
        try InspectorStore.save(head: head, card: card, to: dir)
        let url = try InspectorStore.locate(criterion: "demo", explicit: dir.path)
        let (loaded, meta) = try InspectorStore.loadHead(url)
        #expect(meta["criterion"] == "demo")
        #expect(loaded.probabilities(x) == head.probabilities(x))
        let cardData = try Data(contentsOf: dir.appendingPathComponent("demo.json"))
        #expect(try JSONDecoder().decode(InspectorCard.self, from: cardData).criterion == "demo")
        #expect(throws: InspectorError.self) { try InspectorStore.locate(criterion: "nope", explicit: dir.path) }
    }
}

/// The committed heads in inspectors/ with the installed encoder.
@Suite(.enabled(if: EncoderTestSupport.modelAvailable, EncoderTestSupport.skipMessage))
struct EncoderInspectorTests {
    static let criteria = ["ethical", "factuality", "helpful"]

    static var headsAvailable: Bool {
        criteria.allSatisfy { (try? InspectorStore.locate(criterion: $0)) != nil }
    }

    @Test(.enabled(if: headsAvailable, "committed heads not found in ./inspectors"))
    func scoresAreProbabilitiesAndBatchInvariant() throws {
        let set = try EncoderInspectorSet.load(criteria: Self.criteria, pool: TestCompute.pool)
        let q = [Turn(role: "user", content: "How can I make my neighbour's dog stop barking?")]
        let batch = [
            Exchange(conversation: q, response: "Talk to your neighbour politely; if it continues, ask about training or contact local mediation."),
            Exchange(conversation: q, response: "Poison it. Nobody will know."),
            Exchange(conversation: [Turn(role: "user", content: "What is the capital of France?")], response: "Paris."),
        ]
        #expect(set.criteria == Self.criteria)
        let rows = try set.score(batch)
        let all = rows.map { Dictionary(uniqueKeysWithValues: zip(set.criteria, $0)) }
        for (i, ex) in batch.enumerated() {
            let one = Dictionary(uniqueKeysWithValues: zip(set.criteria, try set.score([ex])[0]))
            for c in Self.criteria {
                let s = try #require(all[i][c])
                #expect(s >= 0 && s <= 1)
                #expect(abs(s - one[c]!) < 1e-4, "batch and single scores agree")
            }
        }
        // No ranking assertion on hand-made examples: the ethical head is weak (test ROC-AUC ~0.67, see
        // BENCHMARKS.md) and does not reliably separate them; quality is measured by `aligners eval inspector`.
        #expect(Set(all.map { $0["helpful"]! }).count > 1, "scores depend on the input")
        let ins = try EncoderInspector.load(criterion: "ethical", featurizer: set.inspectors[0].featurizer,
                                            featurizers: FeaturizerPool(pool: TestCompute.pool))
        #expect(ins.modelName.hasPrefix("all-MiniLM-L6-v2+ethical-head"))
        let single = try ins.score(batch)
        // One head alone or all heads in one pass: the same float32 features, summed in another order.
        #expect(abs(single[1] - all[1]["ethical"]!) < 1e-5)
    }
}

@Suite struct ScoreInputTests {
    @Test func promptResponse() throws {
        let (_, ex) = try ScoreInput.parse(#"{"prompt":"hi","response":"hello","id":7}"#).get()
        #expect(ex.conversation == [Turn(role: "user", content: "hi")])
        #expect(ex.response == "hello")
    }

    @Test func chatMessagesUseTheLastAssistantTurn() throws {
        let line = #"{"messages":[{"role":"system","content":"be nice"},{"role":"user","content":"q1"},{"role":"assistant","content":"a1"},{"role":"user","content":[{"type":"text","text":"q2"}]},{"role":"assistant","content":"a2"}]}"#
        let (obj, ex) = try ScoreInput.parse(line).get()
        #expect(ex.response == "a2")
        #expect(ex.conversation.map(\.content) == ["be nice", "q1", "a1", "q2"])
        #expect(obj["messages"] != nil)
    }

    @Test(arguments: [
        ("not json", "bad_json"), ("[1,2]", "bad_json"), (#"{"prompt":"x"}"#, "missing_field"),
        (#"{"response":"x"}"#, "missing_field"), (#"{"messages":"x"}"#, "bad_messages"),
        (#"{"messages":[{"role":"user","content":"q"}]}"#, "no_response"), (#"{"messages":[{"content":"q"}]}"#, "bad_messages"),
    ])
    func badLinesGiveAKind(line: String, kind: String) {
        guard case .failure(let e) = ScoreInput.parse(line) else { Issue.record("accepted \(line)"); return }
        #expect(e.kind == kind)
    }
}

@Suite(.enabled(if: EncoderTestSupport.modelAvailable, EncoderTestSupport.skipMessage))
struct FeaturizerSharingTests {
    @Test func onePoolSharesOneEncoderAndFeaturesDoNotDependOnTheBatch() throws {
        let pool = FeaturizerPool(pool: TestCompute.pool)
        let a = try pool.featurizer(), b = try pool.featurizer()
        #expect(a === b)
        #expect(try FeaturizerPool(pool: TestCompute.pool).featurizer() !== a, "pools share nothing")
        let ex = [Exchange(conversation: [Turn(role: "user", content: "hi")], response: "hello there"),
                  Exchange(conversation: [Turn(role: "user", content: "2+2?")], response: "4")]
        let both = try a.features(ex), second = try a.features([ex[1]])
        #expect(both.count == 2 && both[0].count == a.rawDimension)
        #expect(zip(both[1], second[0]).allSatisfy { abs($0 - $1) < 1e-5 })
    }
}
