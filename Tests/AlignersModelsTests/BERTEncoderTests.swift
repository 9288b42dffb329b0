import Foundation
import Testing
@testable import AlignersEngine
@testable import AlignersSquadModels
import AlignersKernels

/// Embeddings must match the numpy reference (scripts/reference/encoder_reference.py) within 1e-4.
@Suite(.enabled(if: EncoderTestSupport.modelAvailable, EncoderTestSupport.skipMessage))
struct BERTEncoderTests {
    struct Fixture: Decodable {
        struct Input: Decodable { var a: String; var b: String?; var ids: [Int32]; var type_ids: [Int32] }
        var inputs: [Input]; var unpadded: [[Float]]; var padded: [[Float]]
    }
    static let fixture = EncoderTestSupport.decode(Fixture.self, "embeddings.json")
    static let encoder: BERTEncoder? = EncoderTestSupport.modelDirectory.flatMap { try? BERTEncoder(modelDirectory: $0, pool: TestCompute.pool) }

    static func maxAbs(_ a: [Float], _ b: [Float]) -> Float { zip(a, b).map { abs($0 - $1) }.max() ?? .infinity }

    @Test(arguments: 0..<6)
    func unpaddedEmbeddingMatchesReference(_ i: Int) throws {
        let enc = try #require(Self.encoder)
        let inp = Self.fixture.inputs[i]
        let e = try enc.embedBatch([BertEncoding(ids: inp.ids, typeIds: inp.type_ids)])[0]
        #expect(e.count == 384)
        #expect(Self.maxAbs(e, Self.fixture.unpadded[i]) < 1e-4)
    }

    @Test func paddedBatchMatchesReference() throws {
        let enc = try #require(Self.encoder)
        let f = Self.fixture
        let T = f.inputs.map(\.ids.count).max()!
        let ids = f.inputs.map { $0.ids + Array(repeating: 0, count: T - $0.ids.count) }
        let types = f.inputs.map { $0.type_ids + Array(repeating: 0, count: T - $0.type_ids.count) }
        let mask = f.inputs.map { Array(repeating: Int32(1), count: $0.ids.count) + Array(repeating: 0, count: T - $0.ids.count) }
        let embs = try enc.embed(ids: ids, typeIds: types, attentionMask: mask)
        for i in embs.indices { #expect(Self.maxAbs(embs[i], f.padded[i]) < 1e-4, "row \(i)") }
    }

    @Test func tokenizerPlusEncoderMatchesEndToEnd() throws {
        let enc = try #require(Self.encoder)
        let tok = try #require(EncoderTestSupport.tokenizer)
        let f = Self.fixture
        let encodings = f.inputs.map { tok.encode($0.a, pair: $0.b, maxLength: 128) }
        #expect(encodings.map(\.ids) == f.inputs.map(\.ids))
        // Sorted, multi-batch path.
        let embs = try enc.embed(encodings, batchSize: 4)
        for i in embs.indices {
            #expect(Self.maxAbs(embs[i], f.unpadded[i]) < 1e-4, "row \(i)")
            let norm = embs[i].reduce(0) { $0 + $1 * $1 }.squareRoot()
            #expect(abs(norm - 1) < 1e-5)
        }
    }

    @Test func rejectsOutOfRangeInput() throws {
        let enc = try #require(Self.encoder)
        #expect(throws: BERTError.self) { try enc.embedBatch([BertEncoding(ids: [101, 40000, 102], typeIds: [0, 0, 0])]) }
        #expect(throws: BERTError.self) { try enc.embedBatch([BertEncoding(ids: Array(repeating: 1, count: 513), typeIds: Array(repeating: 0, count: 513))]) }
    }
}

@Suite struct DenseKernelTests {
    @Test(arguments: [-6.0, -3.1, -1.0, -0.3, 0.0, 0.2, 0.7, 1.5, 2.9, 5.5] as [Float])
    func geluMatchesLibm(x: Float) {
        var v = [Float](repeating: x, count: 19)
        v.withUnsafeMutableBufferPointer { Dense.geluErf($0.baseAddress!, count: 19) }
        for y in v { #expect(abs(y - Dense.geluErfReference(x)) < 1e-6) }
    }

    /// The encoder's attention divides after the product: expShifted leaves e^(s − max) and its sum.
    @Test func expShiftedIsTheSoftmaxBeforeItsDivision() {
        var v: [Float] = (0..<20).map { Float($0 % 7) - 3 }
        let (m, sum) = v.withUnsafeMutableBufferPointer { VectorMath.expShifted($0.baseAddress!, 20) }
        let e = (0..<20).map { exp(Double($0 % 7) - 3 - 3) }
        #expect(m == 3 && abs(Double(sum) - e.reduce(0, +)) < 1e-5)
        for i in 0..<20 { #expect(abs(Double(v[i]) - e[i]) < 1e-6) }
    }
}
