import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Element types a safetensors file may declare.
public enum SafetensorsDType: String, Sendable, CaseIterable {
    case f64 = "F64", f32 = "F32", f16 = "F16", bf16 = "BF16"
    case i64 = "I64", i32 = "I32", i16 = "I16", i8 = "I8", u8 = "U8", bool = "BOOL"
    case u16 = "U16", u32 = "U32", u64 = "U64"
    case f8e4m3 = "F8_E4M3", f8e5m2 = "F8_E5M2"

    public var byteSize: Int {
        switch self {
        case .f64, .i64, .u64: 8
        case .f32, .i32, .u32: 4
        case .f16, .bf16, .i16, .u16: 2
        case .i8, .u8, .bool, .f8e4m3, .f8e5m2: 1
        }
    }
}

/// A problem with a safetensors file; the description always names the file.
public struct SafetensorsError: Error, CustomStringConvertible, Equatable {
    public enum Problem: Equatable, Sendable {
        case cannotOpen(String)
        case truncated(String)
        case badHeader(String)
        case missingTensor(String)
        case wrongDType(tensor: String, expected: String, found: String)
        case wrongShape(tensor: String, expected: [Int], found: [Int])
    }
    public let file: String
    public let problem: Problem

    public var description: String {
        let what: String
        switch problem {
        case .cannotOpen(let why): what = "cannot open: \(why)"
        case .truncated(let why): what = "truncated file: \(why)"
        case .badHeader(let why): what = "not a valid safetensors file: \(why)"
        case .missingTensor(let name): what = "tensor '\(name)' is missing"
        case let .wrongDType(name, expected, found): what = "tensor '\(name)' has dtype \(found), expected \(expected)"
        case let .wrongShape(name, expected, found): what = "tensor '\(name)' has shape \(found), expected \(expected)"
        }
        return "\(file): \(what)"
    }
}

/// Where one tensor lives in the file.
public struct SafetensorsTensorInfo: Sendable, Equatable {
    public let name: String
    public let dtype: SafetensorsDType
    public let shape: [Int]
    /// Byte range relative to the start of the data section.
    public let begin: Int
    public let end: Int
    public var elementCount: Int { shape.reduce(1, *) }
}

/// A memory-mapped safetensors file (https://github.com/huggingface/safetensors format):
/// 8-byte little-endian header length N, N bytes of JSON, then the raw little-endian tensor data.
///
/// The whole header is validated on open (lengths, dtypes, shapes against byte ranges, ranges
/// inside the file and non-overlapping), so a truncated or foreign file fails early with an error
/// that names the file and the problem.
public final class SafetensorsFile: @unchecked Sendable {
    public let path: String
    public let tensors: [String: SafetensorsTensorInfo]
    public let metadata: [String: String]
    private let base: UnsafeRawPointer
    private let mappedSize: Int
    private let dataStart: Int

    /// The largest JSON header accepted (the reference implementation uses 100 MB).
    public static let maxHeaderBytes = 100_000_000

    public init(path: String) throws {
        self.path = path
        func fail(_ p: SafetensorsError.Problem) -> SafetensorsError { SafetensorsError(file: path, problem: p) }

        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { throw fail(.cannotOpen(String(cString: strerror(errno)))) }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw fail(.cannotOpen(String(cString: strerror(errno)))) }
        let size = Int(st.st_size)
        guard size >= 8 else { throw fail(.truncated("\(size) bytes, shorter than the 8-byte header length")) }
        guard let m = mmap(nil, size, PROT_READ, MAP_PRIVATE, fd, 0), m != MAP_FAILED else {
            throw fail(.cannotOpen("mmap failed: \(String(cString: strerror(errno)))"))
        }
        let base = UnsafeRawPointer(m)
        var ok = false
        defer { if !ok { munmap(m, size) } }

