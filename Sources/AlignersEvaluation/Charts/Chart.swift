import Foundation

/// A drawing as a list of shapes, rendered to SVG text or to pixels (PNG) from the same list, so
/// the two files always show the same figure.
public struct Chart: Sendable {
    public struct Color: Sendable, Equatable {
        public var r: UInt8, g: UInt8, b: UInt8
        public init(_ r: UInt8, _ g: UInt8, _ b: UInt8) { self.r = r; self.g = g; self.b = b }
        public init(hex: UInt32) { self.init(UInt8(hex >> 16 & 0xff), UInt8(hex >> 8 & 0xff), UInt8(hex & 0xff)) }
        var svg: String { String(format: "#%02x%02x%02x", r, g, b) }
        public static let black = Color(hex: 0x222222), grey = Color(hex: 0x888888), light = Color(hex: 0xdddddd)
        public static let white = Color(hex: 0xffffff)
    }
    public enum Anchor: String, Sendable { case start, middle, end }
    public enum Shape: Sendable {
        case rect(x: Double, y: Double, width: Double, height: Double, fill: Color)
        case line(x1: Double, y1: Double, x2: Double, y2: Double, stroke: Color, width: Double, dashed: Bool)
        case text(x: Double, y: Double, String, size: Double, anchor: Anchor, color: Color, bold: Bool)
    }

    public var width: Double
    public var height: Double
    public var shapes: [Shape] = []

    public init(width: Double, height: Double) {
        self.width = width
        self.height = height
        shapes.append(.rect(x: 0, y: 0, width: width, height: height, fill: .white))
    }

    public mutating func rect(_ x: Double, _ y: Double, _ w: Double, _ h: Double, _ fill: Color) {
        shapes.append(.rect(x: x, y: y, width: w, height: h, fill: fill))
    }
    public mutating func line(_ x1: Double, _ y1: Double, _ x2: Double, _ y2: Double, _ stroke: Color = .black,
                              width: Double = 1, dashed: Bool = false) {
        shapes.append(.line(x1: x1, y1: y1, x2: x2, y2: y2, stroke: stroke, width: width, dashed: dashed))
    }
    public mutating func text(_ s: String, _ x: Double, _ y: Double, size: Double = 12, anchor: Anchor = .start,
                              color: Color = .black, bold: Bool = false) {
        shapes.append(.text(x: x, y: y, s, size: size, anchor: anchor, color: color, bold: bold))
    }

    public func svg() -> String {
        func n(_ v: Double) -> String { String(format: "%.1f", v) }
        var out = #"<svg xmlns="http://www.w3.org/2000/svg" width="\#(Int(width))" height="\#(Int(height))" viewBox="0 0 \#(Int(width)) \#(Int(height))" font-family="DejaVu Sans, Helvetica, Arial, sans-serif">"# + "\n"
        for shape in shapes {
            switch shape {
            case let .rect(x, y, w, h, fill):
                out += #"<rect x="\#(n(x))" y="\#(n(y))" width="\#(n(w))" height="\#(n(h))" fill="\#(fill.svg)"/>"# + "\n"
            case let .line(x1, y1, x2, y2, stroke, w, dashed):
                out += #"<line x1="\#(n(x1))" y1="\#(n(y1))" x2="\#(n(x2))" y2="\#(n(y2))" stroke="\#(stroke.svg)" stroke-width="\#(n(w))"\#(dashed ? #" stroke-dasharray="4 3""# : "")/>"# + "\n"
            case let .text(x, y, s, size, anchor, color, bold):
                out += #"<text x="\#(n(x))" y="\#(n(y))" font-size="\#(n(size))" text-anchor="\#(anchor.rawValue)" fill="\#(color.svg)"\#(bold ? #" font-weight="bold""# : "")>\#(Self.escape(s))</text>"# + "\n"
            }
        }
        return out + "</svg>\n"
    }

    static func escape(_ s: String) -> String {
        s.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;")
            .replacingOccurrences(of: ">", with: "&gt;")
    }

    /// The chart in pixels, `scale` pixels per unit.
    public func raster(scale: Int = 1) -> RasterImage {
        var img = RasterImage(width: Int(width) * scale, height: Int(height) * scale)
        let s = Double(scale)
        for shape in shapes {
            switch shape {
            case let .rect(x, y, w, h, fill):
                img.fill(x: Int((x * s).rounded()), y: Int((y * s).rounded()), width: Int((w * s).rounded()),
                         height: Int((h * s).rounded()), fill)
            case let .line(x1, y1, x2, y2, stroke, w, dashed):
                img.line(x1 * s, y1 * s, x2 * s, y2 * s, stroke, width: max(1, w * s), dashed: dashed ? 4 * s : 0)
            case let .text(x, y, str, size, anchor, color, bold):
                img.text(str, x: x * s, baseline: y * s, size: size * s, anchor: anchor, color, bold: bold)
            }
        }
        return img
    }
}
