import Foundation
import Testing
import AlignersKernels
@testable import AlignersEngine
@testable import AlignersSquadModels

@Suite struct SafetensorsTests {
    func tempFile(_ data: Data, _ name: String = UUID().uuidString) throws -> String {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("st-\(name).safetensors")
        try data.write(to: url)
        return url.path
    }

    @Test func roundTripsTensorsAndMetadata() throws {
        let data = try SafetensorsWriter.data([
            .init(name: "w", shape: [2, 3], values: [1, 2, 3, 4, 5, 6]),
            .init(name: "b", shape: [3], values: [-1, 0, 0.5]),
        ], metadata: ["criterion": "ethical"])
        let f = try SafetensorsFile(path: try tempFile(data))
        #expect(f.names == ["b", "w"])
        #expect(f.metadata["criterion"] == "ethical")
        #expect(try f.floats("w", shape: [2, 3]) == [1, 2, 3, 4, 5, 6])
        #expect(try f.check("b", dtype: .f32, shape: [3]).elementCount == 3)
    }

    @Test func shapeAndDTypeMismatchesNameTheTensorAndFile() throws {
        let path = try tempFile(try SafetensorsWriter.data([.init(name: "w", shape: [2, 2], values: [1, 2, 3, 4])]))
        let f = try SafetensorsFile(path: path)
        let e1 = #expect(throws: SafetensorsError.self) { try f.floats("w", shape: [4]) }
        #expect(e1?.description.contains(path) == true)
        #expect(e1?.description.contains("'w' has shape [2, 2], expected [4]") == true)
        let e2 = #expect(throws: SafetensorsError.self) { try f.check("w", dtype: .f16) }
        #expect(e2?.problem == .wrongDType(tensor: "w", expected: "F16", found: "F32"))
        let e3 = #expect(throws: SafetensorsError.self) { try f.floats("missing") }
        #expect(e3?.problem == .missingTensor("missing"))
    }

    /// Every proper prefix of a valid file is rejected with an error that names the file.
    @Test(arguments: [0, 4, 8, 20, 60, 100])
    func truncatedFilesAreRejected(cut: Int) throws {
        let full = try SafetensorsWriter.data([.init(name: "w", shape: [8], values: Array(repeating: 1, count: 8))])
        let keep = max(0, full.count - 1 - cut)
        let path = try tempFile(full.prefix(keep), "trunc\(cut)")
        let e = #expect(throws: SafetensorsError.self) { try SafetensorsFile(path: path) }
        #expect(e?.file == path)
        #expect(e?.description.hasPrefix(path + ": ") == true)
    }

    @Test(arguments: [
        ("gguf", Data("GGUF\u{3}\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0".utf8)),
        ("text", Data("hello, this is not a tensor file at all".utf8)),
        ("badjson", { var d = Data([10, 0, 0, 0, 0, 0, 0, 0]); d.append(Data("{not json}".utf8)); return d }()),
        ("badrange", { () -> Data in
            let json = #"{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,12]}}"#
            var d = Data(); var n = UInt64(json.utf8.count).littleEndian
            withUnsafeBytes(of: &n) { d.append(contentsOf: $0) }
            d.append(Data(json.utf8)); d.append(Data(count: 16)); return d }()),
        ("baddtype", { () -> Data in
            let json = #"{"w":{"dtype":"Q4","shape":[4],"data_offsets":[0,16]}}"#
            var d = Data(); var n = UInt64(json.utf8.count).littleEndian
            withUnsafeBytes(of: &n) { d.append(contentsOf: $0) }
            d.append(Data(json.utf8)); d.append(Data(count: 16)); return d }()),
    ])
    func foreignFilesAreRejected(name: String, data: Data) throws {
        let path = try tempFile(data, "foreign-\(name)")
        let e = #expect(throws: SafetensorsError.self) { try SafetensorsFile(path: path) }
        #expect(e?.description.hasPrefix(path + ": ") == true)
    }

    @Test func missingFileNamesThePath() {
        let e = #expect(throws: SafetensorsError.self) { try SafetensorsFile(path: "/nonexistent/model.safetensors") }
        #expect(e?.description.contains("/nonexistent/model.safetensors: cannot open") == true)
    }

    @Test(.enabled(if: EncoderTestSupport.modelAvailable, EncoderTestSupport.skipMessage))
    func readsTheEncoderCheckpoint() throws {
        let f = try SafetensorsFile(path: EncoderTestSupport.modelDirectory!.appendingPathComponent("model.safetensors").path)
        #expect(f.tensors.count == 104)
        try f.check("embeddings.word_embeddings.weight", dtype: .f32, shape: [30522, 384])
        let e = #expect(throws: SafetensorsError.self) { try BERTEncoder(weights: f, config: { var c = BERTConfig(); c.hiddenSize = 768; return c }(), pool: TestCompute.pool) }
        #expect(e?.description.contains("expected [30522, 768]") == true)
    }
}
