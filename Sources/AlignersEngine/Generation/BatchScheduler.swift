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
    /// A LoRA adapter over the model's weights (nil: the base model).
    public var adapter: LoRAAdapter?

    public init(prompt: [Int], maxNewTokens: Int = 256, sampling: SamplingParameters = .greedy,
                stopStrings: [String] = [], stopTokens: Set<Int> = [], adapter: LoRAAdapter? = nil) {
        self.prompt = prompt
        self.adapter = adapter
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
        /// Positions the KV cache must hold (prompt + new tokens, within the model's context).
        let capacity: Int
        /// Given when the sequence joins the batch, taken back when it leaves.
        var cache: KVCache!
        var sampler: Sampler
        let onEvent: (GenerationEvent) -> Void
        var history: [Int]
        var generated: [Int] = []
        var prefilled = 0
        var reusedPrefix = false
        var pendingToken: Int?
        var decoder = StreamingDecoder()
        var text = ""
        var emitted = 0  // characters of `text` already reported
        var finish: FinishReason?
        var errorText: String?
        var cutAtStopString = false
        init(id: Int, request: GenerationRequest, capacity: Int, onEvent: @escaping (GenerationEvent) -> Void) {
            self.id = id
            self.request = request
            self.capacity = capacity
            self.onEvent = onEvent
            sampler = Sampler(request.sampling)
            history = request.prompt
        }
    }

    /// Prompts' keys and values kept after their prefill, so a later prompt that starts with the same
    /// tokens (an aligner's principles and demonstrations, the same for every sample) reads them in
    /// place (`KVCache.share`) instead of computing them again. At most `prefixSnapshots` are kept, least recently used first out.
    public var prefixSnapshots = 4
    /// Shorter common prefixes are recomputed (a copy would save too little).
    public var minimumSharedPrefix = 32
    /// Prompt tokens taken from snapshots instead of computed, since the scheduler started.
    public private(set) var reusedPrefixTokens = 0
    private var snapshots: [(tokens: [Int], adapter: LoRAAdapter?, cache: KVCache)] = []
    /// KV caches of finished sequences, for the next ones: a fresh cache is fresh pages, and the
    /// kernel zeroing them took a tenth of batched decoding at 800-token prompts. Caches held,
    /// in use or spare, stay within `maxBatch`.
    private var spareCaches: [KVCache] = []

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
    /// Sequences waiting or still prefilling their prompt.
    public var prefillingCount: Int { waiting.count + active.filter { $0.prefilled < $0.request.prompt.count }.count }

    /// Queues a request; `onEvent` is called from `step()`.
    @discardableResult
    public func add(_ request: GenerationRequest, onEvent: @escaping (GenerationEvent) -> Void) -> Int {
        nextID += 1
        let ctx = model.config.contextLength
        let capacity = min(ctx, max(1, request.prompt.count + max(0, request.maxNewTokens)))
        let s = Sequence(id: nextID, request: request, capacity: capacity, onEvent: onEvent)
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
        while active.count < maxBatch, !waiting.isEmpty {
            let s = waiting.removeFirst()
            s.cache = takeCache(s.capacity)
            active.append(s)
        }
        if active.isEmpty { return }
        var segments: [DecoderSegment] = []
        var owners: [Sequence] = []
        var budget = prefillChunk
        for s in active where s.prefilled == 0 && !s.request.prompt.isEmpty { reusePrefix(s) }
        for s in active {
            if s.prefilled < s.request.prompt.count {
                // Prefill (possibly a chunk). At least one chunk per step so nobody starves.
                if budget <= 0 && !segments.isEmpty { continue }
                let n = min(s.request.prompt.count - s.prefilled, budget > 0 ? budget : prefillChunk)
                let toks = Array(s.request.prompt[s.prefilled..<(s.prefilled + n)])
                s.prefilled += n
                budget -= n
                let done = s.prefilled == s.request.prompt.count
                segments.append(DecoderSegment(cache: s.cache, tokens: toks, wantsLogits: done, adapter: s.request.adapter))
                if done { owners.append(s) }
            } else if let t = s.pendingToken {
                segments.append(DecoderSegment(cache: s.cache, tokens: [t], adapter: s.request.adapter))
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
        for s in owners where s.generated.isEmpty && s.pendingToken == nil { snapshot(s) }
        for (i, s) in owners.enumerated() {
            let row = logits + i * V
            let t = s.sampler.sample(row, vocabulary: V, history: s.history)
            accept(s, token: t)
        }
        sweep()
    }

    /// Starts `s` from the snapshot sharing the longest prefix with its prompt (never the whole
    /// prompt: the last token is computed, for its logits).
    private func reusePrefix(_ s: Sequence) {
        guard prefixSnapshots > 0 else { return }
        let prompt = s.request.prompt
        var best = (index: -1, length: 0)
        for (i, snap) in snapshots.enumerated() where snap.adapter === s.request.adapter {
            let n = min(snap.tokens.count, prompt.count - 1)
            var k = 0
            while k < n && snap.tokens[k] == prompt[k] { k += 1 }
            if k > best.length { best = (i, k) }
        }
        guard best.index >= 0, best.length >= minimumSharedPrefix, best.length <= s.cache.capacity else { return }
        let snap = snapshots.remove(at: best.index)
        snapshots.append(snap)   // most recently used last
        s.cache.share(snap.cache, count: best.length)
        s.prefilled = best.length
        s.reusedPrefix = true
        reusedPrefixTokens += best.length
    }

    /// Keeps the keys and values of a prompt that has just been prefilled.
    private func snapshot(_ s: Sequence) {
        // A prompt that started from a snapshot would mostly duplicate it (and does not hold it).
        guard prefixSnapshots > 0, !s.reusedPrefix, s.request.prompt.count > minimumSharedPrefix else { return }
        let prompt = s.request.prompt
        // A prompt that a kept snapshot already covers adds nothing.
        if snapshots.contains(where: { $0.adapter === s.request.adapter && $0.tokens.count >= prompt.count
                                       && Array($0.tokens.prefix(prompt.count)) == prompt }) { return }
        let copy = KVCache(config: model.config, capacity: prompt.count)
        copy.copyPrefix(from: s.cache, count: prompt.count)
        snapshots.append((prompt, s.request.adapter, copy))
        if snapshots.count > prefixSnapshots { snapshots.removeFirst() }
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
            if s.finish != nil {
                finish(s)
                s.cache.reset()  // also lets go of a shared snapshot
                spareCaches.append(s.cache)
                s.cache = nil
            } else {
                keep.append(s)
            }
        }
        active = keep
    }

    /// The smallest spare cache that holds `capacity` positions, or a new one (rounded up to 256
    /// positions so that it fits later sequences of similar length).
    private func takeCache(_ capacity: Int) -> KVCache {
        if let i = spareCaches.indices.filter({ spareCaches[$0].capacity >= capacity })
            .min(by: { spareCaches[$0].capacity < spareCaches[$1].capacity }) {
            return spareCaches.remove(at: i)
        }
        if active.count + spareCaches.count >= maxBatch, !spareCaches.isEmpty { spareCaches.removeFirst() }
        return KVCache(config: model.config, capacity: min(model.config.contextLength, (capacity + 255) / 256 * 256))
    }
}

extension KVCache {
    /// Copies the first `count` positions of every layer from `other` (which holds its own) and
    /// makes them this cache's contents.
    func copyPrefix(from other: KVCache, count n: Int) {
        precondition(n <= capacity && n <= other.count && other.shared == nil && other.kvDim == kvDim && other.layers == layers)
        for layer in 0..<layers {
            k(layer, 0).update(from: other.k(layer, 0), count: n * kvDim)
            v(layer, 0).update(from: other.v(layer, 0), count: n * kvDim)
        }
        count = n
    }
}
