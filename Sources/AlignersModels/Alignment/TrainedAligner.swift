import Foundation
import AlignersCore

/// An aligner trained in the paper's format: the model reads `x [INIT] y [ALIGNED] ` and writes
/// `y' [DONE]`; decoding is greedy and stops at the text `[DONE]` (or the model's end token).
///
/// `promptText` and `trainingText` are the one definition of the format: the training code uses
/// `trainingText` (loss only after `[ALIGNED]`), so an adapter trained by it plugs in unchanged.
/// `x` is the last user turn alone, or for longer conversations the turns as `User: …` /
/// `Assistant: …` lines (system turns left out).
public struct TrainedAligner: Aligner {
    public let criterion: String
    public let engine: any CompletionEngine
    /// The LoRA adapter served over the engine's model (nil: the model itself was trained).
    public let adapter: LoRAAdapter?
    public var modelName: String { "trained(\(criterion))+\(engine.modelName)" + (adapter.map { "+lora(\($0.name))" } ?? "") }
    public var maxNewTokens: Int?
    public var outputGuard: OutputGuard
    public var maxConversationCharacters: Int
    public var maxAnswerCharacters: Int

    public static let initMarker = "[INIT]"
    public static let alignedMarker = "[ALIGNED]"
    public static let doneMarker = "[DONE]"

    public init(criterion: String, engine: any CompletionEngine, adapter: LoRAAdapter? = nil, maxNewTokens: Int? = nil,
                outputGuard: OutputGuard = OutputGuard(), maxConversationCharacters: Int = 2000, maxAnswerCharacters: Int = 3000) {
        self.criterion = criterion
        self.engine = engine
        self.adapter = adapter
        self.maxNewTokens = maxNewTokens
        self.outputGuard = outputGuard
        self.maxConversationCharacters = maxConversationCharacters
        self.maxAnswerCharacters = maxAnswerCharacters
    }

    /// Builds it from a criterion whose `aligner.kind` is `trained`.
    public init(criterion: Criterion, engine: any CompletionEngine, adapter: LoRAAdapter? = nil) {
        self.init(criterion: criterion.name, engine: engine, adapter: adapter, maxNewTokens: criterion.aligner.maxNewTokens)
    }

    /// `x` as the trained format writes it.
    public static func renderX(_ conversation: [Turn]) -> String {
        let dialogue = conversation.filter { $0.role != "system" }
        if dialogue.count == 1 { return dialogue[0].content }
        return dialogue.map { ($0.role == "user" ? "User: " : "Assistant: ") + $0.content }.joined(separator: "\n")
    }

    /// `x [INIT] y [ALIGNED] ` (what the model is given).
    public static func promptText(conversation: [Turn], response: String) -> String {
        "\(renderX(conversation)) \(initMarker) \(response) \(alignedMarker) "
    }

    /// `x [INIT] y [ALIGNED] y' [DONE]` (a training example).
    public static func trainingText(conversation: [Turn], response: String, aligned: String) -> String {
        promptText(conversation: conversation, response: response) + "\(aligned) \(doneMarker)"
    }

    public func prompt(for exchange: Exchange) -> String {
        Self.prompt(for: exchange, maxConversationCharacters: maxConversationCharacters, maxAnswerCharacters: maxAnswerCharacters)
    }

    /// The prompt the model is given, exactly as training builds it: the conversation cut from the
    /// front and the answer at the end (as the prompted aligner does), control-token text escaped.
    public static func prompt(for exchange: Exchange, maxConversationCharacters: Int = 2000, maxAnswerCharacters: Int = 3000) -> String {
        var conv = exchange.conversation
        let x = renderX(conv)
        if x.count > maxConversationCharacters, let last = conv.indices.last {
            conv = [Turn(role: "user", content: PromptedAligner.tail(conv[last].content, maxConversationCharacters))]
        }
        let y = PromptedAligner.head(exchange.response, maxAnswerCharacters)
        return PromptedAligner.sanitize(promptText(conversation: conv, response: y))
    }

    /// What the model is trained to write after the prompt: `y' [DONE]`.
    public static func target(_ aligned: String) -> String {
        PromptedAligner.sanitize("\(aligned) \(doneMarker)")
    }

