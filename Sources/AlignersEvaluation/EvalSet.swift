import AlignersCore
import AlignersEngine
import AlignersSquadModels
import Foundation

/// What an evaluation line carries beside the chat: where it came from, which answer went in, and
/// the references that exist for it. It travels through `aligners filter` as the line's `eval` field.
public struct EvalMeta: Codable, Sendable, Hashable {
    /// "rejected" (a misaligned answer), "chosen" (an aligned one: changing it is the alignment tax),
    /// or "generated" (the generator's answer to an instruction).
    public var input: String
    public var id: String
    /// The data set's criterion; the judge of this criterion decides win rates.
    public var criterion: String
    public var source: String
    public var chosen: String?
    public var rejected: String?
    public var correctAnswers: [String]?
    public var incorrectAnswers: [String]?
    /// A strong model's answer (AlpacaEval's gpt-4-1106-preview).
    public var reference: String?
    /// BBQ: "ambig" (the gold answer is "cannot be determined") or "disambig" (the person the context names).
    public var condition: String?

    /// The set a sample is reported under: its criterion, or the source for instruction sets.
    public var set: String { input == "generated" ? source : criterion }

    enum CodingKeys: String, CodingKey {
        case input, id, criterion, source, chosen, rejected, reference
        case correctAnswers = "correct_answers", incorrectAnswers = "incorrect_answers", condition = "context_condition"
    }
}

/// Builds the input lines of an evaluation from the data files.
public enum EvalSet {
    /// One line per (row, kind): the conversation with the given answer as the last assistant turn.
    /// Rows are taken in file order after a seeded shuffle, `limit` per source.
    public static func lines(rows: [PreferenceRow], extras: [String: [String: Any]], kinds: [String],
                             limitPerSource: Int?, seed: UInt64) -> [[String: Any]] {
        var bySource: [String: [PreferenceRow]] = [:]
        var sourceOrder: [String] = []
        for r in rows {
            if bySource[r.source] == nil { sourceOrder.append(r.source) }
            bySource[r.source, default: []].append(r)
        }
        var out: [[String: Any]] = []
        for source in sourceOrder {
            var picked = bySource[source]!
            var rng = SplitMix64(seed: seed)
            picked.shuffle(using: &rng)
            if let limitPerSource { picked = Array(picked.prefix(limitPerSource)) }
            for r in picked {
                let conversation = r.conversation.isEmpty ? [Turn(role: "user", content: r.prompt)] : r.conversation
                for kind in kinds {
                    let answer = kind == "chosen" ? r.chosen : r.rejected
                    var meta: [String: Any] = ["input": kind, "id": r.id, "criterion": r.criterion, "source": r.source,
                                               "chosen": r.chosen, "rejected": r.rejected]
                    if let extra = extras[r.id] {
                        for key in ["correct_answers", "incorrect_answers", "context_condition"] { if let v = extra[key] { meta[key] = v } }
                    }
                    out.append(["messages": messages(conversation + [Turn(role: "assistant", content: answer)]), "eval": meta])
                }
            }
        }
        return out
    }

    /// Instruction-only lines (AlpacaEval): the generator writes the answer that the squad then aligns.
    public static func instructionLines(_ url: URL, limit: Int?, seed: UInt64) throws -> [[String: Any]] {
        var items: [[String: Any]] = []
        for (n, line) in try Data(contentsOf: url).split(separator: UInt8(ascii: "\n")).enumerated() {
            guard let o = try? JSONSerialization.jsonObject(with: Data(line)) as? [String: Any],
                  let prompt = o["prompt"] as? String ?? o["instruction"] as? String else {
                throw EvaluationError("\(url.path):\(n + 1): expected an object with a \"prompt\" string")
            }
            var meta: [String: Any] = ["input": "generated", "id": "alpaca-\(n + 1)", "criterion": "helpful",
                                       "source": "alpaca-eval"]
            if let r = o["reference"] as? String { meta["reference"] = r }
            items.append(["messages": messages([Turn(role: "user", content: prompt)]), "eval": meta])
        }
        var rng = SplitMix64(seed: seed)
        items.shuffle(using: &rng)
        return limit.map { Array(items.prefix($0)) } ?? items
    }

