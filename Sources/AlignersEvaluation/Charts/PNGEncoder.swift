import CZlib

/// Writes `RasterImage`s as PNG (8-bit RGB). Rows are filtered with PNG's "Up" filter (rows that repeat
/// the row above become zeros, which suits charts) and compressed with zlib; chunk CRCs are zlib's too.
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
        chunk("IDAT", compress(filtered), into: &out)
        chunk("IEND", [], into: &out)
        return out
    }

    static func chunk(_ type: String, _ data: [UInt8], into out: inout [UInt8]) {
        let typeBytes = Array(type.utf8)
        out += bigEndian(UInt32(data.count))
        out += typeBytes
        out += data
        var crc = crc32(0, nil, 0)
        crc = typeBytes.withUnsafeBufferPointer { crc32(crc, $0.baseAddress, uInt($0.count)) }
        crc = data.withUnsafeBufferPointer { crc32(crc, $0.baseAddress, uInt($0.count)) }
        out += bigEndian(UInt32(truncatingIfNeeded: crc))
    }

    static func bigEndian(_ v: UInt32) -> [UInt8] { [UInt8(v >> 24), UInt8(v >> 16 & 0xff), UInt8(v >> 8 & 0xff), UInt8(v & 0xff)] }

    /// A zlib stream (RFC 1950) of `data`, as PNG's IDAT holds it.
    static func compress(_ data: [UInt8]) -> [UInt8] {
        var length = compressBound(uLong(data.count))
        var stream = [UInt8](repeating: 0, count: Int(length))
        let status = stream.withUnsafeMutableBufferPointer { dest in
            data.withUnsafeBufferPointer { src in
                compress2(dest.baseAddress, &length, src.baseAddress, uLong(src.count), Z_BEST_COMPRESSION)
            }
        }
        // With a buffer of compressBound bytes, compress2 can only fail by running out of memory.
        precondition(status == Z_OK, "zlib compress2 failed (\(status))")
        stream.removeSubrange(Int(length)...)
        return stream
    }
}
