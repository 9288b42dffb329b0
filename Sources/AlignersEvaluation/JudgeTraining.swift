import AlignersCore
import AlignersEngine
import AlignersSquadModels
import Foundation

/// Trains one criterion's judge on one split of its preference data and measures it on another.
public enum JudgeTraining {
    public struct Pairs {
        public var differences: [[Float]] = []   // φ(x, chosen) − φ(x, rejected)
        public var sources: [String] = []
    }

    public static func pairs(_ rows: [PreferenceRow], embedder: TextEmbedder, progress: ((Int, Int) -> Void)? = nil) throws -> Pairs {
        var texts: [String] = []
        for r in rows {
            let conversation = r.conversation.isEmpty ? [Turn(role: "user", content: r.prompt)] : r.conversation
            texts += [InspectorFeaturizer.flatten(conversation), r.chosen, r.rejected]
        }
        let v = try embedder.embed(texts, progress: progress)
        var out = Pairs()
        for (i, r) in rows.enumerated() {
            let u = v[3 * i]
            let good = PairwiseJudge.features(conversation: u, answer: v[3 * i + 1], answerTokens: embedder.tokenCount(r.chosen))
            let bad = PairwiseJudge.features(conversation: u, answer: v[3 * i + 2], answerTokens: embedder.tokenCount(r.rejected))
            out.differences.append(zip(good, bad).map { $0 - $1 })
            out.sources.append(r.source)
        }
        return out
    }

    public static func train(criterion: String, dataName: String, train: Pairs, trainSplit: String,
                             heldOut: Pairs, heldOutSplit: String, recipe: String) -> (PairwiseJudge, JudgeCard) {
        let fit = PairwiseJudgeTrainer.fit(differences: train.differences)
        let judge = PairwiseJudge(criterion: criterion, weights: fit.weights, recipe: recipe)
        var correct = 0
        var bySource: [String: (Int, Int)] = [:]
        for (d, s) in zip(heldOut.differences, heldOut.sources) {
            let ok = judge.strength(d) > 0
            correct += ok ? 1 : 0
            bySource[s, default: (0, 0)].0 += ok ? 1 : 0
            bySource[s, default: (0, 0)].1 += 1
        }
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withFullDate]
        let card = JudgeCard(
            criterion: criterion,
            judge: "pairwise Bradley–Terry logistic model over MiniLM sentence embeddings of the conversation u and the answer v, features [v, u⊙v, answer length]",
            recipe: recipe, encoder: InspectorFeaturizer.encoderName, data: dataName,
            trainedOn: "the \(trainSplit) split of \(dataName) (\(train.differences.count) pairs; the inspectors train on the train split)",
            trainPairs: train.differences.count, lambda: fit.lambda, crossValidatedAccuracy: fit.crossValidatedAccuracy,
            heldOutAccuracy: heldOut.differences.isEmpty ? .nan : Double(correct) / Double(heldOut.differences.count),
            heldOutPairs: heldOut.differences.count,
            heldOutBySource: bySource.mapValues { Double($0.0) / Double(max($0.1, 1)) },
            date: formatter.string(from: Date()))
        return (judge, card)
    }
}
