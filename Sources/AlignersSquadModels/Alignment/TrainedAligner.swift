import AlignersEngine
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
