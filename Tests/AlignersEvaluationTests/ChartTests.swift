import Testing
import CZlib
@testable import AlignersEvaluation

/// The PNG is checked by decoding it: chunk CRCs recomputed with zlib's `crc32`, the IDAT inflated
/// with zlib's `uncompress`, the filters undone and the pixels compared.
@Suite struct PNGEncoderTests {
    @Test(arguments: [(7, 5), (1, 1), (300, 200)])
    func pngDecodesToTheImage(width: Int, height: Int) throws {
        var image = RasterImage(width: width, height: height)
        image.fill(x: 1 % width, y: 1 % height, width: min(3, width), height: min(2, height), Chart.Color(10, 20, 30))
        if width > 100 {
            // Long runs, repeated rows and noise: every path of the compressor.
            image.fill(x: 20, y: 30, width: 200, height: 100, Chart.Color(hex: 0x3c9d5d))
            for i in 0..<image.pixels.count where i % 7 == 3 { image.pixels[i] = UInt8(truncatingIfNeeded: i &* 37) }
        }
        let png = PNGEncoder.encode(image)
        #expect(Array(png.prefix(8)) == [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A])
        var offset = 8
        var types: [String] = []
        var ihdr: [UInt8] = []
        var idat: [UInt8] = []
        while offset < png.count {
            let length = Int(bigEndian(png[offset..<(offset + 4)]))
            let type = Array(png[(offset + 4)..<(offset + 8)])
            let payload = Array(png[(offset + 8)..<(offset + 8 + length)])
            let crc = bigEndian(png[(offset + 8 + length)..<(offset + 12 + length)])
            let typeAndPayload = type + payload
            let expected = typeAndPayload.withUnsafeBufferPointer { crc32(0, $0.baseAddress, uInt($0.count)) }
            #expect(UInt(crc) == UInt(expected))
            types.append(String(decoding: type, as: UTF8.self))
            if types.last == "IHDR" { ihdr = payload }
            if types.last == "IDAT" { idat += payload }
            offset += 12 + length
        }
        #expect(offset == png.count)
        #expect(types == ["IHDR", "IDAT", "IEND"])
        #expect(Int(bigEndian(ihdr[0..<4])) == width && Int(bigEndian(ihdr[4..<8])) == height)
        #expect(Array(ihdr[8...]) == [8, 2, 0, 0, 0])
        // Inflate, undo the filters and compare pixels.
        let stride = width * 3
        var raw = [UInt8](repeating: 0, count: height * (stride + 1))
        var rawLength = uLong(raw.count)
        let status = raw.withUnsafeMutableBufferPointer { dest in
            idat.withUnsafeBufferPointer { uncompress(dest.baseAddress, &rawLength, $0.baseAddress, uLong($0.count)) }
        }
        #expect(status == Z_OK)
        #expect(Int(rawLength) == height * (stride + 1))
        var previous = [UInt8](repeating: 0, count: stride)
        for y in 0..<height {
            let filter = raw[y * (stride + 1)]
            var row = Array(raw[(y * (stride + 1) + 1)..<((y + 1) * (stride + 1))])
            if filter == 2 { for i in 0..<stride { row[i] = row[i] &+ previous[i] } } else { #expect(filter == 0) }
            #expect(row == Array(image.pixels[(y * stride)..<((y + 1) * stride)]))
            previous = row
        }
    }

    private func bigEndian(_ bytes: ArraySlice<UInt8>) -> UInt32 { bytes.reduce(UInt32(0)) { $0 << 8 | UInt32($1) } }
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
