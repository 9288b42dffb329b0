import Foundation
import AlignersCore
import AlignersEngine
import AlignersSquadModels

/// Training examples for an aligner in the paper's format, `x [INIT] y [ALIGNED] y' [DONE]` with the
/// loss on `y' [DONE]`, built from preference rows (`../shared/data/<criterion>.jsonl`):
/// - a correction per row: y = the misaligned answer, y' = the aligned one;
/// - no-op pairs, y = y' = an aligned answer (the paper's no-op demonstration), so the aligner learns
///   to leave a good answer alone; drawn from the criterion's own rows and, optionally, from other
///   criteria's files (a terse correct answer or a safe refusal is fine for every criterion).
/// Prompts are `TrainedAligner.prompt(for:)`, tokenized as the serving engine tokenizes them.
public struct AlignerDataOptions: Sendable {
    /// Share of no-op pairs in the result (0.25: one in four).
    public var noopFraction: Double = 0.25
    /// Of the no-op pairs, the share drawn from `otherFiles` (when given).
    public var otherNoopShare: Double = 0.3
    /// Rows kept per source (nil: all), so one dataset does not drown the others (BBQ in factuality).
    public var maxPerSource: Int?
    /// Sources used (nil: all).
    public var sources: Set<String>?
    /// Longest example in tokens (longer ones are left out).
    public var maxTokens = 512
    public var seed: UInt64 = 1
    public init() {}
}

public struct AlignerExample: Sendable, Hashable {
    public var sequence: TrainingSequence
    public var source: String
    public var noop: Bool
}

public struct AlignerDataset: Sendable {
    public var examples: [AlignerExample]
    /// Examples left out for length.
    public var droppedForLength: Int
    public var tokenCount: Int { examples.reduce(0) { $0 + $1.sequence.tokens.count } }
    public var lossTokenCount: Int { examples.reduce(0) { $0 + $1.sequence.lossTokens } }

    /// Counts per source and kind, for cards and logs.
    public var summary: String {
        var counts: [String: (Int, Int)] = [:]
        for e in examples { counts[e.source, default: (0, 0)].0 += e.noop ? 0 : 1; counts[e.source, default: (0, 0)].1 += e.noop ? 1 : 0 }
        return counts.keys.sorted().map { "\($0): \(counts[$0]!.0) corrections + \(counts[$0]!.1) no-op" }.joined(separator: "; ")
    }

    public static func build(rows: [PreferenceRow], otherRows: [PreferenceRow] = [], tokenizer: BPETokenizer,
                             options o: AlignerDataOptions) -> AlignerDataset {
        var rng = SplitMix64(seed: o.seed)
        // Sources balanced by a cap, rows shuffled first so the cap takes a fair sample.
        var bySource: [String: [PreferenceRow]] = [:]
        for r in rows where o.sources?.contains(r.source) ?? true { bySource[r.source, default: []].append(r) }
        var kept: [PreferenceRow] = []
        for src in bySource.keys.sorted() {
            var list = bySource[src]!
            list.shuffle(using: &rng)
            if let cap = o.maxPerSource { list = Array(list.prefix(cap)) }
            kept += list
        }
        func exchange(_ r: PreferenceRow, _ response: String) -> Exchange {
            Exchange(conversation: r.conversation.isEmpty ? [Turn(role: "user", content: r.prompt)] : r.conversation, response: response)
        }
        var pairs: [(Exchange, String, String, Bool)] = kept.map { (exchange($0, $0.rejected), $0.chosen, $0.source, false) }
        // No-op pairs: noop / (corrections + noop) = fraction.
        let f = min(max(o.noopFraction, 0), 0.9)
        let noopCount = Int((Double(pairs.count) * f / (1 - f)).rounded())
        let fromOthers = otherRows.isEmpty ? 0 : Int((Double(noopCount) * o.otherNoopShare).rounded())
        var own = kept.shuffled(using: &rng)
        let others = otherRows.shuffled(using: &rng)
        while own.count < noopCount - fromOthers && !kept.isEmpty { own += kept.shuffled(using: &rng) }
        pairs += own.prefix(noopCount - fromOthers).map { (exchange($0, $0.chosen), $0.chosen, $0.source, true) }
        pairs += others.prefix(fromOthers).map { (exchange($0, $0.chosen), $0.chosen, $0.source, true) }

        var examples: [AlignerExample] = []
        var dropped = 0
        for (ex, aligned, source, noop) in pairs {
            let prompt = tokenizer.encode(TrainedAligner.prompt(for: ex), parseSpecial: true)
            let target = tokenizer.encode(TrainedAligner.target(aligned), parseSpecial: false, addBOS: false)
            guard prompt.count + target.count <= o.maxTokens, !target.isEmpty else { dropped += 1; continue }
            examples.append(AlignerExample(sequence: TrainingSequence(tokens: prompt + target, lossStart: prompt.count), source: source, noop: noop))
        }
        examples.shuffle(using: &rng)
        return AlignerDataset(examples: examples, droppedForLength: dropped)
    }
}

/// Batches of about `batchSize` sequences of similar length (less padding-free work wasted on
/// attention's longest row, and steady memory), in an order fixed by (seed, epoch): examples are
/// shuffled, sorted by length within windows of 50 batches, cut, and the batches shuffled again.
public func lengthBucketedBatches(_ sequences: [TrainingSequence], batchSize: Int, seed: UInt64, epoch: Int) -> [[Int]] {
    lengthBucketedBatches(lengths: sequences.map(\.tokens.count), batchSize: batchSize, seed: seed, epoch: epoch)
}

/// The same over examples of the given lengths.
public func lengthBucketedBatches(lengths: [Int], batchSize: Int, seed: UInt64, epoch: Int) -> [[Int]] {
    var rng = SplitMix64(seed: seed &+ UInt64(epoch) &* 0x9E37_79B9)
    var order = Array(lengths.indices)
    order.shuffle(using: &rng)
    let window = batchSize * 50
    var batches: [[Int]] = []
    var i = 0
    while i < order.count {
        let w = order[i..<min(order.count, i + window)].sorted { lengths[$0] < lengths[$1] }
        var j = 0
        while j < w.count {
            batches.append(Array(w[j..<min(w.count, j + batchSize)]))
            j += batchSize
        }
        i += window
    }
    batches.shuffle(using: &rng)
    return batches
}

/// Splits one batch into micro-batches of at most `tokens` tokens (a sequence longer than that is
/// a micro-batch of its own).
public func microBatches(_ batch: [Int], _ sequences: [TrainingSequence], tokens: Int) -> [[Int]] {
    microBatches(batch, lengths: sequences.map(\.tokens.count), tokens: tokens)
}

/// The same with each example's length given by `lengths[i]`.
public func microBatches(_ batch: [Int], lengths: [Int], tokens: Int) -> [[Int]] {
    var out: [[Int]] = [], cur: [Int] = [], n = 0
    for i in batch {
        let len = lengths[i]
        if !cur.isEmpty && n + len > tokens { out.append(cur); cur = []; n = 0 }
        cur.append(i); n += len
    }
    if !cur.isEmpty { out.append(cur) }
    return out
}
