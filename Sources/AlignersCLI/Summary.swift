import AlignersPipeline
import Foundation
import Synchronization

/// The readable before/after report `filter --summary` prints on stderr, one block per sample.
final class SummaryPrinter: Sendable {
    /// Each sample's block, by input line.
    private let rows = Mutex<[(seq: UInt64, text: String)]>([])

    func record(_ line: InputLine?, _ envelope: Envelope?) {
        guard let envelope else { return }
        let row = (envelope.seq, Self.block(envelope))
        rows.withLock { $0.append(row) }
    }

    /// The lines about one sample.
    private static func block(_ envelope: Envelope) -> String {
        var text = "─ \(envelope.id)"
        if envelope.hasError {
            text += "  ERROR \(envelope.error.stage): \(envelope.error.message)\n"
            return text
        }
        var criteria: [String] = []
        for record in envelope.scores where !criteria.contains(record.criterion) { criteria.append(record.criterion) }
        let scores = criteria.map { c -> String in
            let history = envelope.scores.filter { $0.criterion == c }
            let before = history.first!.score, after = history.last!.score
            return history.count > 1 && after != before ? String(format: "%@ %.2f→%.2f", c, before, after)
                : String(format: "%@ %.2f", c, before)
        }
        text += "  " + scores.joined(separator: "  ")
        let changed = envelope.steps.filter(\.changed).map(\.criterion)
        if changed.isEmpty {
            text += "  (untouched)\n"
        } else {
            // Say what happened, not that it worked: which aligners rewrote it, and how the squad's
            // own inspectors rate the result against the original.
            var better: [String] = [], worse: [String] = []
            for c in criteria {
                let history = envelope.scores.filter { $0.criterion == c }
                let d = history.last!.score - history.first!.score
                if d > 0.005 { better.append(c) } else if d < -0.005 { worse.append(c) }
            }
            let verdict = switch (better.isEmpty, worse.isEmpty) {
            case (false, true): "inspectors rate it better"
            case (true, false): "inspectors rate it worse (\(worse.joined(separator: ", ")))"
            case (false, false): "inspectors rate it better on \(better.joined(separator: ", ")), worse on \(worse.joined(separator: ", "))"
            case (true, true): "inspectors see no difference"
            }
            text += "\n  rewritten by the \(changed.joined(separator: ", ")) aligner\(changed.count > 1 ? "s" : ""); \(verdict)\n"
        }
        if envelope.generated { text += "  generated: \(Self.clip(envelope.originalResponse))\n" }
        if !changed.isEmpty {
            text += "  before: \(Self.clip(envelope.originalResponse))\n"
            text += "  after:  \(Self.clip(envelope.response))\n"
        }
        for step in envelope.steps where !step.changed && !step.note.isEmpty {
            text += "  \(step.criterion) aligner kept the answer: \(step.note)\n"
        }
        // Failing criteria whose aligner is off: say why nothing tried to fix them.
        for c in envelope.batch.notAligned {
            if let last = envelope.scores.last(where: { $0.criterion == c }), last.score < envelope.batch.threshold {
                text += "  \(c) fails, but its aligner is off (--acceptance-margins)\n"
            }
        }
        return text
    }

    func print(_ summary: FilterSummary) {
        var out = "\n"
        for row in rows.withLock({ $0 }).sorted(by: { $0.seq < $1.seq }) { out += row.text }
        out += "\n\(summary.lines) lines: \(summary.aligned) aligned, \(summary.untouched) untouched, "
            + "\(summary.failed) failed, \(summary.invalid) invalid input\n"
        StandardStreams.error(out)
    }

    static func clip(_ s: String, _ n: Int = 160) -> String {
        let flat = s.replacingOccurrences(of: "\n", with: " ⏎ ")
        return flat.count <= n ? flat : String(flat.prefix(n)) + "…"
    }
}
