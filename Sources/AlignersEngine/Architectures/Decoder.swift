import Foundation
import AlignersKernels

/// Hyper-parameters of a decoder-only transformer, read from GGUF metadata (`<arch>.*` keys).
public struct DecoderConfig: Sendable, Hashable {
    public var architecture: String
    public var layers: Int
    public var embedding: Int
    public var feedForward: Int
    public var heads: Int
    public var kvHeads: Int
    public var headDim: Int
    public var vocabulary: Int
    public var contextLength: Int
    public var ropeBase: Float
    public var rmsEpsilon: Float
    public var kvDim: Int { kvHeads * headDim }
    public var qDim: Int { heads * headDim }

    /// Reads the common `<arch>.*` keys.
    public init(gguf: GGUFFile) throws {
        let arch = try gguf.requireString("general.architecture")
        architecture = arch
        layers = try gguf.requireInt("\(arch).block_count")
        embedding = try gguf.requireInt("\(arch).embedding_length")
        feedForward = try gguf.requireInt("\(arch).feed_forward_length")
        heads = try gguf.requireInt("\(arch).attention.head_count")
        kvHeads = gguf.int("\(arch).attention.head_count_kv") ?? heads
        headDim = gguf.int("\(arch).attention.key_length") ?? gguf.int("\(arch).rope.dimension_count") ?? (embedding / heads)
        contextLength = gguf.int("\(arch).context_length") ?? 2048
        ropeBase = Float(gguf.float("\(arch).rope.freq_base") ?? 10000)
        rmsEpsilon = Float(gguf.float("\(arch).attention.layer_norm_rms_epsilon") ?? 1e-5)
        vocabulary = gguf.int("\(arch).vocab_size") ?? (gguf.metadata["tokenizer.ggml.tokens"]?.array?.count ?? 0)
    }
}

/// A causal language model that computes logits for a ragged batch of token rows: each
/// `DecoderSegment` appends tokens to one sequence's KV cache. Segments of different sequences
/// run in the same matrix products (continuous batching); attention stays per sequence.
public protocol CausalLM: AnyObject, Sendable {
    var config: DecoderConfig { get }
    /// Logits for each segment that asks for them (its last token), in segment order,
    /// written as `[segments asking × vocabulary]`.
    func forward(_ segments: [DecoderSegment], logits: UnsafeMutablePointer<Float>) throws
}

/// Tokens to append to one sequence.
public struct DecoderSegment {
    public var cache: KVCache
    public var tokens: [Int]
    /// Whether to compute logits for the last token.
    public var wantsLogits: Bool
    /// A LoRA adapter over the shared base weights for this sequence (nil: the base model). The
    /// sequence's KV cache must have been filled with the same adapter.
    public var adapter: LoRAAdapter?
    public init(cache: KVCache, tokens: [Int], wantsLogits: Bool = true, adapter: LoRAAdapter? = nil) {
        self.cache = cache
        self.tokens = tokens
        self.wantsLogits = wantsLogits
        self.adapter = adapter
    }
}

/// Keys and values of one sequence for every layer, sized up front (F32,
/// `layers × capacity × kvDim` each). Appending past `capacity` is an error, never a reallocation.
///
/// The first `sharedCount` positions may live in another cache (`shared`, a prompt snapshot that
/// many sequences start from) instead of this one: they are read there, never copied, so
/// sequences sharing a prompt prefix hold it once and attention reads it once for all of them.
public final class KVCache: @unchecked Sendable {
    public let layers: Int
    public let capacity: Int
    public let kvDim: Int
    public internal(set) var count = 0
    /// Where positions `0 ..< sharedCount` are (nil: here).
    public private(set) var shared: KVCache?
    public private(set) var sharedCount = 0
    let keys: UnsafeMutablePointer<Float>
    let values: UnsafeMutablePointer<Float>

    public init(config: DecoderConfig, capacity: Int) {
        layers = config.layers
        self.capacity = capacity
        kvDim = config.kvDim
        keys = .allocate(capacity: layers * capacity * kvDim)
        values = .allocate(capacity: layers * capacity * kvDim)
    }
    deinit { keys.deallocate(); values.deallocate() }

    public var remaining: Int { capacity - count }
    /// Bytes held.
    public var byteCount: Int { 2 * layers * capacity * kvDim * 4 }
    /// Forgets everything (keeps the memory).
    public func reset() { count = 0; shared = nil; sharedCount = 0 }
    /// Drops tokens after the first `n` (e.g. to reuse a shared prompt prefix).
    public func truncate(to n: Int) {
        count = min(count, max(0, n))
        if count < sharedCount { sharedCount = count }
        if sharedCount == 0 { shared = nil }
    }

    /// Makes the first `n` positions of `other` (which holds its own) this cache's contents, read in place.
    public func share(_ other: KVCache, count n: Int) {
        precondition(other.shared == nil && n <= other.count && n <= capacity && other.kvDim == kvDim && other.layers == layers)
        shared = n > 0 ? other : nil
        sharedCount = n
        count = n
    }

    /// Storage of position `pos` in this cache (positions below `sharedCount` are in `shared`).
    @inline(__always) func k(_ layer: Int, _ pos: Int) -> UnsafeMutablePointer<Float> { keys + (layer * capacity + pos) * kvDim }
    @inline(__always) func v(_ layer: Int, _ pos: Int) -> UnsafeMutablePointer<Float> { values + (layer * capacity + pos) * kvDim }
}

public enum DecoderError: Error, CustomStringConvertible, Equatable {
    case unsupportedArchitecture(String, supported: [String])
    case contextFull(capacity: Int, have: Int, adding: Int)
    case beyondModelContext(positions: Int, contextLength: Int)
    case tokenOutOfRange(Int, vocabulary: Int)
    case shape(String)
    public var description: String {
        switch self {
        case let .unsupportedArchitecture(a, s): "architecture \(a) is not supported (supported: \(s.joined(separator: ", ")))"
        case let .contextFull(c, h, a): "KV cache full: capacity \(c) tokens, holds \(h), asked to add \(a)"
        case let .beyondModelContext(p, c): "sequence of \(p) tokens exceeds the model's context length \(c)"
        case let .tokenOutOfRange(t, v): "token id \(t) is outside the vocabulary (\(v))"
        case let .shape(s): s
        }
    }
}

/// Architecture name (`general.architecture`) → constructor. A new architecture is one file (its
/// math over the engine's layers, as `LlamaModel`) and one line here.
public enum DecoderRegistry {
    public typealias Constructor = @Sendable (GGUFFile, ComputeContext) throws -> CausalLM
    private static let table: [String: Constructor] = [
        "llama": { try LlamaModel(gguf: $0, context: $1) },
    ]

    public static var architectures: [String] { table.keys.sorted() }

    public static func load(_ gguf: GGUFFile, context: ComputeContext) throws -> CausalLM {
        let arch = try gguf.requireString("general.architecture")
        guard let make = table[arch] else { throw DecoderError.unsupportedArchitecture(arch, supported: architectures) }
        return try make(gguf, context)
    }
}
