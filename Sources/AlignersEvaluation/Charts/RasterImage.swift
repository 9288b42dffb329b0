import Foundation

/// An RGB pixel buffer with the few drawing operations charts need: filled rectangles, lines and
/// text in a built-in 5×7 bitmap font (capitals, digits, punctuation; lower case is drawn as capitals).
public struct RasterImage: Sendable {
    public let width: Int, height: Int
    public var pixels: [UInt8]   // RGB, row-major

    public init(width: Int, height: Int) {
        self.width = width
        self.height = height
        pixels = [UInt8](repeating: 255, count: width * height * 3)
    }

    public func pixel(_ x: Int, _ y: Int) -> Chart.Color {
        let i = (y * width + x) * 3
        return Chart.Color(pixels[i], pixels[i + 1], pixels[i + 2])
    }

    public mutating func fill(x: Int, y: Int, width w: Int, height h: Int, _ c: Chart.Color) {
        let x0 = max(0, x), y0 = max(0, y), x1 = min(width, x + w), y1 = min(height, y + h)
        guard x0 < x1, y0 < y1 else { return }
        for row in y0..<y1 {
            var i = (row * width + x0) * 3
            for _ in x0..<x1 { pixels[i] = c.r; pixels[i + 1] = c.g; pixels[i + 2] = c.b; i += 3 }
        }
    }

    /// A line `width` pixels thick; `dashed` > 0 draws dashes of that length with equal gaps.
    public mutating func line(_ x1: Double, _ y1: Double, _ x2: Double, _ y2: Double, _ c: Chart.Color, width: Double, dashed: Double) {
        let length = ((x2 - x1) * (x2 - x1) + (y2 - y1) * (y2 - y1)).squareRoot()
        let steps = max(1, Int(length.rounded(.up)))
        let half = width / 2
        for k in 0...steps {
            let t = Double(k) / Double(steps)
            if dashed > 0, Int(t * length / dashed) % 2 == 1 { continue }
            let x = x1 + (x2 - x1) * t, y = y1 + (y2 - y1) * t
            fill(x: Int((x - half).rounded()), y: Int((y - half).rounded()), width: max(1, Int(width.rounded())),
                 height: max(1, Int(width.rounded())), c)
        }
    }

    /// Text whose baseline is at `baseline`; `size` is the font size in pixels.
    public mutating func text(_ s: String, x: Double, baseline: Double, size: Double, anchor: Chart.Anchor,
                              _ c: Chart.Color, bold: Bool) {
        let k = max(1, Int((size * 0.72 / 7).rounded()))
        let glyphs = s.uppercased().map { BitmapFont.glyph($0) }
        let advance = 6 * k
        let total = glyphs.count * advance - k
        var left = Int(x.rounded())
        switch anchor {
        case .start: break
        case .middle: left -= total / 2
        case .end: left -= total
        }
        let top = Int(baseline.rounded()) - 7 * k
        for (n, g) in glyphs.enumerated() {
            for row in 0..<7 {
                for col in 0..<5 where g[row] & (1 << (4 - col)) != 0 {
                    let px = left + n * advance + col * k, py = top + row * k
                    fill(x: px, y: py, width: k + (bold ? 1 : 0), height: k, c)
                }
            }
        }
    }
}

/// 5×7 glyphs, one byte per row (bit 4 = leftmost column).
enum BitmapFont {
    static func glyph(_ ch: Character) -> [UInt8] { table[ch] ?? table["?"]! }

    private static func g(_ rows: String) -> [UInt8] {
        rows.split(separator: " ").map { row in row.reduce(UInt8(0)) { $0 << 1 | ($1 == "#" ? 1 : 0) } }
    }

