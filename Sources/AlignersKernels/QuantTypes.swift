/// ggml tensor types as numbered in GGUF files, with their block layouts.
///
/// Supported for computation: F32, F16, Q8_0 (f16 scale `d`, 32 × int8; w = d·q) and Q4_1
/// (f16 scale `d`, f16 minimum `m`, 16 bytes of nibbles; w[j] = d·(qs[j] & 15) + m and
/// w[j+16] = d·(qs[j] >> 4) + m for j < 16). The others are named so errors can say what a file holds.
public enum GGMLType: UInt32, CaseIterable, Sendable {
    case f32 = 0, f16 = 1, q4_0 = 2, q4_1 = 3, q5_0 = 6, q5_1 = 7, q8_0 = 8, q8_1 = 9
    case q2_K = 10, q3_K = 11, q4_K = 12, q5_K = 13, q6_K = 14, q8_K = 15
    case iq2_xxs = 16, iq2_xs = 17, iq3_xxs = 18, iq1_s = 19, iq4_nl = 20, iq3_s = 21, iq2_s = 22, iq4_xs = 23
    case i8 = 24, i16 = 25, i32 = 26, i64 = 27, f64 = 28, iq1_m = 29, bf16 = 30

    public var name: String {
        switch self {
        case .f32: "F32"
        case .f16: "F16"
        case .bf16: "BF16"
        case .f64: "F64"
        case .i8: "I8"
        case .i16: "I16"
        case .i32: "I32"
        case .i64: "I64"
        default: "\(self)".uppercased()
        }
    }

    public static func name(of raw: UInt32) -> String { GGMLType(rawValue: raw)?.name ?? "unknown type \(raw)" }

    /// Elements per block.
    public var blockSize: Int {
        switch self {
        case .f32, .f16, .bf16, .f64, .i8, .i16, .i32, .i64: 1
        case .q4_0, .q4_1, .q5_0, .q5_1, .q8_0, .q8_1, .iq4_nl: 32
        default: 256
        }
    }

    /// Bytes per block.
    public var blockBytes: Int {
        switch self {
        case .f32, .i32: 4
        case .f16, .bf16, .i16: 2
        case .f64, .i64: 8
        case .i8: 1
        case .q4_0: 18
        case .q4_1: 20
        case .q5_0: 22
        case .q5_1: 24
        case .q8_0: 34
        case .q8_1: 36
        case .q2_K: 84
        case .q3_K: 110
        case .q4_K: 144
        case .q5_K: 176
        case .q6_K: 210
        case .q8_K: 292
        case .iq4_nl: 18
        case .iq4_xs: 136
        case .iq2_xxs: 66
        case .iq2_xs: 74
        case .iq2_s: 82
        case .iq3_xxs: 98
        case .iq3_s: 110
        case .iq1_s: 50
        case .iq1_m: 56
        }
    }

    public func byteCount(elements: Int) -> Int { (elements + blockSize - 1) / blockSize * blockBytes }

    /// Whether the kernels in this module compute with this type.
    public var isSupported: Bool {
        switch self {
        case .f32, .f16, .q8_0, .q4_1: true
        default: false
        }
    }
}

/// A 2-D weight matrix in a ggml block layout, read in place (typically from a memory-mapped GGUF).
/// Rows are contiguous; `cols` is the reduction dimension of `W·x`.
public struct QuantTensor: @unchecked Sendable {
    public let type: GGMLType
    public let rows: Int
    public let cols: Int
    public let data: UnsafeRawPointer
    /// Keeps the memory behind `data` alive.
    public let owner: AnyObject?

    public init(type: GGMLType, rows: Int, cols: Int, data: UnsafeRawPointer, owner: AnyObject?) {
        self.type = type
        self.rows = rows
        self.cols = cols
        self.data = data
        self.owner = owner
    }

    public var rowBytes: Int { type.byteCount(elements: cols) }
    public var byteCount: Int { rowBytes * rows }
    @inlinable public func row(_ r: Int) -> UnsafeRawPointer { data + r * rowBytes }
}

/// Half-precision to single-precision conversion (F16C with a CPU target).
@inlinable @inline(__always)
public func halfToFloat(_ bits: UInt16) -> Float { Float(Float16(bitPattern: bits)) }

@inlinable @inline(__always)
public func floatToHalf(_ f: Float) -> UInt16 { Float16(f).bitPattern }
