import Foundation
import AlignersKernels

/// A GGUF (version 2 or 3) file, memory-mapped read-only: its metadata and tensor table are parsed
/// up front; tensor data stays in the mapping and is read in place by the kernels.
///
/// Layout (little-endian): magic `GGUF`, version u32, tensor count u64, metadata count u64, the
/// metadata key/value pairs, the tensor infos (name, dims, type, offset), padding to
/// `general.alignment` (default 32), then the tensor data.
public final class GGUFFile: @unchecked Sendable {
    public let url: URL
    public let version: UInt32
    public let metadata: [String: GGUFValue]
    /// Metadata keys in file order.
    public let metadataKeys: [String]
    public let tensors: [GGUFTensorInfo]
    public let alignment: Int
    /// Offset of the tensor data section from the start of the file.
    public let dataOffset: Int
    public let fileSize: Int

    private let base: UnsafeRawPointer
    private let tensorIndex: [String: Int]

    public convenience init(path: String) throws {
        try self.init(url: URL(fileURLWithPath: path))
    }

    public init(url: URL) throws {
        self.url = url
        let fd = open(url.path, O_RDONLY)
        guard fd >= 0 else { throw GGUFError.cannotOpen(path: url.path, errno: errno) }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw GGUFError.cannotOpen(path: url.path, errno: errno) }
        let size = Int(st.st_size)
        guard size >= 24 else { throw GGUFError.truncated(path: url.path, what: "header", offset: 0, need: 24, have: size) }
        guard let p = mmap(nil, size, PROT_READ, MAP_PRIVATE, fd, 0), p != MAP_FAILED else {
            throw GGUFError.cannotOpen(path: url.path, errno: errno)
        }
        base = UnsafeRawPointer(p)
        fileSize = size
        do {
            var r = Reader(base: base, size: size, path: url.path)
            let magic = try r.u32("magic")
            guard magic == 0x4655_4747 else { throw GGUFError.notGGUF(path: url.path, magic: magic) }
            version = try r.u32("version")
            guard version == 2 || version == 3 else { throw GGUFError.unsupportedVersion(path: url.path, version: version) }
            let nTensors = try r.u64("tensor count")
            let nKV = try r.u64("metadata count")
            guard nTensors < 1_000_000, nKV < 1_000_000 else {
                throw GGUFError.malformed(path: url.path, reason: "implausible counts: \(nTensors) tensors, \(nKV) metadata entries")
            }
            var md: [String: GGUFValue] = [:]
            var keys: [String] = []
            for _ in 0..<nKV {
                let key = try r.string("metadata key")
                let type = try r.u32("type of \(key)")
                md[key] = try r.value(type: type, key: key)
                keys.append(key)
            }
            metadata = md
            metadataKeys = keys
            var align = 32
            if let a = md["general.alignment"]?.int {
                guard a > 0, a & (a - 1) == 0 else { throw GGUFError.malformed(path: url.path, reason: "general.alignment \(a) is not a power of two") }
                align = a
            }
            alignment = align
            var infos: [GGUFTensorInfo] = []
            infos.reserveCapacity(Int(nTensors))
            for _ in 0..<nTensors {
                let name = try r.string("tensor name")
                let nDims = try r.u32("dimension count of \(name)")
                guard nDims >= 1, nDims <= 4 else { throw GGUFError.malformed(path: url.path, reason: "tensor \(name) has \(nDims) dimensions") }
                var dims: [Int] = []
                for _ in 0..<nDims { dims.append(Int(try r.u64("dimensions of \(name)"))) }
                let rawType = try r.u32("type of \(name)")
                let offset = Int(try r.u64("offset of \(name)"))
                infos.append(GGUFTensorInfo(name: name, dims: dims, rawType: rawType, offset: offset))
            }
            dataOffset = (r.offset + align - 1) / align * align
            // Bounds-check the tensors whose type we know; unknown types are reported when used.
            for t in infos {
                if let type = t.type {
                    let bytes = type.byteCount(elements: t.elementCount)
                    if dataOffset + t.offset + bytes > size {
                        throw GGUFError.truncated(path: url.path, what: "data of tensor \(t.name)", offset: dataOffset + t.offset,
                                                  need: bytes, have: max(0, size - dataOffset - t.offset))
                    }
                }
            }
            tensors = infos
            tensorIndex = Dictionary(infos.enumerated().map { ($1.name, $0) }, uniquingKeysWith: { a, _ in a })
        } catch {
            munmap(UnsafeMutableRawPointer(mutating: base), size)
            throw error
        }
    }

    deinit { munmap(UnsafeMutableRawPointer(mutating: base), fileSize) }

    public func tensorInfo(_ name: String) -> GGUFTensorInfo? { tensorIndex[name].map { tensors[$0] } }

    /// A tensor's data in place, with its type checked against what this build can compute with.
    public func tensor(_ name: String) throws -> QuantTensor {
        guard let info = tensorInfo(name) else { throw GGUFError.missingTensor(path: url.path, name: name) }
        guard let type = info.type else {
            throw GGUFError.unsupportedTensorType(path: url.path, tensor: name, type: info.rawType, typeName: GGMLType.name(of: info.rawType))
        }
        guard type.isSupported else {
            throw GGUFError.unsupportedTensorType(path: url.path, tensor: name, type: info.rawType, typeName: GGMLType.name(of: info.rawType))
        }
        // GGUF dims: ne[0] is the contiguous (column) dimension.
        let cols = info.dims[0]
        let rows = info.elementCount / cols
        return QuantTensor(type: type, rows: rows, cols: cols, data: base + dataOffset + info.offset, owner: self)
    }

    // MARK: typed metadata access

    public func string(_ key: String) -> String? { metadata[key]?.string }
    public func int(_ key: String) -> Int? { metadata[key]?.int }
    public func float(_ key: String) -> Double? { metadata[key]?.double }
    public func bool(_ key: String) -> Bool? { metadata[key]?.bool }

    public func require<T>(_ key: String, _ get: (GGUFValue) -> T?) throws -> T {
        guard let v = metadata[key] else { throw GGUFError.missingMetadata(path: url.path, key: key) }
        guard let t = get(v) else { throw GGUFError.wrongMetadataType(path: url.path, key: key, found: v.typeName) }
        return t
    }
    public func requireInt(_ key: String) throws -> Int { try require(key) { $0.int } }
    public func requireString(_ key: String) throws -> String { try require(key) { $0.string } }
    public func requireFloat(_ key: String) throws -> Double { try require(key) { $0.double } }
}

