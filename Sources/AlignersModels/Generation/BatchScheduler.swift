import Foundation

/// One generation job.
public struct GenerationRequest: Sendable {
    /// Prompt token ids (render and tokenize chat turns with `TextGenerator.promptTokens`).
    public var prompt: [Int]
    public var maxNewTokens: Int
    public var sampling: SamplingParameters
    /// Generation ends when the text contains one of these; the stop string and what follows are cut.
    public var stopStrings: [String]
    /// Generation ends on these tokens (not part of the text). The model's end-of-turn tokens are
    /// added by `TextGenerator`.
    public var stopTokens: Set<Int>

    public init(prompt: [Int], maxNewTokens: Int = 256, sampling: SamplingParameters = .greedy,
                stopStrings: [String] = [], stopTokens: Set<Int> = []) {
        self.prompt = prompt
        self.maxNewTokens = maxNewTokens
        self.sampling = sampling
        self.stopStrings = stopStrings
        self.stopTokens = stopTokens
    }
}

public enum FinishReason: String, Sendable, Codable {
    /// A stop token or stop string.
    case stop
    /// `maxNewTokens` reached.
    case length
    /// The KV cache or the model's context is full.
    case context
    case error
}

public struct GenerationResult: Sendable {
    public var text: String
    public var tokens: [Int]
    public var promptTokens: Int
    public var finishReason: FinishReason
    public var error: String?
}

/// What a running generation reports: text as it becomes final (stop strings held back until
/// they can no longer match), then the result.
public enum GenerationEvent: Sendable {
    case text(String)
    case done(GenerationResult)
}

/// Continuous batching on the caller's thread: requests join between steps, every step runs one
/// forward over all active sequences (new ones contribute their prompt, running ones one token),
/// and sequences leave as soon as they finish, freeing their KV cache.
public final class BatchScheduler: @unchecked Sendable {
    public let model: CausalLM
    public let tokenizer: BPETokenizer
    /// Most sequences decoding at once.
    public var maxBatch: Int
    /// Most prompt tokens prefilled in one step (a longer prompt is split across steps).
    public var prefillChunk: Int

    final class Sequence {
        let id: Int
        let request: GenerationRequest
        let cache: KVCache
        var sampler: Sampler
        let onEvent: (GenerationEvent) -> Void
        var history: [Int]
        var generated: [Int] = []
        var prefilled = 0
        var pendingToken: Int?
        var decoder = StreamingDecoder()
        var text = ""
        var emitted = 0  // characters of `text` already reported
        var finish: FinishReason?
        var errorText: String?
        var cutAtStopString = false
        init(id: Int, request: GenerationRequest, cache: KVCache, onEvent: @escaping (GenerationEvent) -> Void) {
            self.id = id
            self.request = request
            self.cache = cache
            self.onEvent = onEvent
            sampler = Sampler(request.sampling)
            history = request.prompt
        }
    }

    private var waiting: [Sequence] = []
    private var active: [Sequence] = []
    private var nextID = 0
    private var logits: UnsafeMutablePointer<Float>
    private var logitsRows = 0

    public init(model: CausalLM, tokenizer: BPETokenizer, maxBatch: Int = 64, prefillChunk: Int = 512) {
        self.model = model
        self.tokenizer = tokenizer
        self.maxBatch = maxBatch
        self.prefillChunk = prefillChunk
        logits = .allocate(capacity: 1)
    }
    deinit { logits.deallocate() }

    public var isIdle: Bool { waiting.isEmpty && active.isEmpty }
    public var activeCount: Int { active.count }
    public var waitingCount: Int { waiting.count }

    /// Queues a request; `onEvent` is called from `step()`.
    @discardableResult
    public func add(_ request: GenerationRequest, onEvent: @escaping (GenerationEvent) -> Void) -> Int {
        nextID += 1
        let ctx = model.config.contextLength
        let capacity = min(ctx, max(1, request.prompt.count + max(0, request.maxNewTokens)))
        let s = Sequence(id: nextID, request: request, cache: KVCache(config: model.config, capacity: capacity), onEvent: onEvent)
        if request.prompt.isEmpty {
            s.finish = .error; s.errorText = "empty prompt"
            finish(s)
        } else if request.prompt.count >= ctx {
            s.finish = .context; s.errorText = "prompt of \(request.prompt.count) tokens does not fit the model's context of \(ctx)"
            finish(s)
        } else if request.maxNewTokens <= 0 {
            s.finish = .length
            finish(s)
        } else {
            waiting.append(s)
        }
        return nextID
    }

    /// Runs until every queued and active sequence has finished.
    public func runUntilIdle() throws {
        while !isIdle { try step() }
    }

