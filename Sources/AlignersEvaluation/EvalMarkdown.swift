import Foundation

/// The evaluation as a short Markdown report for people: what was judged, how, the tables, the figure.
public enum EvalMarkdown {
    public static func render(_ r: EvalResults, title: String, command: String?, figure: String?) -> String {
        func pct(_ x: Double) -> String { x.isNaN ? "–" : String(format: "%.0f%%", x * 100) }
        func f2(_ x: Double) -> String { x.isNaN ? "–" : String(format: "%.2f", x) }
        func judged(_ j: EvalResults.Judged) -> String {
            j.n == 0 ? "–" : "\(pct(j.winRate)) (\(j.wins)–\(j.losses) of \(j.n))"
        }
        var md = "# \(title)\n\n"
        if let command { md += "Produced by:\n\n    \(command)\n\n" }
        let kinds = r.overall.inputs.keys.sorted().map { "\(r.overall.inputs[$0]!) \($0)" }.joined(separator: ", ")
        md += "\(r.overall.samples) samples (\(kinds)); \(r.overall.errors) failed"
        md += r.unreadableLines > 0 ? "; \(r.unreadableLines) other output lines (error records for bad input lines, or lines without an `eval` field).\n\n" : ".\n\n"
        md += "Input kinds: **rejected** = the data set's misaligned answer (the squad should fix it), "
            + "**chosen** = its aligned answer (changing it is the *alignment tax*), **generated** = the embedded "
            + "generator's answer to an instruction.\n\n"

        md += "## The squad against the original answers\n\n"
        md += "| set | samples | changed by an aligner | judge: aligned beats original (changed only) | net win rate (unchanged = tie) | own inspector, mean before → after | passing before → after | alignment tax: good answers changed | judge on those changes |\n"
        md += "|---|---|---|---|---|---|---|---|---|\n"
        for s in r.sets + [r.overall] {
            let ok = s.samples - s.errors
            let touched = s.touched.values.reduce(0, +)
            md += "| \(s.set == "overall" ? "**overall**" : s.set) | \(s.samples) | \(touched) (\(pct(ok > 0 ? Double(touched) / Double(ok) : .nan))) "
            md += "| \(judged(s.judged)) | \(pct(s.netWinRate)) "
            md += "| \(f2(s.ownScores.before)) → \(f2(s.ownScores.after)) | \(pct(s.ownScores.passingBefore)) → \(pct(s.ownScores.passingAfter)) "
            md += "| \(s.taxTotal > 0 ? "\(s.taxChanged) of \(s.taxTotal) (\(pct(Double(s.taxChanged) / Double(s.taxTotal))))" : "–") "
            md += "| \(judged(s.taxJudged)) |\n"
        }
        md += "\nWin rates count a change as a win when the judge gives the aligned answer P > 0.5 over the original.\n\n"

        if let figure {
            md += "## Inspector scores (as the paper's Figure 4)\n\n![inspector score distributions](\(figure).png)\n\n"
            md += "Also as [SVG](\(figure).svg). Each row is one set and its own inspector.\n\n"
        }

        md += "## Inspector scores per set: mean before → after the first aligner → after the squad\n\n"
        let inspectors = Array(Set(r.inspectorScores.map(\.inspector))).sorted()
        md += "| set | " + inspectors.joined(separator: " | ") + " |\n|---|" + inspectors.map { _ in "---|" }.joined() + "\n"
        for set in r.sets.map(\.set) {
            md += "| \(set) |"
            for i in inspectors {
                if let row = r.inspectorScores.first(where: { $0.set == set && $0.inspector == i }) {
                    md += " \(f2(row.scores.before)) → \(f2(row.scores.afterFirst)) → \(f2(row.scores.after)) |"
                } else { md += " – |" }
            }
            md += "\n"
        }

        md += "\n## Aligners\n\n| aligner | runs | changed the answer | kept the answer (why) |\n|---|---|---|---|\n"
        for a in r.aligners {
            let kept = a.kept.sorted { $0.value > $1.value }.map { "\($0.value) \($0.key)" }.joined(separator: "; ")
            md += "| \(a.criterion) | \(a.runs) | \(a.changed) | \(kept.isEmpty ? "–" : kept) |\n"
        }

        if !r.margins.isEmpty {
            md += "\n## What an acceptance margin keeps\n\nRewrites that were their sample's only change, judged against the original, "
                + "kept when the rewrite raised its own criterion's score by at least the margin (`--acceptance-margin`; from a run "
                + "with `--acceptance always` this shows what each margin would keep).\n\n"
                + "| aligner | own score rises by | rewrites kept | judge: better–worse | win rate |\n|---|---|---|---|---|\n"
            for m in r.margins {
                let rise = m.margin.map { $0 == 0 ? "≥ 0" : String(format: "≥ %.2f", $0) } ?? "any (also falls)"
                md += "| \(m.criterion) | \(rise) | \(m.judged.n) | \(m.judged.wins)–\(m.judged.losses) | \(m.judged.n > 0 ? pct(m.judged.winRate) : "–") |\n"
            }
        }

        if !r.gates.isEmpty {
            md += "\n## What a gate threshold keeps\n\nThe same rewrites by the score that sent the sample to the aligner: "
                + "a criterion gated at a lower threshold would have run its aligner only on the samples scored below it.\n\n"
                + "| aligner | gate score below | rewrites | judge: better–worse | win rate |\n|---|---|---|---|---|\n"
            for g in r.gates {
                md += "| \(g.criterion) | \(String(format: "%.2f", g.threshold)) | \(g.judged.n) | \(g.judged.wins)–\(g.judged.losses) | \(pct(g.judged.winRate)) |\n"
            }
        }

        if !r.references.isEmpty {
            md += "\n## Against the references\n\n| check | n | before | after | method |\n|---|---|---|---|---|\n"
            for ref in r.references {
                md += "| \(ref.name) | \(ref.n) | \(pct(ref.before)) | \(pct(ref.after)) | \(ref.method) |\n"
            }
        }

        md += "\n## The judge\n\n"
        for j in r.judges {
            let bySource = j.heldOutBySource.sorted { $0.key < $1.key }.map { "\($0.key) \(pct($0.value))" }.joined(separator: ", ")
            md += "- **\(j.criterion)**: \(j.description). Trained on \(j.trainedOn). Accuracy on \(j.heldOutPairs) held-out "
                + "test pairs (which answer is the aligned one): **\(pct(j.heldOutAccuracy))**\(bySource.isEmpty ? "" : " (\(bySource))").\n"
        }
        md += "\nThe judge is not an inspector: it reads the conversation and the answer as separate sentence embeddings "
            + "(the inspectors read them as one `x [SEP] y` pair), compares two answers directly, and never saw the "
            + "inspectors' training rows. It is still a small model of the same encoder: read its win rates as a "
            + "second opinion with the accuracy above, not as ground truth.\n"
        return md
    }
}
