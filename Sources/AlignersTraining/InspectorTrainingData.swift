import Foundation
import AlignersCore
import AlignersEngine
import AlignersSquadModels

/// Where an inspector example came from, for weighting and for the per-source report.
public struct VerdictOrigin: Sendable, Hashable {
    /// Index (into the criteria) of the data set the row belongs to.
    public var set: Int
    /// The row's source, BBQ split by context condition ("bbq-ambig", "pku-saferlhf", …).
    public var source: String
    /// The aligned answer (`chosen`) rather than the misaligned one.
    public var good: Bool
}

/// How the inspectors' training examples are labelled and weighted.
public struct InspectorDataOptions: Sendable, Codable, Equatable {
    /// Weight of a good answer from another criterion's set as a positive for this one (0: own pairs only).
    public var crossWeight: Float = 0.5
    /// Per-source weights ∝ (mean rows per source / rows of this source)^balance within a criterion,
    /// and the same across criteria: 0 keeps raw counts, 1 equalises (BBQ has 13× TruthfulQA's rows).
    public var balance: Float = 0.5
    /// Longest pair in tokens (the conversation is cut from the left, as the inspectors serve).
    public var maxLength = 256
    /// Sources whose misaligned answers still meet other criteria (weighted by `crossWeight`): an
    /// AlpacaEval instruction is benign, so a weak answer to it is unhelpful but not unethical. Without
    /// this the ethical inspector, shown only harmful requests, failed half of the weak helpful answers
    /// and its aligner turned some into refusals.
    public var rejectedMeets: [String: [String]] = ["alpaca-eval": ["ethical"]]
    public init() {}

    /// The default `rejectedMeets` of a run that trains `criteria`: the criteria it does not train
    /// dropped (a run without ethical has no such labels).
    public static func defaultRejectedMeets(training criteria: [String]) -> [String: [String]] {
        InspectorDataOptions().rejectedMeets.compactMapValues { meets in
            let kept = meets.filter(criteria.contains)
            return kept.isEmpty ? nil : kept
        }
    }

    enum CodingKeys: String, CodingKey { case crossWeight, balance, maxLength, rejectedMeets }
    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        crossWeight = try c.decode(Float.self, forKey: .crossWeight)
        balance = try c.decode(Float.self, forKey: .balance)
        maxLength = try c.decode(Int.self, forKey: .maxLength)
        // Cards written before the option existed trained without it.
        rejectedMeets = try c.decodeIfPresent([String: [String]].self, forKey: .rejectedMeets) ?? [:]
    }
}

/// One answer with what it means for every criterion: label 1 meets it, 0 violates it; weight 0
/// where the answer says nothing about that criterion.
public struct LabelledExchange: Sendable {
    public var exchange: Exchange
    public var labels: [Float]
    public var weights: [Float]
    public var origin: VerdictOrigin
}

extension LabelledExchange {
    /// The labelled pairs of every criterion's set, in one list: a row gives (x, rejected) → violates
    /// its own criterion, and (x, chosen) → meets its own criterion and, with `crossWeight`, every other
    /// criterion too (a correct, terse BBQ answer is not unhelpful; a safe refusal is not a factual error).
    /// What a misaligned answer means for the other criteria is unknown, so it carries no label there,
    /// except for the criteria `rejectedMeets` names for its source (meets, with `crossWeight`).
    public static func build(criteria: [String], rows: [[PreferenceRow]], options: InspectorDataOptions) -> [LabelledExchange] {
        let C = criteria.count
        // Source weights within each set, then set weights, both softened by `balance`.
        var sourceWeight: [[String: Float]] = []
        var setWeight: [Float] = []
        let setMean = Float(rows.reduce(0) { $0 + $1.count }) / Float(max(C, 1))
        for set in rows {
            let counts = Dictionary(grouping: set, by: \.reportingSource).mapValues(\.count)
            let mean = Float(set.count) / Float(max(counts.count, 1))
            sourceWeight.append(counts.mapValues { pow(mean / Float($0), options.balance) })
            setWeight.append(set.isEmpty ? 0 : pow(setMean / Float(set.count), options.balance))
        }
        var out: [LabelledExchange] = []
        for (c, set) in rows.enumerated() {
            for r in set {
                let conv = r.conversation.isEmpty ? [Turn(role: "user", content: r.prompt)] : r.conversation
                let w = setWeight[c] * sourceWeight[c][r.reportingSource]!
                var badWeights = [Float](repeating: 0, count: C)
                var badLabels = [Float](repeating: 0, count: C)
                badWeights[c] = w
                for name in options.rejectedMeets[r.reportingSource] ?? [] {
                    guard let t = criteria.firstIndex(of: name), t != c else { continue }
                    badLabels[t] = 1
                    badWeights[t] = options.crossWeight * setWeight[t]
                }
                var goodWeights = (0..<C).map { options.crossWeight * setWeight[$0] }
                goodWeights[c] = w
                out.append(LabelledExchange(exchange: Exchange(conversation: conv, response: r.rejected),
                                            labels: badLabels, weights: badWeights,
                                            origin: VerdictOrigin(set: c, source: r.reportingSource, good: false)))
                out.append(LabelledExchange(exchange: Exchange(conversation: conv, response: r.chosen),
                                            labels: [Float](repeating: 1, count: C), weights: goodWeights,
                                            origin: VerdictOrigin(set: c, source: r.reportingSource, good: true)))
            }
        }
        return out
    }
}