    private static let table: [Character: [UInt8]] = [
        " ": g("..... ..... ..... ..... ..... ..... ....."),
        "A": g(".###. #...# #...# ##### #...# #...# #...#"),
        "B": g("####. #...# #...# ####. #...# #...# ####."),
        "C": g(".###. #...# #.... #.... #.... #...# .###."),
        "D": g("####. #...# #...# #...# #...# #...# ####."),
        "E": g("##### #.... #.... ####. #.... #.... #####"),
        "F": g("##### #.... #.... ####. #.... #.... #...."),
        "G": g(".###. #...# #.... #.### #...# #...# .####"),
        "H": g("#...# #...# #...# ##### #...# #...# #...#"),
        "I": g(".###. ..#.. ..#.. ..#.. ..#.. ..#.. .###."),
        "J": g("..### ...#. ...#. ...#. ...#. #..#. .##.."),
        "K": g("#...# #..#. #.#.. ##... #.#.. #..#. #...#"),
        "L": g("#.... #.... #.... #.... #.... #.... #####"),
        "M": g("#...# ##.## #.#.# #.#.# #...# #...# #...#"),
        "N": g("#...# #...# ##..# #.#.# #..## #...# #...#"),
        "O": g(".###. #...# #...# #...# #...# #...# .###."),
        "P": g("####. #...# #...# ####. #.... #.... #...."),
        "Q": g(".###. #...# #...# #...# #.#.# #..#. .##.#"),
        "R": g("####. #...# #...# ####. #.#.. #..#. #...#"),
        "S": g(".#### #.... #.... .###. ....# ....# ####."),
        "T": g("##### ..#.. ..#.. ..#.. ..#.. ..#.. ..#.."),
        "U": g("#...# #...# #...# #...# #...# #...# .###."),
        "V": g("#...# #...# #...# #...# #...# .#.#. ..#.."),
        "W": g("#...# #...# #...# #.#.# #.#.# #.#.# .#.#."),
        "X": g("#...# #...# .#.#. ..#.. .#.#. #...# #...#"),
        "Y": g("#...# #...# .#.#. ..#.. ..#.. ..#.. ..#.."),
        "Z": g("##### ....# ...#. ..#.. .#... #.... #####"),
        "0": g(".###. #...# #..## #.#.# ##..# #...# .###."),
        "1": g("..#.. .##.. ..#.. ..#.. ..#.. ..#.. .###."),
        "2": g(".###. #...# ....# ...#. ..#.. .#... #####"),
        "3": g("####. ....# ....# .###. ....# ....# ####."),
        "4": g("...#. ..##. .#.#. #..#. ##### ...#. ...#."),
        "5": g("##### #.... ####. ....# ....# #...# .###."),
        "6": g("..##. .#... #.... ####. #...# #...# .###."),
        "7": g("##### ....# ...#. ..#.. .#... .#... .#..."),
        "8": g(".###. #...# #...# .###. #...# #...# .###."),
        "9": g(".###. #...# #...# .#### ....# ...#. .##.."),
        ".": g("..... ..... ..... ..... ..... .##.. .##.."),
        ",": g("..... ..... ..... ..... .##.. ..#.. .#..."),
        ":": g("..... .##.. .##.. ..... .##.. .##.. ....."),
        ";": g("..... .##.. .##.. ..... .##.. ..#.. .#..."),
        "-": g("..... ..... ..... ##### ..... ..... ....."),
        "+": g("..... ..#.. ..#.. ##### ..#.. ..#.. ....."),
        "=": g("..... ..... ##### ..... ##### ..... ....."),
        "%": g("##..# ##..# ...#. ..#.. .#... #..## #..##"),
        "(": g("...#. ..#.. .#... .#... .#... ..#.. ...#."),
        ")": g(".#... ..#.. ...#. ...#. ...#. ..#.. .#..."),
        "/": g("....# ....# ...#. ..#.. .#... #.... #...."),
        "<": g("...#. ..#.. .#... #.... .#... ..#.. ...#."),
        ">": g(".#... ..#.. ...#. ....# ...#. ..#.. .#..."),
        "≥": g(".#... ..#.. ...#. ..#.. .#... ..... #####"),
        "→": g("..... ..#.. ...#. ##### ...#. ..#.. ....."),
        "'": g("..#.. ..#.. ..... ..... ..... ..... ....."),
        "\"": g(".#.#. .#.#. ..... ..... ..... ..... ....."),
        "_": g("..... ..... ..... ..... ..... ..... #####"),
        "?": g(".###. #...# ....# ...#. ..#.. ..... ..#.."),
        "!": g("..#.. ..#.. ..#.. ..#.. ..#.. ..... ..#.."),
        "#": g(".#.#. .#.#. ##### .#.#. ##### .#.#. .#.#."),
        "*": g("..... ..#.. #.#.# .###. #.#.# ..#.. ....."),
        "&": g(".##.. #..#. #.#.. .#... #.#.# #..#. .##.#"),
        "[": g(".###. .#... .#... .#... .#... .#... .###."),
        "]": g(".###. ...#. ...#. ...#. ...#. ...#. .###."),
        "×": g("..... #...# .#.#. ..#.. .#.#. #...# ....."),
        "·": g("..... ..... ..... ..#.. ..... ..... ....."),
    ]
}
