import AlignersEngine
import Foundation
import AlignersCore

/// One text completion: a prompt already rendered (special tokens such as `<|im_start|>` in it
/// are parsed), greedy unless `sampling` says otherwise.
public struct CompletionRequest: Sendable {
    public var prompt: String
    public var maxNewTokens: Int
    public var stop: [String]
    public var sampling: SamplingParameters
    /// A LoRA adapter over the engine's model (engines that cannot serve one fail the request).
    public var adapter: LoRAAdapter?
    public init(prompt: String, maxNewTokens: Int, stop: [String] = [], sampling: SamplingParameters = .greedy,
                adapter: LoRAAdapter? = nil) {
        self.prompt = prompt
        self.adapter = adapter
        self.maxNewTokens = maxNewTokens
        self.stop = stop
        self.sampling = sampling
    }
}

public struct CompletionResult: Sendable {
    public var text: String
    public var finishReason: FinishReason
    public var error: String?
    public var promptTokens: Int
    public var generatedTokens: Int
    public init(text: String, finishReason: FinishReason, error: String? = nil, promptTokens: Int = 0, generatedTokens: Int = 0) {
        self.text = text
        self.finishReason = finishReason
        self.error = error
        self.promptTokens = promptTokens
        self.generatedTokens = generatedTokens
    }
}

/// What the aligners need of a decoder. `TextGenerator` is one; tests pass doubles.
///
/// Sharing: `TextGenerator` is safe to call from any number of threads at once. Its single compute
/// thread runs every request in flight as one continuous batch, so the three aligners (and the
/// generator) of an in-process filter share one engine — one copy of the weights, one KV pool —
/// and their batches are decoded together rather than taking turns behind a lock.
public protocol CompletionEngine: AnyObject, Sendable {
    var modelName: String { get }
    /// The conversation in the model's chat template, ending with the assistant's turn header.
    func renderChat(_ turns: [Turn]) -> String
    func tokenCount(_ text: String) -> Int
    /// Runs the requests as one batch (blocking) and returns one result per request, in order.
    func complete(_ requests: [CompletionRequest]) -> [CompletionResult]
}

extension TextGenerator: CompletionEngine {
    public func renderChat(_ turns: [Turn]) -> String {
        template?.render(turns) ?? (turns.map { "\($0.role): \($0.content)" }.joined(separator: "\n\n") + "\n\nassistant: ")
    }

    public func tokenCount(_ text: String) -> Int { tokenizer.encode(text, parseSpecial: true).count }

    public func complete(_ requests: [CompletionRequest]) -> [CompletionResult] {
        generate(requests.map { r in
            var g = request(text: r.prompt, maxNewTokens: r.maxNewTokens, sampling: r.sampling, stop: r.stop)
            g.adapter = r.adapter
            return g
        })
            .map { CompletionResult(text: $0.text, finishReason: $0.finishReason, error: $0.error,
                                    promptTokens: $0.promptTokens, generatedTokens: $0.tokens.count) }
    }
}
