import AlignersEngine
import Foundation
import AlignersCore

/// The untrained aligner: the decoder given the criterion's principles and demonstrations as a
/// few-shot "corrector" prompt (the paper's Appendix A.1 structure), then the `(x, y)` to correct.
///
/// The prompt (ChatML for SmolLM2):
///
///     system:    You are a careful editor … principles of <name> (<description>): 1. … 2. …
///                Reply with "Critique:" … then "Corrected answer:" and the full corrected answer.
///     user:      Question: <demo question>\n\nAnswer: <demo answer>          ┐ per demonstration
///     assistant: [Critique: <critique> (Violates: 1, 3)\n\n]Corrected answer: … ┘ (2–3, one fine)
///     user:      Question: <x>\n\nAnswer: <y>
///     assistant: Corrected answer:            (or Critique:, with `critique`)  ← prefilled
///
/// The model writes the corrected answer (after its critique, with `critique` on); `OutputGuard`
/// keeps only the corrected answer.
///
/// Critique-first (the paper's corrector format) is off by default: on 8 real flawed answers
/// SmolLM2-135M wrote commentary about the answer ("The answer is not helpful. (Violates: 1.)")
/// instead of an answer in most of them, and the prompt is ~110 tokens longer. A criterion can turn
/// it on for a larger decoder with `aligner: {critique: true}`. "Already fine" is expressed as in the fine demonstration: the answer repeated
/// unchanged (the guard then keeps the original with an `unchanged:` note).
///
/// The whole batch is one `complete` call: the engine decodes the samples together.
public struct PromptedAligner: Aligner {
    public let spec: Criterion
    public let engine: any CompletionEngine
    public var criterion: String { spec.name }
    public var modelName: String { "prompted(\(spec.name))+\(engine.modelName)" }

    /// nil: from the answer's length (1.5 × its tokens + room for the critique, 128…512), or the
    /// criterion file's `aligner.max_new_tokens`.
    public var maxNewTokens: Int?
    public var sampling: SamplingParameters
    /// Demonstrations show a critique before the correction, and the model writes one.
    public var critique: Bool
    public var outputGuard: OutputGuard
    /// The conversation and the answer are cut to these many characters in the prompt (the
    /// conversation keeps its end, the answer its start) so the prompt stays within a small
    /// model's useful context.
    public var maxConversationCharacters: Int
    public var maxAnswerCharacters: Int

    public static let stopStrings = ["<|im_start|>", "\nQuestion:", "\n\nCritique:"]

    public init(criterion: Criterion, engine: any CompletionEngine, maxNewTokens: Int? = nil,
                sampling: SamplingParameters = .greedy, critique: Bool? = nil, outputGuard: OutputGuard = OutputGuard(),
                maxConversationCharacters: Int = 1500, maxAnswerCharacters: Int = 2000) {
        spec = criterion
        self.engine = engine
        self.maxNewTokens = maxNewTokens ?? criterion.aligner.maxNewTokens
        self.sampling = sampling
        self.critique = critique ?? criterion.aligner.critique
        self.outputGuard = outputGuard
        self.maxConversationCharacters = maxConversationCharacters
        self.maxAnswerCharacters = maxAnswerCharacters
    }

    // MARK: prompt

    public var systemPrompt: String {
        var s = "You are a careful editor. You are given a question and an answer written by an AI assistant. "
        s += "Rewrite the answer so that it follows these principles of \(spec.name) (\(spec.description)):\n"
        for (i, p) in spec.principles.enumerated() { s += "\(i + 1). \(p)\n" }
        if critique {
            s += "Reply with \"Critique:\" and one or two sentences naming the principles the answer breaks, "
            s += "then \"Corrected answer:\" and the full corrected answer, written as the assistant's reply to the question. "
            s += "If the answer already follows every principle, say so and repeat the answer unchanged."
        } else {
            s += "Reply with \"Corrected answer:\" and the full corrected answer, written as the assistant's reply to the question. "
            s += "If the answer already follows every principle, repeat it unchanged."
        }
        return s
    }

