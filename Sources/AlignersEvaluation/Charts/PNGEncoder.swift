import Foundation

/// Writes `RasterImage`s as PNG (8-bit RGB). The zlib stream is our own small deflate encoder:
/// fixed Huffman codes with run matches, which suits charts (long runs of one colour, and rows that
/// repeat the row above become zeros under PNG's "Up" filter).
public enum PNGEncoder {
    public static func encode(_ image: RasterImage) -> [UInt8] {
        var out: [UInt8] = [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A]
        var header: [UInt8] = []
        header += bigEndian(UInt32(image.width)) + bigEndian(UInt32(image.height))
        header += [8, 2, 0, 0, 0]   // 8 bits, RGB, deflate, adaptive filtering, no interlace
        chunk("IHDR", header, into: &out)
        let stride = image.width * 3
        var filtered: [UInt8] = []
        filtered.reserveCapacity((stride + 1) * image.height)
        for y in 0..<image.height {
            let row = y * stride
            if y == 0 {
                filtered.append(0)
                filtered += image.pixels[row..<(row + stride)]
            } else {
                filtered.append(2)   // Up: difference to the row above
                for i in 0..<stride { filtered.append(image.pixels[row + i] &- image.pixels[row - stride + i]) }
            }
        }
        chunk("IDAT", zlib(filtered), into: &out)
        chunk("IEND", [], into: &out)
        return out
    }

    static func chunk(_ type: String, _ data: [UInt8], into out: inout [UInt8]) {
        let typeBytes = Array(type.utf8)
        out += bigEndian(UInt32(data.count))
        out += typeBytes
        out += data
        out += bigEndian(crc32(typeBytes + data))
    }

    static func bigEndian(_ v: UInt32) -> [UInt8] { [UInt8(v >> 24), UInt8(v >> 16 & 0xff), UInt8(v >> 8 & 0xff), UInt8(v & 0xff)] }

    private static let crcTable: [UInt32] = (0..<256).map { n -> UInt32 in
        var c = UInt32(n)
        for _ in 0..<8 { c = c & 1 != 0 ? 0xEDB88320 ^ (c >> 1) : c >> 1 }
        return c
    }

    public static func crc32(_ bytes: [UInt8]) -> UInt32 {
        var c: UInt32 = 0xFFFFFFFF
        for b in bytes { c = crcTable[Int((c ^ UInt32(b)) & 0xff)] ^ (c >> 8) }
        return c ^ 0xFFFFFFFF
    }

    public static func adler32(_ bytes: [UInt8]) -> UInt32 {
        var a: UInt32 = 1, b: UInt32 = 0
        for chunk in stride(from: 0, to: bytes.count, by: 5552) {
            for i in chunk..<min(chunk + 5552, bytes.count) { a += UInt32(bytes[i]); b += a }
            a %= 65521; b %= 65521
        }
        return b << 16 | a
    }

    /// A zlib stream (RFC 1950) holding one fixed-Huffman deflate block (RFC 1951).
    public static func zlib(_ data: [UInt8]) -> [UInt8] {
        var w = BitWriter()
        w.bytes = [0x78, 0x01]
        w.write(1, bits: 1)   // BFINAL
        w.write(1, bits: 2)   // BTYPE = 01, fixed Huffman
        var i = 0
        while i < data.count {
            // A run of the previous byte: a match at distance 1.
            if i > 0 {
                var run = 0
                while run < 258, i + run < data.count, data[i + run] == data[i - 1] { run += 1 }
                if run >= 3 {
                    w.writeLength(run)
                    w.writeCode(0, bits: 5)   // distance code 0 = distance 1
                    i += run
                    continue
                }
            }
            w.writeLiteral(Int(data[i]))
            i += 1
        }
        w.writeLiteral(256)   // end of block
        w.flush()
        return w.bytes + bigEndian(adler32(data))
    }

    struct BitWriter {
        var bytes: [UInt8] = []
        var buffer: UInt32 = 0, count: UInt32 = 0

        /// Extra bits and headers: least significant bit first.
        mutating func write(_ value: Int, bits: Int) {
            buffer |= UInt32(value) << count
            count += UInt32(bits)
            while count >= 8 { bytes.append(UInt8(buffer & 0xff)); buffer >>= 8; count -= 8 }
        }
        /// Huffman codes: most significant bit first.
        mutating func writeCode(_ code: Int, bits: Int) {
            var reversed = 0
            for k in 0..<bits { reversed |= (code >> k & 1) << (bits - 1 - k) }
            write(reversed, bits: bits)
        }
        mutating func writeLiteral(_ v: Int) {
            switch v {
            case 0...143: writeCode(0x30 + v, bits: 8)
            case 144...255: writeCode(0x190 + v - 144, bits: 9)
            case 256...279: writeCode(v - 256, bits: 7)
            default: writeCode(0xC0 + v - 280, bits: 8)
            }
        }
        mutating func writeLength(_ length: Int) {
            // (first length, extra bits) of codes 257...284; 258 has its own code 285.
            if length == 258 { writeLiteral(285); return }
            var code = 257, base = 3, extra = 0
            let groups: [(Int, Int)] = [(3, 0), (11, 1), (19, 2), (35, 3), (67, 4), (131, 5)]
            for (g, (start, e)) in groups.enumerated().reversed() where length >= start {
                extra = e
                let perCode = 1 << e
                let k = (length - start) / perCode
                code = (g == 0 ? 257 : 265 + 4 * (g - 1)) + k
                base = start + k * perCode
                break
            }
            writeLiteral(code)
            if extra > 0 { write(length - base, bits: extra) }
        }
        mutating func flush() { if count > 0 { bytes.append(UInt8(buffer & 0xff)); buffer = 0; count = 0 } }
    }
}
