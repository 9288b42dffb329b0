import Testing
@testable import AlignersEvaluation

@Suite struct PNGEncoderTests {
    @Test func checksumsMatchKnownValues() {
        #expect(PNGEncoder.crc32(Array("123456789".utf8)) == 0xCBF4_3926)
        #expect(PNGEncoder.adler32(Array("Wikipedia".utf8)) == 0x11E6_0398)
    }

    @Test(arguments: [0, 1, 2, 3, 10, 257, 258, 259, 5000])
    func deflateRoundTrips(runLength: Int) throws {
        var data = Array("header bytes 0123456789".utf8)
        data += [UInt8](repeating: 7, count: runLength)
        data += (0..<300).map { UInt8(truncatingIfNeeded: $0 &* 37) }
        data += [UInt8](repeating: 0, count: runLength / 2)
        let stream = PNGEncoder.zlib(data)
        #expect(stream[0] == 0x78 && (UInt16(stream[0]) << 8 | UInt16(stream[1])) % 31 == 0)
        let body = Array(stream[2..<(stream.count - 4)])
        let inflated = try FixedHuffmanInflater.inflate(body)
        #expect(inflated == data)
        let adler = stream.suffix(4).reduce(UInt32(0)) { $0 << 8 | UInt32($1) }
        #expect(adler == PNGEncoder.adler32(data))
    }

    @Test func pngHasSignatureChunksAndValidCRCs() throws {
        var image = RasterImage(width: 7, height: 5)
        image.fill(x: 1, y: 1, width: 3, height: 2, Chart.Color(10, 20, 30))
        let png = PNGEncoder.encode(image)
        #expect(Array(png.prefix(8)) == [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A])
        var offset = 8
        var types: [String] = []
        var idat: [UInt8] = []
        while offset < png.count {
            let length = Int(png[offset..<(offset + 4)].reduce(UInt32(0)) { $0 << 8 | UInt32($1) })
            let type = Array(png[(offset + 4)..<(offset + 8)])
            let payload = Array(png[(offset + 8)..<(offset + 8 + length)])
            let crc = png[(offset + 8 + length)..<(offset + 12 + length)].reduce(UInt32(0)) { $0 << 8 | UInt32($1) }
            #expect(crc == PNGEncoder.crc32(type + payload))
            types.append(String(decoding: type, as: UTF8.self))
            if types.last == "IDAT" { idat += payload }
            offset += 12 + length
        }
        #expect(types == ["IHDR", "IDAT", "IEND"])
        // Undo the filters and compare pixels.
        let raw = try FixedHuffmanInflater.inflate(Array(idat[2..<(idat.count - 4)]))
        let stride = 7 * 3
        #expect(raw.count == 5 * (stride + 1))
        var previous = [UInt8](repeating: 0, count: stride)
        for y in 0..<5 {
            let filter = raw[y * (stride + 1)]
            var row = Array(raw[(y * (stride + 1) + 1)..<((y + 1) * (stride + 1))])
            if filter == 2 { for i in 0..<stride { row[i] = row[i] &+ previous[i] } } else { #expect(filter == 0) }
            #expect(row == Array(image.pixels[(y * stride)..<((y + 1) * stride)]))
            previous = row
        }
    }
}

@Suite struct ChartTests {
    @Test func svgAndRasterShowTheSameShapes() {
        var c = Chart(width: 100, height: 60)
        c.rect(10, 10, 20, 30, Chart.Color(hex: 0x3c9d5d))
        c.line(0, 50, 100, 50)
        c.text("AUC 0.9 <5%>", 50, 30, size: 12, anchor: .middle)
        let svg = c.svg()
        #expect(svg.contains(##"<rect x="10.0" y="10.0" width="20.0" height="30.0" fill="#3c9d5d"/>"##))
        #expect(svg.contains("AUC 0.9 &lt;5%&gt;"))
        let img = c.raster(scale: 2)
        #expect(img.width == 200 && img.height == 120)
        #expect(img.pixel(30, 30) == Chart.Color(hex: 0x3c9d5d))   // inside the rectangle
        #expect(img.pixel(5, 5) == .white)
        #expect(img.pixel(50, 100) == Chart.Color.black)           // on the line
        // The text left ink between its baseline and cap height, centred on x = 100.
        let ink = (80..<120).flatMap { x in (40..<62).map { img.pixel(x, $0) } }.filter { $0 == Chart.Color.black }
        #expect(ink.count > 20)
    }

    @Test func histogramIsShareOfSamplesPerBin() {
        let h = ScoreDistributionFigure.histogram([0, 0.04, 0.5, 0.99, 1.0], bins: 10)
        #expect(h[0] == 0.4 && h[5] == 0.2 && h[9] == 0.4)
        #expect(abs(h.reduce(0, +) - 1) < 1e-12)
    }
}

/// Decodes the fixed-Huffman deflate blocks `PNGEncoder` writes (RFC 1951 §3.2.6), to check them.
enum FixedHuffmanInflater {
    struct Failure: Error {}
    static func inflate(_ bytes: [UInt8]) throws -> [UInt8] {
        var pos = 0
        func bit() throws -> Int {
            guard pos / 8 < bytes.count else { throw Failure() }
            defer { pos += 1 }
            return Int(bytes[pos / 8] >> UInt8(pos % 8) & 1)
        }
        func bits(_ n: Int) throws -> Int { var v = 0; for k in 0..<n { v |= try bit() << k }; return v }
        func code() throws -> Int {
            var c = 0
            for _ in 0..<7 { c = c << 1 | (try bit()) }
            if c <= 0b0010111 { return 256 + c }
            c = c << 1 | (try bit())
            if (0b0011_0000...0b1011_1111).contains(c) { return c - 0b0011_0000 }
            if (0b1100_0000...0b1100_0111).contains(c) { return 280 + c - 0b1100_0000 }
            c = c << 1 | (try bit())
            return 144 + c - 0b1_1001_0000
        }
        let lengthBase = [3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115, 131, 163, 195, 227, 258]
        let lengthExtra = [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0]
        var out: [UInt8] = []
        var final = 0
        repeat {
            final = try bits(1)
            guard try bits(2) == 1 else { throw Failure() }
            while true {
                let sym = try code()
                if sym < 256 { out.append(UInt8(sym)); continue }
                if sym == 256 { break }
                let i = sym - 257
                let length = lengthBase[i] + (try bits(lengthExtra[i]))
                var d = 0
                for _ in 0..<5 { d = d << 1 | (try bit()) }
                guard d == 0 else { throw Failure() }   // the encoder only uses distance 1
                guard !out.isEmpty else { throw Failure() }
                for _ in 0..<length { out.append(out[out.count - 1]) }
            }
        } while final == 0
        return out
    }
}