        let n = Int(UInt64(littleEndian: base.loadUnaligned(as: UInt64.self)))
        guard n > 0, n <= Self.maxHeaderBytes else {
            throw fail(.badHeader("header length \(n) is not plausible (foreign file?)"))
        }
        guard 8 + n <= size else {
            throw fail(.truncated("header says \(n) bytes of JSON but the file has \(size - 8) after the length"))
        }
        let headerBytes = Data(bytes: base + 8, count: n)
        guard headerBytes.first == UInt8(ascii: "{") else {
            throw fail(.badHeader("header does not start with '{' (foreign file?)"))
        }
        let json: Any
        do { json = try JSONSerialization.jsonObject(with: headerBytes) } catch {
            throw fail(.badHeader("header JSON does not parse: \(error.localizedDescription)"))
        }
        guard let dict = json as? [String: Any] else { throw fail(.badHeader("header is not a JSON object")) }

        let dataSize = size - 8 - n
        var tensors: [String: SafetensorsTensorInfo] = [:]
        var metadata: [String: String] = [:]
        for (name, value) in dict {
            if name == "__metadata__" {
                guard let md = value as? [String: Any] else { throw fail(.badHeader("__metadata__ is not an object")) }
                for (k, v) in md {
                    guard let s = v as? String else { throw fail(.badHeader("__metadata__ value for '\(k)' is not a string")) }
                    metadata[k] = s
                }
                continue
            }
            guard let entry = value as? [String: Any] else { throw fail(.badHeader("entry '\(name)' is not an object")) }
            guard let dtypeName = entry["dtype"] as? String else { throw fail(.badHeader("tensor '\(name)' has no dtype")) }
            guard let dtype = SafetensorsDType(rawValue: dtypeName) else {
                throw fail(.badHeader("tensor '\(name)' has unknown dtype \(dtypeName)"))
            }
            guard let shapeAny = entry["shape"] as? [Any] else { throw fail(.badHeader("tensor '\(name)' has no shape")) }
            var shape: [Int] = []
            for d in shapeAny {
                guard let v = (d as? NSNumber)?.intValue, v >= 0 else {
                    throw fail(.badHeader("tensor '\(name)' has an invalid dimension \(d)"))
                }
                shape.append(v)
            }
            guard let offs = entry["data_offsets"] as? [Any], offs.count == 2,
                  let b = (offs[0] as? NSNumber)?.intValue, let e = (offs[1] as? NSNumber)?.intValue, b >= 0, e >= b
            else { throw fail(.badHeader("tensor '\(name)' has invalid data_offsets")) }
            let (count, overflow) = shape.reduce((1, false)) { acc, d in
                let r = acc.0.multipliedReportingOverflow(by: d); return (r.partialValue, acc.1 || r.overflow)
            }
            guard !overflow, count.multipliedReportingOverflow(by: dtype.byteSize).overflow == false,
                  e - b == count * dtype.byteSize
            else {
                throw fail(.badHeader("tensor '\(name)': \(e - b) bytes do not hold shape \(shape) of \(dtypeName)"))
            }
            guard e <= dataSize else {
                throw fail(.truncated("tensor '\(name)' ends at byte \(e) of the data section but it has only \(dataSize) bytes"))
            }
            tensors[name] = SafetensorsTensorInfo(name: name, dtype: dtype, shape: shape, begin: b, end: e)
        }
        // Ranges must not overlap.
        let sorted = tensors.values.sorted { $0.begin < $1.begin }
        for (a, b) in zip(sorted, sorted.dropFirst()) where b.begin < a.end && b.end > b.begin && a.end > a.begin {
            throw fail(.badHeader("tensors '\(a.name)' and '\(b.name)' overlap"))
        }
        self.tensors = tensors
        self.metadata = metadata
        self.base = base
        self.mappedSize = size
        self.dataStart = 8 + n
        ok = true
    }

    deinit { munmap(UnsafeMutableRawPointer(mutating: base), mappedSize) }

    public var names: [String] { tensors.keys.sorted() }

    public func info(_ name: String) throws -> SafetensorsTensorInfo {
        guard let t = tensors[name] else { throw SafetensorsError(file: path, problem: .missingTensor(name)) }
        return t
    }

    /// Raw bytes of a tensor, valid as long as this object lives.
    public func rawBytes(_ name: String) throws -> UnsafeRawBufferPointer {
        let t = try info(name)
        return UnsafeRawBufferPointer(start: base + dataStart + t.begin, count: t.end - t.begin)
    }

    /// Checks dtype and shape (when given) of a tensor.
    @discardableResult
    public func check(_ name: String, dtype: SafetensorsDType, shape: [Int]? = nil) throws -> SafetensorsTensorInfo {
        let t = try info(name)
        guard t.dtype == dtype else {
            throw SafetensorsError(file: path, problem: .wrongDType(tensor: name, expected: dtype.rawValue, found: t.dtype.rawValue))
        }
        if let shape, shape != t.shape {
            throw SafetensorsError(file: path, problem: .wrongShape(tensor: name, expected: shape, found: t.shape))
        }
        return t
    }

    /// A copy of an F32 tensor (F16/BF16 are widened), after checking its shape when given.
    public func floats(_ name: String, shape: [Int]? = nil) throws -> [Float] {
        let t = try info(name)
        if let shape, shape != t.shape {
            throw SafetensorsError(file: path, problem: .wrongShape(tensor: name, expected: shape, found: t.shape))
        }
        let raw = try rawBytes(name)
        let n = t.elementCount
        switch t.dtype {
        case .f32:
            return [Float](unsafeUninitializedCapacity: n) { buf, count in
                // Copy bytewise: the data section need not be 4-byte aligned.
                if n > 0 { UnsafeMutableRawPointer(buf.baseAddress!).copyMemory(from: raw.baseAddress!, byteCount: n * 4) }
                count = n
            }
        case .f16:
            return (0..<n).map { Float(Float16(bitPattern: raw.loadUnaligned(fromByteOffset: $0 * 2, as: UInt16.self))) }
        case .bf16:
            return (0..<n).map { Float(bitPattern: UInt32(raw.loadUnaligned(fromByteOffset: $0 * 2, as: UInt16.self)) << 16) }
        default:
            throw SafetensorsError(file: path, problem: .wrongDType(tensor: name, expected: "F32", found: t.dtype.rawValue))
        }
    }
}