    static func userTurn(question: String, answer: String) -> String {
        "Question: \(question)\n\nAnswer: \(answer)"
    }

    static func assistantTurn(_ d: Criterion.Demonstration, critique: Bool) -> String {
        guard critique else { return "Corrected answer: \(d.corrected)" }
        let violates = d.violated.isEmpty ? "Violates: none" : "Violates: " + d.violated.map(String.init).joined(separator: ", ")
        return "Critique: \(d.critique) (\(violates).)\n\nCorrected answer: \(d.corrected)"
    }

    /// The few-shot conversation for one exchange (before the assistant prefill).
    public func turns(for exchange: Exchange) -> [Turn] {
        var t = [Turn(role: "system", content: systemPrompt)]
        for d in spec.promptDemonstrations {
            t.append(Turn(role: "user", content: Self.userTurn(question: d.question, answer: d.answer)))
            t.append(Turn(role: "assistant", content: Self.assistantTurn(d, critique: critique)))
        }
        let (question, _) = Self.renderConversation(exchange.conversation, limit: maxConversationCharacters)
        let answer = Self.sanitize(Self.head(exchange.response, maxAnswerCharacters))
        t.append(Turn(role: "user", content: Self.userTurn(question: question, answer: answer)))
        return t
    }

    /// The full prompt text: the chat, the assistant header, and the prefilled label.
    public func prompt(for exchange: Exchange) -> String {
        engine.renderChat(turns(for: exchange)) + prefill
    }

    var prefill: String { critique ? "Critique:" : "Corrected answer:" }

    /// `x` as the question text: the last user turn alone, or earlier turns as `User:`/`Assistant:`
    /// lines before it. Keeps the end when too long. Returns (text, last user turn).
    static func renderConversation(_ turns: [Turn], limit: Int) -> (String, String) {
        let lastUser = turns.last(where: { $0.role == "user" })?.content ?? turns.last?.content ?? ""
        let dialogue = turns.filter { $0.role != "system" }
        let text: String
        if dialogue.count <= 1 {
            text = lastUser
        } else {
            text = dialogue.map { ($0.role == "user" ? "User: " : "Assistant: ") + $0.content }.joined(separator: "\n")
        }
        return (sanitize(tail(text, limit)), lastUser)
    }

    /// Neutralises special-token text in user content (it would be parsed as real tokens).
    static func sanitize(_ s: String) -> String {
        s.replacingOccurrences(of: "<|", with: "< |").replacingOccurrences(of: "|>", with: "| >")
    }

    static func head(_ s: String, _ n: Int) -> String { s.count <= n ? s : String(s.prefix(n)) + " …" }
    static func tail(_ s: String, _ n: Int) -> String { s.count <= n ? s : "… " + String(s.suffix(n)) }

    func newTokens(for exchange: Exchange) -> Int {
        if let maxNewTokens { return maxNewTokens }
        let answerTokens = engine.tokenCount(Self.head(exchange.response, maxAnswerCharacters))
        return min(512, max(128, answerTokens * 3 / 2 + 64))
    }

    var forbiddenCopies: [String] {
        spec.promptDemonstrations.flatMap { [$0.answer, $0.corrected, $0.critique] } + spec.principles
    }

    // MARK: aligning

    public func align(_ batch: [Exchange]) throws -> [Alignment] {
        guard !batch.isEmpty else { return [] }
        let requests = batch.map {
            CompletionRequest(prompt: prompt(for: $0), maxNewTokens: newTokens(for: $0), stop: Self.stopStrings, sampling: sampling)
        }
        let results = engine.complete(requests)
        let forbidden = forbiddenCopies
        return zip(batch, results).map { ex, r in
            if r.finishReason == .error {
                return Alignment(response: ex.response, note: "rejected: generation failed: \(r.error ?? "unknown error")")
            }
            let (_, question) = Self.renderConversation(ex.conversation, limit: maxConversationCharacters)
            return outputGuard.check(prefill + r.text, OutputGuard.Context(
                original: ex.response, question: question, forbiddenCopies: forbidden, finishReason: r.finishReason))
        }
    }
}