    public func align(_ batch: [Exchange]) throws -> [Alignment] {
        guard !batch.isEmpty else { return [] }
        let requests = batch.map { ex in
            CompletionRequest(prompt: prompt(for: ex), maxNewTokens: maxNewTokens ?? min(768, max(128, engine.tokenCount(ex.response) * 2 + 32)),
                              stop: [Self.doneMarker, Self.initMarker], adapter: adapter)
        }
        let results = engine.complete(requests)
        return zip(batch, results).map { ex, r in
            if r.finishReason == .error {
                return Alignment(response: ex.response, note: "rejected: generation failed: \(r.error ?? "unknown error")")
            }
            let question = ex.conversation.last(where: { $0.role == "user" })?.content ?? ""
            return outputGuard.check(r.text, OutputGuard.Context(original: ex.response, question: question, finishReason: r.finishReason))
        }
    }
}

// MARK: - Factory

/// Builds the aligner a criterion file asks for, sharing one engine per model file between all the
/// aligners it makes (see `CompletionEngine` on why sharing is safe).
///
///     let factory = AlignerFactory(modelsDir: modelsDir)
///     let aligner = try factory.make(for: try CriteriaLibrary(searchDir: criteriaDir).load("ethical"))
public final class AlignerFactory: @unchecked Sendable {
    public let modelsDir: String?
    /// Replaces the criterion's `default` decoder (e.g. `--aligner-model other.gguf`).
    public let defaultModelOverride: String?
    public let maxBatch: Int
    private let lock = NSLock()
    private var engines: [String: TextGenerator] = [:]
    private var adapters: [String: LoRAAdapter] = [:]

    public init(modelsDir: String? = nil, defaultModel: String? = nil, maxBatch: Int = 64) {
        self.modelsDir = modelsDir
        defaultModelOverride = defaultModel
        self.maxBatch = maxBatch
    }

    /// The GGUF file serving a criterion: `default` (or the override) through `ModelLocator`; a
    /// path: absolute, beside the criterion file, then through `ModelLocator`.
    public func modelPath(for criterion: Criterion) throws -> String {
        let spec = criterion.aligner
        if spec.usesDefaultModel {
            let m = defaultModelOverride ?? TextGenerator.defaultModel
            if m.hasPrefix("/") || FileManager.default.fileExists(atPath: m) { return m }
            return try ModelLocator.locate(m, explicit: modelsDir).path
        }
        if spec.model.hasPrefix("/") { return spec.model }
        if let file = criterion.file {
            let beside = URL(fileURLWithPath: file).deletingLastPathComponent().appendingPathComponent(spec.model)
            if FileManager.default.fileExists(atPath: beside.path) { return beside.path }
        }
        return try ModelLocator.locate(spec.model, explicit: modelsDir).path
    }

    /// One engine per model file, loaded on first use.
    public func engine(path: String) throws -> TextGenerator {
        let key = URL(fileURLWithPath: path).resolvingSymlinksInPath().path
        lock.lock(); defer { lock.unlock() }
        if let e = engines[key] { return e }
        let e = try TextGenerator(path: key, maxBatch: maxBatch)
        engines[key] = e
        return e
    }

    /// A criterion's adapter directory: absolute, or relative to the criterion file's directory.
    public func adapterPath(for criterion: Criterion) -> String? {
        guard let a = criterion.aligner.adapter else { return nil }
        if a.hasPrefix("/") { return a }
        if let file = criterion.file { return URL(fileURLWithPath: file).absoluteURL.deletingLastPathComponent().appendingPathComponent(a).standardized.path }
        return URL(fileURLWithPath: a).standardized.path
    }

    /// One adapter per directory, loaded on first use and shared by every aligner that names it.
    public func adapter(path: String, for engine: TextGenerator) throws -> LoRAAdapter {
        let key = URL(fileURLWithPath: path).resolvingSymlinksInPath().path + "|" + engine.modelName
        lock.lock(); defer { lock.unlock() }
        if let a = adapters[key] { return a }
        let a = try PEFTAdapter.load(directory: path, model: engine.model.config)
        adapters[key] = a
        return a
    }

    public func make(for criterion: Criterion) throws -> any Aligner {
        let eng = try engine(path: modelPath(for: criterion))
        switch criterion.aligner.kind {
        case .prompted: return PromptedAligner(criterion: criterion, engine: eng)
        case .trained:
            let adapter = try adapterPath(for: criterion).map { try self.adapter(path: $0, for: eng) }
            return TrainedAligner(criterion: criterion, engine: eng, adapter: adapter)
        }
    }
}