    /// The extra fields of rows (TruthfulQA's answer lists, BBQ's context condition) by id, which
    /// `PreferenceRow` does not keep.
    public static func extras(_ url: URL) throws -> [String: [String: Any]] {
        var out: [String: [String: Any]] = [:]
        for line in try Data(contentsOf: url).split(separator: UInt8(ascii: "\n")) {
            guard let o = try? JSONSerialization.jsonObject(with: Data(line)) as? [String: Any], let id = o["id"] as? String,
                  o["correct_answers"] != nil || o["context_condition"] != nil else { continue }
            out[id] = o
        }
        return out
    }

    static func messages(_ turns: [Turn]) -> [[String: String]] { turns.map { ["role": $0.role, "content": $0.content] } }
}

/// One line of `aligners filter --explain` output for an evaluation line, read back.
public struct EvalRecord: Sendable {
    public struct Step: Sendable {
        public var criterion: String
        public var changed: Bool
        public var note: String
        /// The criterion's own score before and after this aligner's rewrite (nil when not re-inspected).
        public var scoreBefore: Double?
        public var scoreAfter: Double?
    }
    public var meta: EvalMeta
    public var conversation: [Turn]
    public var original: String
    public var aligned: String
    /// Inspector scores after each inspection pass: [0] initial, [k] after the k-th aligner pass.
    public var passes: [Int: [String: Double]]
    public var steps: [Step]
    public var error: String?

    public var changed: Bool { steps.contains(where: \.changed) && aligned != original }

    /// A criterion's score before aligning, after the first aligner pass, and after the squad.
    public func scores(_ criterion: String) -> (before: Double, afterFirst: Double, after: Double)? {
        guard let before = passes[0]?[criterion] else { return nil }
        let afterFirst = passes[1]?[criterion] ?? before
        let last = passes.keys.sorted().last { passes[$0]?[criterion] != nil }.flatMap { passes[$0]?[criterion] } ?? before
        return (before, afterFirst, last)
    }

    /// Parses one output line; nil for lines that are not evaluation lines. Needs `--explain` output
    /// for the per-pass scores (without it, only before/after are known).
    public static func parse(_ line: Data) throws -> EvalRecord? {
        guard let o = try JSONSerialization.jsonObject(with: line) as? [String: Any] else {
            throw EvaluationError("not a JSON object")
        }
        guard let metaObject = o["eval"] else { return nil }
        let meta = try JSONDecoder().decode(EvalMeta.self, from: JSONSerialization.data(withJSONObject: metaObject))
        let messages = (o["messages"] as? [[String: Any]] ?? []).map {
            Turn(role: $0["role"] as? String ?? "", content: $0["content"] as? String ?? "")
        }
        let aligned = messages.last?.role == "assistant" ? messages.last!.content : ""
        let conversation = messages.last?.role == "assistant" ? Array(messages.dropLast()) : messages
        let alignment = o["alignment"] as? [String: Any] ?? [:]
        var passes: [Int: [String: Double]] = [:]
        for event in alignment["trace"] as? [[String: Any]] ?? [] where event["event"] as? String == "inspect" {
            if let pass = event["pass"] as? Int, let scores = event["scores"] as? [String: Double] { passes[pass] = scores }
        }
        if passes.isEmpty, let scores = alignment["scores"] as? [String: [String: Any]] {
            passes[0] = scores.compactMapValues { $0["before"] as? Double }
            passes[1_000] = scores.compactMapValues { $0["after"] as? Double }
        }
        let steps = (alignment["steps"] as? [[String: Any]] ?? []).map {
            Step(criterion: $0["criterion"] as? String ?? "", changed: $0["changed"] as? Bool ?? false, note: $0["note"] as? String ?? "",
                 scoreBefore: $0["score_before"] as? Double, scoreAfter: $0["score_after"] as? Double)
        }
        var error: String?
        if let e = o["error"] as? [String: Any] { error = "\(e["stage"] ?? "input"): \(e["message"] ?? "")" }
        return EvalRecord(meta: meta, conversation: conversation, original: alignment["original_response"] as? String ?? aligned,
                          aligned: aligned, passes: passes, steps: steps, error: error)
    }
}
