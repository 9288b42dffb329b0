import AlignersCore
import Foundation

/// How the next token is chosen. `temperature` 0 is greedy (argmax); otherwise repetition penalty,
/// then top-k, temperature, top-p, and a draw from a seeded generator.
public struct SamplingParameters: Sendable, Hashable, Codable {
    public var temperature: Float = 0
    /// 0 = no top-k cut.
    public var topK: Int = 40
    /// 1 = no nucleus cut.
    public var topP: Float = 1
    /// 1 = off. llama.cpp's rule: a positive logit is divided by it, a negative one multiplied.
    public var repeatPenalty: Float = 1
    /// How many of the most recent tokens (prompt included) the penalty looks at.
    public var repeatLastN: Int = 64
    /// nil: seeded from the system's random source.
    public var seed: UInt64?

    public init(temperature: Float = 0, topK: Int = 40, topP: Float = 1, repeatPenalty: Float = 1,
                repeatLastN: Int = 64, seed: UInt64? = nil) {
        self.temperature = temperature
        self.topK = topK
        self.topP = topP
        self.repeatPenalty = repeatPenalty
        self.repeatLastN = repeatLastN
        self.seed = seed
    }

    public static let greedy = SamplingParameters()
}

/// xoshiro256** seeded through SplitMix64: reproducible across platforms.
public struct SeededGenerator: RandomNumberGenerator, Sendable {
    private var s: (UInt64, UInt64, UInt64, UInt64)
    public init(seed: UInt64) {
        var g = SplitMix64(seed: seed)
        s = (g.next(), g.next(), g.next(), g.next())
    }
    public mutating func next() -> UInt64 {
        let result = ((s.1 &* 5) << 7 | (s.1 &* 5) >> 57) &* 9
        let t = s.1 << 17
        s.2 ^= s.0; s.3 ^= s.1; s.1 ^= s.2; s.0 ^= s.3
        s.2 ^= t
        s.3 = s.3 << 45 | s.3 >> 19
        return result
    }
    /// Uniform in [0, 1).
    public mutating func nextUnit() -> Double { Double(next() >> 11) * 0x1.0p-53 }
}

/// Picks tokens from logits; one per sequence (it owns the sequence's random state).
public struct Sampler: Sendable {
    public let parameters: SamplingParameters
    private var rng: SeededGenerator

    public init(_ parameters: SamplingParameters) {
        self.parameters = parameters
        rng = SeededGenerator(seed: parameters.seed ?? UInt64.random(in: 0...UInt64.max))
    }

    /// Chooses the next token. `logits` (vocabulary floats) may be modified; `history` is the
    /// sequence so far (prompt and generated tokens), for the repetition penalty.
    public mutating func sample(_ logits: UnsafeMutablePointer<Float>, vocabulary n: Int, history: [Int]) -> Int {
        let p = parameters
        if p.repeatPenalty != 1 && p.repeatLastN > 0 && !history.isEmpty {
            var seen = Set<Int>()
            for t in history.suffix(p.repeatLastN) where t >= 0 && t < n && seen.insert(t).inserted {
                logits[t] = logits[t] > 0 ? logits[t] / p.repeatPenalty : logits[t] * p.repeatPenalty
            }
        }
        if p.temperature <= 0 { return argmax(logits, n) }

        // Candidates: the top k (or all), best first.
        var cand: [(id: Int, logit: Float)]
        if p.topK > 0 && p.topK < n {
            cand = topK(logits, n, p.topK)
        } else {
            cand = (0..<n).map { ($0, logits[$0]) }
            cand.sort { $0.logit > $1.logit }
        }
        let inv = 1 / p.temperature
        let m = cand[0].logit
        var probs = cand.map { Double(exp(($0.logit - m) * inv)) }
        var total = probs.reduce(0, +)
        if p.topP < 1 {
            var acc = 0.0, keep = probs.count
            for (i, q) in probs.enumerated() {
                acc += q / total
                if acc >= Double(p.topP) { keep = i + 1; break }
            }
            probs.removeLast(probs.count - keep)
            total = probs.reduce(0, +)
        }
        var r = rng.nextUnit() * total
        for (i, q) in probs.enumerated() {
            r -= q
            if r < 0 { return cand[i].id }
        }
        return cand[probs.count - 1].id
    }

    private func argmax(_ l: UnsafeMutablePointer<Float>, _ n: Int) -> Int {
        var best = 0
        var bv = l[0]
        for i in 1..<n where l[i] > bv { bv = l[i]; best = i }
        return best
    }

    /// The k largest, sorted descending (insertion into a small sorted buffer).
    private func topK(_ l: UnsafeMutablePointer<Float>, _ n: Int, _ k: Int) -> [(id: Int, logit: Float)] {
        var out: [(id: Int, logit: Float)] = []
        out.reserveCapacity(k + 1)
        var floor = -Float.infinity
        for i in 0..<n {
            let v = l[i]
            if out.count == k && v <= floor { continue }
            var j = out.count
            while j > 0 && out[j - 1].logit < v { j -= 1 }
            out.insert((i, v), at: j)
            if out.count > k { out.removeLast() }
            if out.count == k { floor = out[k - 1].logit }
        }
        return out
    }
}