public struct GGUFTensorInfo: Sendable, Hashable {
    public let name: String
    /// GGUF order: dims[0] varies fastest.
    public let dims: [Int]
    public let rawType: UInt32
    /// Offset from the start of the data section.
    public let offset: Int
    public var type: GGMLType? { GGMLType(rawValue: rawType) }
    public var elementCount: Int { dims.reduce(1, *) }
}

/// A metadata value of any GGUF type.
public indirect enum GGUFValue: Sendable, Hashable {
    case uint8(UInt8), int8(Int8), uint16(UInt16), int16(Int16), uint32(UInt32), int32(Int32)
    case uint64(UInt64), int64(Int64), float32(Float), float64(Double), bool(Bool), string(String)
    case array([GGUFValue])

    public var int: Int? {
        switch self {
        case .uint8(let v): return Int(v)
        case .int8(let v): return Int(v)
        case .uint16(let v): return Int(v)
        case .int16(let v): return Int(v)
        case .uint32(let v): return Int(v)
        case .int32(let v): return Int(v)
        case .uint64(let v): return Int(exactly: v)
        case .int64(let v): return Int(v)
        default: return nil
        }
    }
    public var double: Double? {
        switch self {
        case .float32(let v): return Double(v)
        case .float64(let v): return v
        default: return int.map(Double.init)
        }
    }
    public var bool: Bool? { if case .bool(let b) = self { return b }; return nil }
    public var string: String? { if case .string(let s) = self { return s }; return nil }
    public var array: [GGUFValue]? { if case .array(let a) = self { return a }; return nil }
    public var strings: [String]? { array?.compactMap(\.string) }
    public var ints: [Int]? { array?.compactMap(\.int) }

    public var typeName: String {
        switch self {
        case .uint8: "uint8"
        case .int8: "int8"
        case .uint16: "uint16"
        case .int16: "int16"
        case .uint32: "uint32"
        case .int32: "int32"
        case .uint64: "uint64"
        case .int64: "int64"
        case .float32: "float32"
        case .float64: "float64"
        case .bool: "bool"
        case .string: "string"
        case .array: "array"
        }
    }
}

public enum GGUFError: Error, CustomStringConvertible, Equatable {
    case cannotOpen(path: String, errno: Int32)
    case notGGUF(path: String, magic: UInt32)
    case unsupportedVersion(path: String, version: UInt32)
    case truncated(path: String, what: String, offset: Int, need: Int, have: Int)
    case malformed(path: String, reason: String)
    case unknownValueType(path: String, key: String, type: UInt32)
    case unsupportedTensorType(path: String, tensor: String, type: UInt32, typeName: String)
    case missingTensor(path: String, name: String)
    case missingMetadata(path: String, key: String)
    case wrongMetadataType(path: String, key: String, found: String)
    case shapeMismatch(path: String, tensor: String, expected: [Int], found: [Int])