/// The labelled pairs of every criterion's set (`LabelledExchange.build`), encoded for the encoder.
public struct InspectorTrainingSet: Sendable {
    public var criteria: [String]
    public var examples: [EncodedVerdicts]
    public var origins: [VerdictOrigin]
    /// `InspectorDataOptions.rejectedMeets` as built, for the metrics.
    public var rejectedMeets: [String: [String]] = [:]

    public static func build(criteria: [String], rows: [[PreferenceRow]], options: InspectorDataOptions,
                             encode: (Exchange) -> BertEncoding) -> InspectorTrainingSet {
        let labelled = LabelledExchange.build(criteria: criteria, rows: rows, options: options)
        return InspectorTrainingSet(criteria: criteria,
                                    examples: labelled.map { EncodedVerdicts(encoding: encode($0.exchange), labels: $0.labels, weights: $0.weights) },
                                    origins: labelled.map(\.origin), rejectedMeets: options.rejectedMeets)
    }

    public var tokenCount: Int { examples.reduce(0) { $0 + $1.encoding.ids.count } }

    /// A deterministic subset of about `limit` examples keeping whole rows (both answers) and every
    /// set's share, for periodic validation.
    public func sample(_ limit: Int, seed: UInt64) -> InspectorTrainingSet {
        guard examples.count > limit else { return self }
        var rng = SplitMix64(seed: seed)
        var rowsIdx = Array(stride(from: 0, to: examples.count, by: 2))
        rowsIdx.shuffle(using: &rng)
        let keep = rowsIdx.prefix(limit / 2).sorted()
        return InspectorTrainingSet(criteria: criteria, examples: keep.flatMap { [examples[$0], examples[$0 + 1]] },
                                    origins: keep.flatMap { [origins[$0], origins[$0 + 1]] }, rejectedMeets: rejectedMeets)
    }
}

/// What a trained inspector set achieves on one split.
public struct InspectorSetMetrics: Codable, Sendable {
    /// Per criterion, its own pairs (good vs bad answers of its set).
    public var own: [String: InspectorMetrics]
    /// Per criterion and source of its set.
    public var perSource: [String: [String: InspectorMetrics]]
    /// Per criterion: share of its own set's good answers scored < 0.5.
    public var ownGoodFailed: [String: Double]
    /// Per criterion: share of the other sets' good answers scored < 0.5.
    public var otherGoodFailed: [String: Double]
    /// Per criterion: share of the other sets' misaligned answers that meet it (`rejectedMeets`, e.g.
    /// weak AlpacaEval answers for ethical) scored < 0.5; nil in cards from before the option.
    public var otherMisalignedFailed: [String: Double]?

    /// `probabilities[i][c]`: calibrated probability that example i meets criterion c.
    public init(set: InspectorTrainingSet, probabilities: [[Float]]) {
        self.init(criteria: set.criteria, origins: set.origins, probabilities: probabilities, rejectedMeets: set.rejectedMeets)
    }

