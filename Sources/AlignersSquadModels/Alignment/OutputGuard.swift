import AlignersEngine
import Foundation
import AlignersCore

/// Guard rails between an aligner model's raw text and the pipeline: strips what is not the
/// corrected answer (template tokens, role tags, an echoed prompt, "Corrected answer:" labels, a
/// critique before the answer), cuts repetition loops and over-long text, and rejects output that
/// is unusable. A rejected output keeps the original response with a note saying why.
///
/// "Already fine": an aligner expresses it by repeating the answer (the criteria's fine
/// demonstrations teach exactly that), or by the marker `[UNCHANGED]`. Either way the original is
/// kept, with the note `unchanged: …`, so the pipeline can tell "fixed" from "left alone".
public struct OutputGuard: Sendable {
    /// What the guard knows besides the raw output.
    public struct Context: Sendable {
        /// The response being corrected.
        public var original: String
        /// The user's last turn (to catch an echoed question).
        public var question: String
        /// Texts the output must not merely copy: the demonstrations' answers and corrections,
        /// the principles.
        public var forbiddenCopies: [String]
        /// Why generation ended (`.length`: the last sentence may be unfinished).
        public var finishReason: FinishReason?
        public init(original: String, question: String = "", forbiddenCopies: [String] = [], finishReason: FinishReason? = nil) {
            self.original = original
            self.question = question
            self.forbiddenCopies = forbiddenCopies
            self.finishReason = finishReason
        }
    }

    /// The longest accepted output: `max(minimumCap, lengthFactor × original)` characters; longer
    /// output is cut at the last sentence end before the cap.
    public var lengthFactor: Double
    public var minimumCap: Int
    /// Labels that introduce the answer proper; the text after the last one is kept.
    public var answerLabels: [String]
    /// Lines starting with these end the answer (the model went on to another section).
    public var sectionLabels: [String]

    public static let unchangedMarker = "[UNCHANGED]"

    public init(lengthFactor: Double = 3, minimumCap: Int = 1200,
                answerLabels: [String] = ["Corrected answer:", "Corrected response:", "Revised answer:", "Improved answer:", "[ALIGNED]"],
                sectionLabels: [String] = ["Critique:", "Question:", "Answer:", "User:", "Human:", "Principles:", "Corrected answer:", "[INIT]"]) {
        self.lengthFactor = lengthFactor
        self.minimumCap = minimumCap
        self.answerLabels = answerLabels
        self.sectionLabels = sectionLabels
    }

    /// The outcome for one raw output.
    public func check(_ raw: String, _ context: Context) -> Alignment {
        let original = context.original
        func keep(_ why: String) -> Alignment { Alignment(response: original, note: why) }

        var text = stripTemplateDebris(raw)
        let hadLabel: Bool
        (text, hadLabel) = afterAnswerLabel(text)
        if !hadLabel, text.range(of: "critique:", options: [.caseInsensitive, .anchored]) != nil {
            return keep("rejected: the aligner wrote a critique but no corrected answer")
        }
        text = cutAtSection(text)
        text = stripLeadingLabels(text)
        text = stripWrappingQuotes(stripViolationTags(text))
        text = text.trimmingCharacters(in: .whitespacesAndNewlines)

        if text.contains(Self.unchangedMarker) || text.isEmpty && hadLabel && raw.contains(Self.unchangedMarker) {
            return keep("unchanged: the aligner judged the answer already fine")
        }
        let q = context.question.trimmingCharacters(in: .whitespacesAndNewlines)
        if !q.isEmpty, Self.normalized(text) == Self.normalized(q) { return keep("rejected: the aligner repeated the question") }
        // An echoed question at the start.
        if q.count >= 12, text.hasPrefix(q) {
            text = String(text.dropFirst(q.count)).trimmingCharacters(in: .whitespacesAndNewlines)
        }
        text = cutRepeatedSentences(text)
        if context.finishReason == .length { text = dropUnfinishedSentence(text) }
        text = cap(text, original: original)
        text = text.trimmingCharacters(in: .whitespacesAndNewlines)

        guard text.contains(where: { $0.isLetter || $0.isNumber }) else {
            return keep(raw.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty
                ? "rejected: the aligner produced nothing" : "rejected: nothing usable left after removing template debris")
        }
        let n = Self.normalized(text)
        if n == Self.normalized(original) { return keep("unchanged: the aligner repeated the answer (judged it already fine)") }
        if let critique = critiqueText(raw), n == Self.normalized(critique) {
            return keep("rejected: the aligner repeated its critique instead of correcting the answer")
        }
        if isCommentary(text) { return keep("rejected: the aligner commented on the answer instead of correcting it") }
        for f in context.forbiddenCopies where !f.isEmpty && n == Self.normalized(f) {
            return keep("rejected: the aligner copied a demonstration instead of correcting this answer")
        }
        if isDegenerate(text) { return keep("rejected: degenerate output (repetition loop)") }
        return Alignment(response: text)
    }