/// Writes F32 or F16 tensors (and string metadata) as a safetensors file.
public enum SafetensorsWriter {
    public struct Tensor {
        public var name: String
        public var shape: [Int]
        public var values: [Float]
        /// Stored as F32, or as F16 (rounded to nearest).
        public var half: Bool
        public init(name: String, shape: [Int], values: [Float], half: Bool = false) {
            precondition(shape.reduce(1, *) == values.count, "shape \(shape) does not match \(values.count) values")
            self.name = name; self.shape = shape; self.values = values; self.half = half
        }
        var byteCount: Int { values.count * (half ? 2 : 4) }
    }

    public static func data(_ tensors: [Tensor], metadata: [String: String] = [:]) throws -> Data {
        var header: [String: Any] = [:]
        if !metadata.isEmpty { header["__metadata__"] = metadata }
        var offset = 0
        let sorted = tensors.sorted { $0.name < $1.name }
        for t in sorted {
            let bytes = t.byteCount
            header[t.name] = ["dtype": t.half ? "F16" : "F32", "shape": t.shape, "data_offsets": [offset, offset + bytes]] as [String: Any]
            offset += bytes
        }
        var json = try JSONSerialization.data(withJSONObject: header, options: [.sortedKeys])
        while (8 + json.count) % 8 != 0 { json.append(UInt8(ascii: " ")) }
        var out = Data()
        var n = UInt64(json.count).littleEndian
        withUnsafeBytes(of: &n) { out.append(contentsOf: $0) }
        out.append(json)
        for t in sorted {
            if t.half {
                t.values.map { Float16($0).bitPattern.littleEndian }.withUnsafeBytes { out.append(contentsOf: $0) }
            } else {
                t.values.withUnsafeBytes { out.append(contentsOf: $0) }
            }
        }
        return out
    }

    public static func write(_ tensors: [Tensor], metadata: [String: String] = [:], to url: URL) throws {
        try data(tensors, metadata: metadata).write(to: url, options: .atomic)
    }
}
