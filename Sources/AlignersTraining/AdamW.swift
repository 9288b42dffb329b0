import Foundation

/// AdamW as PyTorch defines it (decoupled weight decay: p ← p − lr·λ·p, then the Adam step with
/// bias-corrected moments), over one flat parameter vector.
public struct AdamW: Sendable, Codable {
    public var beta1: Float = 0.9
    public var beta2: Float = 0.999
    public var epsilon: Float = 1e-8
    public var weightDecay: Float
    /// Steps taken (the bias correction's t).
    public private(set) var step = 0
    public private(set) var m: [Float]
    public private(set) var v: [Float]

    public init(count: Int, weightDecay: Float = 0) {
        self.weightDecay = weightDecay
        m = [Float](repeating: 0, count: count)
        v = [Float](repeating: 0, count: count)
    }

    /// Restores a saved state (a checkpoint's moments and step count).
    public init(count: Int, weightDecay: Float, m: [Float], v: [Float], step: Int) {
        precondition(m.count == count && v.count == count)
        self.weightDecay = weightDecay
        self.m = m
        self.v = v
        self.step = step
    }

    public mutating func update(_ p: inout [Float], gradients g: [Float], learningRate lr: Float) {
        precondition(p.count == m.count && g.count == m.count)
        step += 1
        let b1 = beta1, b2 = beta2, eps = epsilon, decay = 1 - lr * weightDecay
        let c1 = 1 - Float(pow(Double(b1), Double(step))), c2 = 1 - Float(pow(Double(b2), Double(step)))
        let stepSize = lr / c1, c2s = c2.squareRoot()
        for i in p.indices {
            let gi = g[i]
            m[i] = b1 * m[i] + (1 - b1) * gi
            v[i] = b2 * v[i] + (1 - b2) * gi * gi
            p[i] = p[i] * decay - stepSize * m[i] / (v[i].squareRoot() / c2s + eps)
        }
    }
}

/// Linear warm-up to the peak rate, then cosine decay to `floor`·peak at the last step
/// (Hugging Face's `get_cosine_schedule_with_warmup` when floor is 0).
public struct LearningRateSchedule: Sendable, Codable, Equatable {
    public var peak: Float
    public var warmupSteps: Int
    public var totalSteps: Int
    public var floor: Float

    public init(peak: Float, warmupSteps: Int, totalSteps: Int, floor: Float = 0) {
        self.peak = peak
        self.warmupSteps = warmupSteps
        self.totalSteps = totalSteps
        self.floor = floor
    }

    /// The rate for step `s` (0-based: the rate the (s+1)-th update uses).
    public func rate(at s: Int) -> Float {
        if s < warmupSteps { return peak * Float(s + 1) / Float(max(1, warmupSteps)) }
        let progress = Double(s - warmupSteps) / Double(max(1, totalSteps - warmupSteps))
        let cosine = Float(0.5 * (1 + cos(Double.pi * min(1, progress))))
        return peak * (floor + (1 - floor) * cosine)
    }
}

/// Scales `g` so its L2 norm is at most `maxNorm`; returns the norm before clipping.
@discardableResult
public func clipGradientNorm(_ g: inout [Float], maxNorm: Float) -> Float {
    var ss = 0.0
    for x in g { ss += Double(x) * Double(x) }
    let norm = Float(ss.squareRoot())
    if maxNorm > 0, norm > maxNorm {
        let s = maxNorm / (norm + 1e-6)
        for i in g.indices { g[i] *= s }
    }
    return norm
}