    public var description: String {
        switch self {
        case let .cannotOpen(p, e): "cannot open GGUF file \(p): \(String(cString: strerror(e)))"
        case let .notGGUF(p, m): "\(p) is not a GGUF file (magic 0x\(String(m, radix: 16)))"
        case let .unsupportedVersion(p, v): "\(p): GGUF version \(v) is not supported (supported: 2, 3)"
        case let .truncated(p, what, off, need, have):
            "\(p) is truncated: reading \(what) at byte \(off) needs \(need) bytes, only \(have) left"
        case let .malformed(p, r): "\(p) is malformed: \(r)"
        case let .unknownValueType(p, k, t): "\(p): metadata \(k) has unknown value type \(t)"
        case let .unsupportedTensorType(p, t, ty, n):
            "\(p): tensor \(t) has type \(n) (\(ty)), which this build cannot compute with (supported: \(GGMLType.allCases.filter(\.isSupported).map(\.name).joined(separator: ", ")))"
        case let .missingTensor(p, n): "\(p): tensor \(n) is missing"
        case let .missingMetadata(p, k): "\(p): metadata \(k) is missing"
        case let .wrongMetadataType(p, k, f): "\(p): metadata \(k) has unexpected type \(f)"
        case let .shapeMismatch(p, t, e, f): "\(p): tensor \(t) has shape \(f), expected \(e)"
        }
    }
}

/// Bounds-checked little-endian cursor over the mapping.
private struct Reader {
    let base: UnsafeRawPointer
    let size: Int
    let path: String
    var offset = 0

    mutating func need(_ n: Int, _ what: @autoclosure () -> String) throws {
        if n < 0 || offset + n > size {
            throw GGUFError.truncated(path: path, what: what(), offset: offset, need: n, have: max(0, size - offset))
        }
    }
    mutating func load<T: FixedWidthInteger>(_: T.Type, _ what: @autoclosure () -> String) throws -> T {
        try need(MemoryLayout<T>.size, what())
        let v = base.loadUnaligned(fromByteOffset: offset, as: T.self)
        offset += MemoryLayout<T>.size
        return T(littleEndian: v)
    }
    mutating func u32(_ what: @autoclosure () -> String) throws -> UInt32 { try load(UInt32.self, what()) }
    mutating func u64(_ what: @autoclosure () -> String) throws -> UInt64 { try load(UInt64.self, what()) }
    mutating func string(_ what: @autoclosure () -> String) throws -> String {
        let n = try u64(what())
        guard n <= UInt64(size) else { throw GGUFError.truncated(path: path, what: what(), offset: offset, need: Int(clamping: n), have: size - offset) }
        try need(Int(n), what())
        let buf = UnsafeRawBufferPointer(start: base + offset, count: Int(n))
        offset += Int(n)
        return String(decoding: buf, as: UTF8.self)
    }

    mutating func value(type: UInt32, key: String) throws -> GGUFValue {
        switch type {
        case 0: return .uint8(try load(UInt8.self, key))
        case 1: return .int8(try load(Int8.self, key))
        case 2: return .uint16(try load(UInt16.self, key))
        case 3: return .int16(try load(Int16.self, key))
        case 4: return .uint32(try load(UInt32.self, key))
        case 5: return .int32(try load(Int32.self, key))
        case 6: return .float32(Float(bitPattern: try load(UInt32.self, key)))
        case 7:
            let b = try load(UInt8.self, key)
            guard b <= 1 else { throw GGUFError.malformed(path: path, reason: "metadata \(key): bool value \(b)") }
            return .bool(b == 1)
        case 8: return .string(try string(key))
        case 9:
            let elemType = try u32(key)
            let n = try u64(key)
            guard n <= UInt64(size - offset) else {
                throw GGUFError.truncated(path: path, what: "array \(key)", offset: offset, need: Int(clamping: n), have: size - offset)
            }
            var items: [GGUFValue] = []
            items.reserveCapacity(Int(n))
            for _ in 0..<n { items.append(try value(type: elemType, key: key)) }
            return .array(items)
        case 10: return .uint64(try load(UInt64.self, key))
        case 11: return .int64(try load(Int64.self, key))
        case 12: return .float64(Double(bitPattern: try load(UInt64.self, key)))
        default: throw GGUFError.unknownValueType(path: path, key: key, type: type)
        }
    }
}