    /// One forward pass over the batch.
    public func step() throws {
        while active.count < maxBatch, !waiting.isEmpty { active.append(waiting.removeFirst()) }
        if active.isEmpty { return }
        var segments: [DecoderSegment] = []
        var owners: [Sequence] = []
        var budget = prefillChunk
        for s in active {
            if s.prefilled < s.request.prompt.count {
                // Prefill (possibly a chunk). At least one chunk per step so nobody starves.
                if budget <= 0 && !segments.isEmpty { continue }
                let n = min(s.request.prompt.count - s.prefilled, budget > 0 ? budget : prefillChunk)
                let toks = Array(s.request.prompt[s.prefilled..<(s.prefilled + n)])
                s.prefilled += n
                budget -= n
                let done = s.prefilled == s.request.prompt.count
                segments.append(DecoderSegment(cache: s.cache, tokens: toks, wantsLogits: done))
                if done { owners.append(s) }
            } else if let t = s.pendingToken {
                segments.append(DecoderSegment(cache: s.cache, tokens: [t]))
                owners.append(s)
            }
        }
        let V = model.config.vocabulary
        if owners.count > logitsRows {
            logits.deallocate()
            logitsRows = max(owners.count, 8)
            logits = .allocate(capacity: logitsRows * V)
        }
        do {
            try model.forward(segments, logits: logits)
        } catch {
            // A model error fails every sequence in this step, not the scheduler.
            for seg in segments {
                if let s = active.first(where: { $0.cache === seg.cache }) { s.finish = .error; s.errorText = "\(error)" }
            }
            sweep()
            return
        }
        for (i, s) in owners.enumerated() {
            let row = logits + i * V
            let t = s.sampler.sample(row, vocabulary: V, history: s.history)
            accept(s, token: t)
        }
        sweep()
    }

    private func accept(_ s: Sequence, token t: Int) {
        if s.request.stopTokens.contains(t) {
            s.finish = .stop
            return
        }
        s.generated.append(t)
        s.history.append(t)
        let piece = s.decoder.push(tokenizer.bytes(of: t))
        s.text += piece
        if !s.request.stopStrings.isEmpty, let cut = stopMatch(s) {
            s.text = String(s.text[..<cut])
            s.finish = .stop
            s.cutAtStopString = true
            return
        }
        emitSafeText(s, final: false)
        if s.generated.count >= s.request.maxNewTokens { s.finish = .length; return }
        if s.cache.remaining < 1 { s.finish = .context; return }
        s.pendingToken = t
    }

    /// Earliest stop-string match in the not-yet-emitted region.
    private func stopMatch(_ s: Sequence) -> String.Index? {
        let maxLen = s.request.stopStrings.map(\.count).max() ?? 0
        let startOffset = max(0, s.emitted - maxLen)
        let from = s.text.index(s.text.startIndex, offsetBy: startOffset, limitedBy: s.text.endIndex) ?? s.text.endIndex
        var best: String.Index?
        for stop in s.request.stopStrings where !stop.isEmpty {
            if let r = s.text.range(of: stop, range: from..<s.text.endIndex), best == nil || r.lowerBound < best! { best = r.lowerBound }
        }
        return best
    }

    /// Reports text that can no longer turn out to be part of a stop string.
    private func emitSafeText(_ s: Sequence, final: Bool) {
        var safeEnd = s.text.count
        if !final {
            // Hold back the longest suffix that is a prefix of some stop string.
            var hold = 0
            for stop in s.request.stopStrings where !stop.isEmpty {
                var k = min(stop.count - 1, s.text.count)
                while k > hold {
                    if s.text.hasSuffix(stop.prefix(k)) { hold = k; break }
                    k -= 1
                }
            }
            safeEnd -= hold
        }
        if safeEnd > s.emitted {
            let a = s.text.index(s.text.startIndex, offsetBy: s.emitted)
            let b = s.text.index(s.text.startIndex, offsetBy: safeEnd)
            s.emitted = safeEnd
            s.onEvent(.text(String(s.text[a..<b])))
        }
    }

    private func finish(_ s: Sequence) {
        if !s.cutAtStopString { s.text += s.decoder.flush() }
        emitSafeText(s, final: true)
        s.onEvent(.done(GenerationResult(text: s.text, tokens: s.generated, promptTokens: s.request.prompt.count,
                                         finishReason: s.finish ?? .error, error: s.errorText)))
    }

    private func sweep() {
        var keep: [Sequence] = []
        for s in active {
            if s.finish != nil { finish(s) } else { keep.append(s) }
        }
        active = keep
    }
}
