import AlignersEngine
import AlignersCore
import Foundation
import AlignersKernels

/// Trains an `InspectorHead` with Adam (decoupled weight decay), weighted binary cross-entropy
/// (weights balance labels and sources), early stopping on validation ROC-AUC, a fixed seed,
/// then Platt scaling on the validation split.
public struct InspectorTrainer {
    public struct Options: Codable, Sendable {
        public var hidden = 256
        public var learningRate: Float = 2e-4
        public var weightDecay: Float = 5e-2
        public var batchSize = 64
        public var maxEpochs = 60
        public var patience = 8
        public var seed: UInt64 = 20240
        /// How sources are balanced: "equal" (each source the same total weight), "sqrt", "none".
        public var sourceBalance = "sqrt"
        public init() {}
    }

    public struct EpochReport: Sendable {
        public var epoch: Int
        public var trainLoss: Double
        public var valid: InspectorMetrics
        public var best: Bool
    }

    public var options: Options
    public init(options: Options = Options()) { self.options = options }

    /// Per-example weights: labels balanced within each source, sources balanced per `sourceBalance`;
    /// mean weight 1.
    public static func weights(labels: [Int], sources: [String], balance: String) -> [Float] {
        var counts: [String: [Int]] = [:]
        for (y, s) in zip(labels, sources) { counts[s, default: [0, 0]][y] += 1 }
        var w = [Float](repeating: 1, count: labels.count)
        for i in labels.indices {
            let c = counts[sources[i]]!
            let srcTotal = Float(c[0] + c[1])
            let sourceWeight: Float
            switch balance {
            case "equal": sourceWeight = 1 / srcTotal
            case "sqrt": sourceWeight = 1 / srcTotal.squareRoot()
            default: sourceWeight = 1
            }
            // Label balance inside a source: each label gets half of the source's mass.
            w[i] = sourceWeight * srcTotal / (2 * Float(c[labels[i]]))
        }
        let mean = w.reduce(0, +) / Float(max(w.count, 1))
        return w.map { $0 / mean }
    }

    public func train(x: [[Float]], labels: [Int], weights: [Float],
                      validX: [[Float]], validLabels: [Int], validPairs: [(Int, Int)]? = nil,
                      report: (EpochReport) -> Void) -> InspectorHead {
        let d = x.first?.count ?? 0
        let n = x.count
        var head = InspectorHead(inputDim: d, hidden: options.hidden, seed: options.seed)
        // Standardisation from the training split.
        for c in 0..<d {
            var s = 0.0, s2 = 0.0
            for r in x { s += Double(r[c]); s2 += Double(r[c]) * Double(r[c]) }
            let m = s / Double(n)
            head.mean[c] = Float(m)
            head.std[c] = Float(max((s2 / Double(n) - m * m), 1e-12).squareRoot()) + 1e-6
        }
        var flat = [Float](); flat.reserveCapacity(n * d)
        for r in x { flat.append(contentsOf: head.standardize(r)) }
        var vflat = [Float](); vflat.reserveCapacity(validX.count * d)
        for r in validX { vflat.append(contentsOf: head.standardize(r)) }

        let h = options.hidden
        let bs = options.batchSize
        var adam = Adam(sizes: [head.w1.count, head.b1.count, head.w2.count, 1], lr: options.learningRate, wd: options.weightDecay)
        var rng = SplitMix64(seed: options.seed ^ 0x5eed)
        var order = Array(0..<n)
        var best = head
        var bestAUC = -1.0, bestLoss = Double.infinity
        var sinceBest = 0
        let xb = UnsafeMutablePointer<Float>.allocate(capacity: bs * d); defer { xb.deallocate() }
        let hb = UnsafeMutablePointer<Float>.allocate(capacity: bs * max(h, 1)); defer { hb.deallocate() }
        var gw1 = [Float](repeating: 0, count: head.w1.count), gb1 = [Float](repeating: 0, count: head.b1.count)
        var gw2 = [Float](repeating: 0, count: head.w2.count)

        for epoch in 1...options.maxEpochs {
            order.shuffle(using: &rng)
            var lossSum = 0.0, wSum = 0.0
            var start = 0
            while start < n {
                let m = min(bs, n - start)
                var yb = [Float](repeating: 0, count: m), wb = [Float](repeating: 0, count: m)
                flat.withUnsafeBufferPointer { f in
                    for k in 0..<m {
                        let i = order[start + k]
                        (xb + k * d).update(from: f.baseAddress! + i * d, count: d)
                        yb[k] = Float(labels[i]); wb[k] = weights[i]
                    }
                }
                let z = head.logits(xb, n: m, hiddenOut: h > 0 ? hb : nil)
                let wTot = wb.reduce(0, +)
                // dL/dz for weighted mean BCE.
                var dz = [Float](repeating: 0, count: m)
                for k in 0..<m {
                    let p = sigmoid(z[k])
                    dz[k] = wb[k] * (p - yb[k]) / wTot
                    let pc = min(max(Double(p), 1e-7), 1 - 1e-7)
                    lossSum -= Double(wb[k]) * (yb[k] == 1 ? Foundation.log(pc) : Foundation.log(1 - pc))
                    wSum += Double(wb[k])
                }
                let gb2 = dz.reduce(0, +)
                if h == 0 {
                    for c in 0..<d { gw2[c] = 0 }
                    for k in 0..<m { let r = xb + k * d; for c in 0..<d { gw2[c] += dz[k] * r[c] } }
                } else {
                    // gw2 = H^T dz; dH = dz w2^T masked by ReLU; gw1 = dH^T X; gb1 = sum dH.
                    for j in 0..<h { gw2[j] = 0; gb1[j] = 0 }
                    for k in 0..<m { for j in 0..<h { gw2[j] += hb[k * h + j] * dz[k] } }
                    for k in 0..<m {
                        for j in 0..<h {
                            let a = hb[k * h + j]
                            let g = a > 0 ? dz[k] * head.w2[j] : 0
                            hb[k * h + j] = g
                            gb1[j] += g
                        }
                    }
                    gw1.withUnsafeMutableBufferPointer { g in
                        BLAS.gemm(transposeA: true, transposeB: false, m: h, n: d, k: m,
                                  a: hb, lda: h, b: xb, ldb: d, c: g.baseAddress!, ldc: d)
                    }
                }
                adam.t += 1
                adam.step(0, &head.w1, gw1, decay: true)
                adam.step(1, &head.b1, gb1, decay: false)
                adam.step(2, &head.w2, gw2, decay: true)
                var b2 = [head.b2]
                adam.step(3, &b2, [gb2], decay: false)
                head.b2 = b2[0]
                start += m
            }
            let vz = vflat.withUnsafeBufferPointer { head.logits($0.baseAddress!, n: validX.count, hiddenOut: nil) }
            let vm = InspectorMetrics(scores: vz.map { Double(sigmoid($0)) }, labels: validLabels, pairs: validPairs)
            let improved = vm.rocAUC > bestAUC + 1e-4 || (abs(vm.rocAUC - bestAUC) <= 1e-4 && vm.logLoss < bestLoss)
            if improved { best = head; bestAUC = vm.rocAUC; bestLoss = vm.logLoss; sinceBest = 0 } else { sinceBest += 1 }
            report(EpochReport(epoch: epoch, trainLoss: lossSum / max(wSum, 1e-9), valid: vm, best: improved))
            if sinceBest >= options.patience { break }
        }
        // Platt scaling on validation logits.
        let vz = vflat.withUnsafeBufferPointer { best.logits($0.baseAddress!, n: validX.count, hiddenOut: nil) }
        (best.plattA, best.plattB) = PlattScaling.fit(logits: vz, labels: validLabels)
        return best
    }
}