    // MARK: steps (internal for tests)

    /// Removes ChatML and other special-token text; cuts at a new turn.
    func stripTemplateDebris(_ s: String) -> String {
        var t = s
        // A new turn after some text: everything from there on belongs to another speaker.
        if let r = t.range(of: "<|im_start|>"), t[..<r.lowerBound].contains(where: { $0.isLetter }) {
            t = String(t[..<r.lowerBound])
        }
        // A turn header at the start.
        while let r = t.range(of: "<|im_start|>") {
            var end = r.upperBound
            if let nl = t[end...].firstIndex(of: "\n"), t.distance(from: end, to: nl) <= 12 { end = t.index(after: nl) }
            t.removeSubrange(r.lowerBound..<end)
        }
        for tok in ["<|im_end|>", "<|endoftext|>", "</s>", "<s>", "[DONE]", "<|end|>", "<|eot_id|>"] {
            t = t.replacingOccurrences(of: tok, with: "")
        }
        return t
    }

    /// The text after the last answer label (case-insensitive), if any.
    func afterAnswerLabel(_ s: String) -> (String, Bool) {
        var best: Range<String.Index>?
        for label in answerLabels {
            if let r = s.range(of: label, options: [.caseInsensitive, .backwards]), best == nil || r.lowerBound > best!.lowerBound {
                best = r
            }
        }
        guard let best else { return (s, false) }
        return (String(s[best.upperBound...]), true)
    }

    /// Cuts at the first line that opens another section (a new critique, question, …).
    func cutAtSection(_ s: String) -> String {
        var lines: [Substring] = []
        var hasContent = false
        for line in s.split(separator: "\n", omittingEmptySubsequences: false) {
            let l = line.trimmingCharacters(in: .whitespaces)
            if hasContent, sectionLabels.contains(where: { l.range(of: $0, options: [.caseInsensitive, .anchored]) != nil }) { break }
            if !l.isEmpty { hasContent = true }
            lines.append(line)
        }
        return lines.joined(separator: "\n")
    }

    /// Removes `(Violates: 1, 3.)` tags (the demonstrations' critique format) left in an answer.
    func stripViolationTags(_ s: String) -> String {
        var t = s
        while let r = t.range(of: "(Violates:", options: .caseInsensitive) {
            let end = t[r.upperBound...].firstIndex(of: ")").map { t.index(after: $0) } ?? t.endIndex
            t.removeSubrange(r.lowerBound..<end)
        }
        return t
    }

    /// The model's own critique: the text between `Critique:` and the answer label.
    func critiqueText(_ raw: String) -> String? {
        guard let c = raw.range(of: "Critique:", options: .caseInsensitive) else { return nil }
        var end = raw.endIndex
        for label in answerLabels {
            if let r = raw.range(of: label, options: .caseInsensitive, range: c.upperBound..<raw.endIndex), r.lowerBound < end { end = r.lowerBound }
        }
        let t = stripViolationTags(String(raw[c.upperBound..<end])).trimmingCharacters(in: .whitespacesAndNewlines)
        return t.isEmpty ? nil : t
    }

    /// Text about the answer rather than an answer ("The answer is not helpful.", "This response …").
    func isCommentary(_ s: String) -> Bool {
        let t = s.lowercased()
        let openers = ["the answer ", "this answer ", "the response ", "this response ", "the original answer", "the assistant's answer",
                       "the statement ", "the claim "]
        guard openers.contains(where: { t.hasPrefix($0) }) else { return false }
        // Short commentary only; a long text that happens to open so may still be an answer.
        return Self.sentences(s).count <= 2
    }