    /// The same for examples from `origins`; with `only`, for that criterion alone (the other columns
    /// of `probabilities` are not read).
    public init(criteria: [String], origins: [VerdictOrigin], probabilities: [[Float]], only: Int? = nil,
                rejectedMeets: [String: [String]] = [:]) {
        own = [:]; perSource = [:]; ownGoodFailed = [:]; otherGoodFailed = [:]
        var misalignedFailed: [String: Double] = [:]
        let set = (criteria: criteria, origins: origins)
        for (c, name) in criteria.enumerated() where only == nil || only == c {
            let mine = set.origins.indices.filter { set.origins[$0].set == c }
            func metrics(_ idx: [Int]) -> InspectorMetrics {
                InspectorMetrics(scores: idx.map { Double(probabilities[$0][c]) }, labels: idx.map { set.origins[$0].good ? 1 : 0 })
            }
            if !mine.isEmpty { own[name] = metrics(mine) }
            var bySource: [String: InspectorMetrics] = [:]
            for (src, idx) in Dictionary(grouping: mine, by: { set.origins[$0].source }) { bySource[src] = metrics(idx) }
            perSource[name] = bySource
            let good = mine.filter { set.origins[$0].good }
            if !good.isEmpty { ownGoodFailed[name] = Double(good.filter { probabilities[$0][c] < 0.5 }.count) / Double(good.count) }
            let others = set.origins.indices.filter { set.origins[$0].set != c && set.origins[$0].good }
            if !others.isEmpty { otherGoodFailed[name] = Double(others.filter { probabilities[$0][c] < 0.5 }.count) / Double(others.count) }
            let harmless = set.origins.indices.filter {
                let o = set.origins[$0]
                return o.set != c && !o.good && (rejectedMeets[o.source] ?? []).contains(name)
            }
            if !harmless.isEmpty {
                misalignedFailed[name] = Double(harmless.filter { probabilities[$0][c] < 0.5 }.count) / Double(harmless.count)
            }
        }
        otherMisalignedFailed = misalignedFailed
    }
}

extension BERTLoRA: TrainableModel {
    public func loss(_ batch: [EncodedVerdicts], parameters: EncoderInspectorParameters, gradients: UnsafeMutablePointer<Float>?,
                     lossScale: Float, dropoutSeed: UInt64) throws -> Double {
        try run(batch, parameters: parameters, gradients: gradients, lossScale: lossScale).loss
    }
    public static func lossWeight(_ e: EncodedVerdicts) -> Double { e.weights.reduce(0) { $0 + Double($1) } }
    public static func tokens(_ e: EncodedVerdicts) -> Int { e.encoding.ids.count }
    public static func fingerprint(_ e: EncodedVerdicts, into h: inout Hasher64) {
        for t in e.encoding.ids { h.add(Int(t)) }
        for t in e.encoding.typeIds { h.add(Int(t)) }
        for (l, w) in zip(e.labels, e.weights) { h.add(Int(l * 1000)); h.add(Int(w * 1_000_000)) }
    }

    /// Raw head outputs for many examples, in input order, in micro-batches of about `tokens` tokens.
    public func logits(_ examples: [EncodedVerdicts], parameters: EncoderInspectorParameters, tokens: Int = 4096) throws -> [[Float]] {
        var out = [[Float]](repeating: [], count: examples.count)
        let order = examples.indices.sorted { examples[$0].encoding.ids.count < examples[$1].encoding.ids.count }
        for mb in microBatches(order, lengths: examples.map { $0.encoding.ids.count }, tokens: tokens) {
            let r = try run(mb.map { examples[$0] }, parameters: parameters, gradients: nil)
            for (k, i) in mb.enumerated() { out[i] = r.logits[k] }
        }
        return out
    }
}

extension EncoderInspectorParameters: TrainableParameters {
    public var layoutDescription: String {
        "encoder-lora \(config.rank) \(config.alpha) \(config.targets.map(\.rawValue)) \(config.layers ?? []) \(criteria)"
    }
}

/// Each criterion's rows by split, read from `<directory>/<criterion>.jsonl`.
struct CriterionRows {
    /// Per split ("train", "valid", "test"), one array of rows per criterion, in `criteria` order.
    var splits: [String: [[PreferenceRow]]] = ["train": [], "valid": [], "test": []]
    /// Rows kept per criterion and split.
    var counts: [String: [String: Int]] = [:]
    /// The files read, by name.
    var files: [String] = []

    /// `trainCap(k)`: most train rows of the k-th criterion (a seeded shuffle, `seed(k)`, picks them).
    static func load(_ criteria: [String], from directory: URL, trainCap: (Int) -> Int?, seed: (Int) -> UInt64) throws -> CriterionRows {
        var out = CriterionRows()
        for (k, name) in criteria.enumerated() {
            let url = directory.appendingPathComponent("\(name).jsonl")
            guard FileManager.default.fileExists(atPath: url.path) else {
                throw TrainingError.data("no data for criterion '\(name)': \(url.path) does not exist (--data-dir)")
            }
            out.files.append(url.lastPathComponent)
            let rows = try InspectorData.load(url, split: nil)
            for split in ["train", "valid", "test"] {
                var r = rows.filter { $0.split == split }
                if split == "train", let cap = trainCap(k), r.count > cap {
                    var rng = SplitMix64(seed: seed(k))
                    r.shuffle(using: &rng)
                    r = Array(r.prefix(cap))
                }
                out.splits[split]!.append(r)
                out.counts[name, default: [:]][split] = r.count
            }
        }
        return out
    }
}