struct Adam {
    var m: [[Float]], v: [[Float]]
    var t = 0
    let lr: Float, wd: Float
    let b1: Float = 0.9, b2: Float = 0.999, eps: Float = 1e-8
    init(sizes: [Int], lr: Float, wd: Float) {
        m = sizes.map { [Float](repeating: 0, count: $0) }
        v = m
        self.lr = lr; self.wd = wd
    }
    mutating func step(_ k: Int, _ p: inout [Float], _ g: [Float], decay: Bool) {
        let c1 = 1 - Foundation.pow(b1, Float(t)), c2 = 1 - Foundation.pow(b2, Float(t))
        let lr = self.lr, wd = self.wd, b1 = self.b1, b2 = self.b2, eps = self.eps
        m[k].withUnsafeMutableBufferPointer { mm in
            v[k].withUnsafeMutableBufferPointer { vv in
                for i in 0..<p.count {
                    mm[i] = b1 * mm[i] + (1 - b1) * g[i]
                    vv[i] = b2 * vv[i] + (1 - b2) * g[i] * g[i]
                    let upd = (mm[i] / c1) / ((vv[i] / c2).squareRoot() + eps)
                    p[i] -= lr * (upd + (decay ? wd * p[i] : 0))
                }
            }
        }
    }
}

/// Platt scaling: p = σ(a·z + b) fitted to labelled logits by gradient descent on the (weighted) log loss.
public enum PlattScaling {
    public static func fit(logits: [Float], labels: [Int], weights: [Double]? = nil, iterations: Int = 2000) -> (a: Float, b: Float) {
        let w = weights ?? [Double](repeating: 1, count: logits.count)
        let total = max(w.reduce(0, +), 1e-12)
        var a: Double = 1, b: Double = 0
        for _ in 0..<iterations {
            var ga = 0.0, gb = 0.0
            for i in logits.indices where w[i] > 0 {
                let z = Double(logits[i]), p = 1 / (1 + Foundation.exp(-(a * z + b)))
                ga += w[i] * (p - Double(labels[i])) * z
                gb += w[i] * (p - Double(labels[i]))
            }
            a -= 0.5 * ga / total
            b -= 0.5 * gb / total
        }
        return (Float(a), Float(b))
    }
}