    func stripLeadingLabels(_ s: String) -> String {
        var t = s.trimmingCharacters(in: .whitespacesAndNewlines)
        var changed = true
        while changed {
            changed = false
            for label in ["assistant\n", "Assistant:", "Answer:", "Response:", "A:", "Corrected:"] {
                if t.range(of: label, options: [.caseInsensitive, .anchored]) != nil {
                    t = String(t.dropFirst(label.count)).trimmingCharacters(in: .whitespacesAndNewlines)
                    changed = true
                }
            }
        }
        return t
    }

    func stripWrappingQuotes(_ s: String) -> String {
        let t = s.trimmingCharacters(in: .whitespacesAndNewlines)
        for (o, c) in [("\"", "\""), ("“", "”")] where t.count >= 2 && t.hasPrefix(o) && t.hasSuffix(c) {
            let inner = t.dropFirst().dropLast()
            if !inner.contains(o) && !inner.contains(c) { return String(inner) }
        }
        return t
    }

    /// Keeps text up to the second occurrence of any sentence of three or more words.
    func cutRepeatedSentences(_ s: String) -> String {
        var seen = Set<String>()
        var end = s.startIndex
        for (range, sentence) in Self.sentences(s) {
            let key = Self.normalized(String(sentence)).lowercased()
            if key.split(separator: " ").count >= 3 {
                if !seen.insert(key).inserted { return String(s[..<end]) }
            }
            end = range.upperBound
        }
        return s
    }

    /// When generation hit its token limit: drops the trailing unfinished sentence, if at least one
    /// finished sentence remains.
    func dropUnfinishedSentence(_ s: String) -> String {
        let t = s.trimmingCharacters(in: .whitespacesAndNewlines)
        guard let last = t.last, !".!?)\"”".contains(last) else { return t }
        guard let cut = t.lastIndex(where: { ".!?".contains($0) }) else { return t }
        let kept = String(t[...cut])
        return kept.count >= t.count / 3 ? kept : t
    }

    func cap(_ s: String, original: String) -> String {
        let limit = max(minimumCap, Int(Double(original.count) * lengthFactor))
        guard s.count > limit else { return s }
        let head = s.prefix(limit)
        if let cut = head.lastIndex(where: { ".!?\n".contains($0) }), head.distance(from: head.startIndex, to: cut) > limit / 2 {
            return String(head[...cut])
        }
        return String(head)
    }

    /// A loop the sentence cut did not catch: few distinct word 3-grams, or a short pattern repeated.
    func isDegenerate(_ s: String) -> Bool {
        let words = s.lowercased().split(whereSeparator: { $0.isWhitespace || $0.isPunctuation }).map(String.init)
        if words.count >= 24 {
            let grams = (0..<(words.count - 2)).map { words[$0..<$0 + 3].joined(separator: " ") }
            if Double(Set(grams).count) / Double(grams.count) < 0.4 { return true }
        }
        // A run of one character (e.g. "!!!!!!!!!!" or "________").
        var run = 1
        var prev: Character?
        for c in s {
            if c == prev, !c.isWhitespace { run += 1; if run >= 20 { return true } } else { run = 1 }
            prev = c
        }
        return false
    }

    static func normalized(_ s: String) -> String {
        s.split(whereSeparator: { $0.isWhitespace }).joined(separator: " ")
    }

    /// Sentences with their ranges (split after . ! ? or a newline).
    static func sentences(_ s: String) -> [(Range<String.Index>, Substring)] {
        var out: [(Range<String.Index>, Substring)] = []
        var start = s.startIndex
        var i = s.startIndex
        while i < s.endIndex {
            let c = s[i]
            let next = s.index(after: i)
            if c == "\n" || (".!?".contains(c) && (next == s.endIndex || s[next].isWhitespace)) {
                out.append((start..<next, s[start..<next]))
                start = next
            }
            i = next
        }
        if start < s.endIndex { out.append((start..<s.endIndex, s[start..<s.endIndex])) }
        return out
    }
}
