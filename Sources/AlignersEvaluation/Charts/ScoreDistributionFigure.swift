import Foundation

/// The paper's Figure 4 for our run: for each set, its own inspector's score distribution before
/// aligning, after the first aligner pass, and after the whole squad.
public enum ScoreDistributionFigure {
    public struct Row: Sendable {
        public var title: String
        public var before: [Double], afterFirst: [Double], after: [Double]
        public init(title: String, before: [Double], afterFirst: [Double], after: [Double]) {
            self.title = title; self.before = before; self.afterFirst = afterFirst; self.after = after
        }
    }

    public static func rows(_ records: [EvalRecord]) -> [Row] {
        var order: [String] = []
        var by: [String: Row] = [:]
        for r in records where r.error == nil {
            guard let s = r.scores(r.meta.criterion) else { continue }
            let key = r.meta.set
            if by[key] == nil {
                order.append(key)
                let title = key == r.meta.criterion ? "\(key) inspector on \(key) test" : "\(r.meta.criterion) inspector on \(key)"
                by[key] = Row(title: title, before: [], afterFirst: [], after: [])
            }
            by[key]!.before.append(s.before); by[key]!.afterFirst.append(s.afterFirst); by[key]!.after.append(s.after)
        }
        return order.map { by[$0]! }
    }

    static let columns = ["before", "after the first aligner", "after the squad"]
    static let colors = [Chart.Color(hex: 0x7f8fa6), Chart.Color(hex: 0xe1a13a), Chart.Color(hex: 0x3c9d5d)]

    public static func chart(_ rows: [Row], threshold: Double = 0.5, bins: Int = 20) -> Chart {
        let panelW = 250.0, panelH = 120.0, left = 56.0, gapX = 30.0, top = 56.0, rowGap = 88.0
        let width = left + 3 * panelW + 2 * gapX + 24
        let height = top + Double(rows.count) * (panelH + rowGap) + 10
        var c = Chart(width: width, height: height)
        c.text("Inspector scores before and after alignment (share of samples per bin; dashed line = threshold)",
               16, 24, size: 14, bold: true)
        for (ri, row) in rows.enumerated() {
            let y0 = top + Double(ri) * (panelH + rowGap) + 20
            c.text("\(row.title) (n = \(row.before.count))", 16, y0 - 12, size: 13, bold: true)
            let series = [row.before, row.afterFirst, row.after]
            let hists = series.map { histogram($0, bins: bins) }
            let ymax = max(0.05, (hists.flatMap { $0 }.max() ?? 0.05) * 1.1)
            for (ci, hist) in hists.enumerated() {
                let x0 = left + Double(ci) * (panelW + gapX)
                // grid, bars, axes
                for k in 1...4 {
                    let gy = y0 + panelH - panelH * Double(k) / 4
                    c.line(x0, gy, x0 + panelW, gy, .light)
                }
                let bw = panelW / Double(bins)
                for (b, v) in hist.enumerated() where v > 0 {
                    let h = panelH * v / ymax
                    c.rect(x0 + Double(b) * bw + 0.5, y0 + panelH - h, bw - 1, h, colors[ci])
                }
                c.line(x0, y0 + panelH, x0 + panelW, y0 + panelH)
                c.line(x0, y0, x0, y0 + panelH)
                let tx = x0 + panelW * threshold
                c.line(tx, y0 - 4, tx, y0 + panelH, .black, width: 1, dashed: true)
                for t in [0.0, 0.5, 1.0] {
                    let x = x0 + panelW * t
                    c.line(x, y0 + panelH, x, y0 + panelH + 4)
                    c.text(String(format: t == 0.5 ? "%.1f" : "%.0f", t), x, y0 + panelH + 16, size: 10, anchor: .middle, color: .grey)
                }
                if ci == 0 {
                    c.text(String(format: "%.0f%%", ymax * 100), x0 - 6, y0 + 8, size: 10, anchor: .end, color: .grey)
                    c.text("0", x0 - 6, y0 + panelH, size: 10, anchor: .end, color: .grey)
                }
                let values = series[ci]
                let mean = values.isEmpty ? 0 : values.reduce(0, +) / Double(values.count)
                let pass = values.isEmpty ? 0 : Double(values.filter { $0 >= threshold }.count) / Double(values.count)
                c.text(columns[ci], x0, y0 + panelH + 32, size: 11, bold: true)
                c.text(String(format: "mean %.2f, %.0f%% pass", mean, pass * 100), x0, y0 + panelH + 47,
                       size: 11, color: .grey)
            }
        }
        return c
    }

    /// Share of values per bin over [0, 1].
    public static func histogram(_ values: [Double], bins: Int) -> [Double] {
        var h = [Double](repeating: 0, count: bins)
        for v in values where v.isFinite { h[min(bins - 1, max(0, Int(v * Double(bins))))] += 1 }
        let n = Double(max(values.count, 1))
        return h.map { $0 / n }
    }
}
