import AlignersEngine
import AlignersCore
import Foundation
import AlignersKernels

/// A small classifier over frozen-encoder features: standardise, then logistic regression
/// (`hidden == 0`) or one ReLU hidden layer, then Platt scaling fitted on the validation split.
public struct InspectorHead: Sendable {
    public var inputDim: Int
    public var hidden: Int
    public var mean: [Float], std: [Float]
    public var w1: [Float], b1: [Float]   // hidden × input (empty when hidden == 0)
    public var w2: [Float], b2: Float     // (hidden or input)
    public var plattA: Float = 1, plattB: Float = 0

    /// Head features from raw featurizer output [pair, pair_x, pair_y, y_alone] (recipe v1):
    /// the four, plus pair_x ⊙ pair_y and pair_x ⊙ y_alone.
    public static func transform(_ raw: [Float], hidden h: Int) -> [Float] {
        transform(raw, views: FeatureView.v1(), hidden: h)
    }

    /// Head features for any view list: the raw views, then for each `x` view the elementwise product
    /// with the `y` view of the same layer and pool (when present), then likewise with the `response` view.
    public static func transform(_ raw: [Float], views: [FeatureView], hidden h: Int) -> [Float] {
        var f = raw
        for other in [FeatureView.Segment.y, .response] {
            for (i, v) in views.enumerated() where v.segment == .x {
                guard let j = views.firstIndex(of: FeatureView(other, v.layer, v.pool)) else { continue }
                for c in 0..<h { f.append(raw[i * h + c] * raw[j * h + c]) }
            }
        }
        return f
    }

    /// Length of `transform(_:views:hidden:)`'s output.
    public static func transformedDimension(views: [FeatureView], hidden h: Int) -> Int {
        transform([Float](repeating: 0, count: views.count * h), views: views, hidden: h).count
    }

    public init(inputDim: Int, hidden: Int, seed: UInt64) {
        self.inputDim = inputDim
        self.hidden = hidden
        mean = .init(repeating: 0, count: inputDim)
        std = .init(repeating: 1, count: inputDim)
        var rng = SplitMix64(seed: seed)
        if hidden > 0 {
            let s = (2 / Float(inputDim)).squareRoot()
            w1 = (0..<(hidden * inputDim)).map { _ in rng.normal() * s }
            b1 = .init(repeating: 0, count: hidden)
            let s2 = (1 / Float(hidden)).squareRoot()
            w2 = (0..<hidden).map { _ in rng.normal() * s2 }
        } else {
            w1 = []; b1 = []
            w2 = .init(repeating: 0, count: inputDim)
        }
        b2 = 0
    }

    /// Logits (before Platt scaling) for `n` standardised rows of `x`.
    func logits(_ x: UnsafePointer<Float>, n: Int, hiddenOut: UnsafeMutablePointer<Float>?) -> [Float] {
        var out = [Float](repeating: b2, count: n)
        let d = inputDim
        if hidden == 0 {
            w2.withUnsafeBufferPointer { w in
                for i in 0..<n {
                    var s: Float = 0
                    let row = x + i * d
                    for c in 0..<d { s += row[c] * w[c] }
                    out[i] += s
                }
            }
            return out
        }
        let hbuf = hiddenOut ?? UnsafeMutablePointer<Float>.allocate(capacity: n * hidden)
        defer { if hiddenOut == nil { hbuf.deallocate() } }
        for i in 0..<n { for j in 0..<hidden { hbuf[i * hidden + j] = b1[j] } }
        w1.withUnsafeBufferPointer { w in
            BLAS.gemm(transposeA: false, transposeB: true, m: n, n: hidden, k: d, a: x, lda: d, b: w.baseAddress!, ldb: d, c: hbuf, ldc: hidden, beta: 1)
        }
        for i in 0..<(n * hidden) where hbuf[i] < 0 { hbuf[i] = 0 }
        for i in 0..<n {
            var s: Float = 0
            for j in 0..<hidden { s += hbuf[i * hidden + j] * w2[j] }
            out[i] += s
        }
        return out
    }

    public func standardize(_ f: [Float]) -> [Float] {
        var o = f
        for c in 0..<inputDim { o[c] = (f[c] - mean[c]) / std[c] }
        return o
    }

    /// Calibrated probabilities of head-feature rows (already transformed, not standardised).
    public func probabilities(_ features: [[Float]]) -> [Double] {
        if features.isEmpty { return [] }
        var x = [Float](); x.reserveCapacity(features.count * inputDim)
        for f in features { x.append(contentsOf: standardize(f)) }
        let z = x.withUnsafeBufferPointer { logits($0.baseAddress!, n: features.count, hiddenOut: nil) }
        return z.map { Double(sigmoid(plattA * $0 + plattB)) }
    }

    // MARK: persistence

    public func tensors() -> [SafetensorsWriter.Tensor] {
        var t: [SafetensorsWriter.Tensor] = [
            .init(name: "mean", shape: [inputDim], values: mean),
            .init(name: "std", shape: [inputDim], values: std),
            .init(name: "w2", shape: [w2.count], values: w2),
            .init(name: "b2", shape: [1], values: [b2]),
            .init(name: "platt", shape: [2], values: [plattA, plattB]),
        ]
        if hidden > 0 {
            t.append(.init(name: "w1", shape: [hidden, inputDim], values: w1))
            t.append(.init(name: "b1", shape: [hidden], values: b1))
        }
        return t
    }

    public init(file: SafetensorsFile) throws {
        let d = try file.check("mean", dtype: .f32).shape.first ?? 0
        inputDim = d
        mean = try file.floats("mean", shape: [d])
        std = try file.floats("std", shape: [d])
        if file.tensors["w1"] != nil {
            let h = try file.check("w1", dtype: .f32).shape.first ?? 0
            hidden = h
            w1 = try file.floats("w1", shape: [h, d])
            b1 = try file.floats("b1", shape: [h])
            w2 = try file.floats("w2", shape: [h])
        } else {
            hidden = 0; w1 = []; b1 = []
            w2 = try file.floats("w2", shape: [d])
        }
        b2 = try file.floats("b2", shape: [1])[0]
        let p = try file.floats("platt", shape: [2])
        plattA = p[0]; plattB = p[1]
    }
}

@inline(__always) func sigmoid(_ z: Float) -> Float { 1 / (1 + Foundation.exp(-z)) }


/// Binary-classifier metrics: accuracy and F1 at 0.5, ROC-AUC, expected calibration error
/// (10 equal-width bins), log loss, and, when rows are paired, how often the aligned answer
/// scores above the misaligned one.
public struct InspectorMetrics: Codable, Sendable, CustomStringConvertible {
    public var count: Int
    public var accuracy: Double
    public var rocAUC: Double
    public var f1: Double
    public var ece: Double
    public var logLoss: Double
    public var pairwiseAccuracy: Double?

    public init(scores: [Double], labels: [Int], pairs: [(Int, Int)]? = nil) {
        count = scores.count
        var tp = 0, fp = 0, fn = 0, correct = 0
        var ll = 0.0
        for (s, y) in zip(scores, labels) {
            let pred = s >= 0.5 ? 1 : 0
            if pred == y { correct += 1 }
            if pred == 1 && y == 1 { tp += 1 }
            if pred == 1 && y == 0 { fp += 1 }
            if pred == 0 && y == 1 { fn += 1 }
            let p = min(max(s, 1e-7), 1 - 1e-7)
            ll -= y == 1 ? Foundation.log(p) : Foundation.log(1 - p)
        }
        accuracy = count > 0 ? Double(correct) / Double(count) : 0
        f1 = tp > 0 ? 2 * Double(tp) / Double(2 * tp + fp + fn) : 0
        logLoss = count > 0 ? ll / Double(count) : 0
        rocAUC = Self.auc(scores, labels)
        // ECE, 10 bins.
        var binCount = [Int](repeating: 0, count: 10), binConf = [Double](repeating: 0, count: 10), binPos = [Double](repeating: 0, count: 10)
        for (s, y) in zip(scores, labels) {
            let b = min(9, max(0, Int(s * 10)))
            binCount[b] += 1; binConf[b] += s; binPos[b] += Double(y)
        }
        var e = 0.0
        for b in 0..<10 where binCount[b] > 0 { e += abs(binConf[b] - binPos[b]) / Double(max(count, 1)) }
        ece = e
        if let pairs, !pairs.isEmpty {
            let wins = pairs.reduce(0.0) { acc, p in
                acc + (scores[p.0] > scores[p.1] ? 1 : scores[p.0] == scores[p.1] ? 0.5 : 0)
            }
            pairwiseAccuracy = wins / Double(pairs.count)
        }
    }

    /// Mann–Whitney ROC-AUC with ties counted half.
    static func auc(_ scores: [Double], _ labels: [Int]) -> Double {
        let order = scores.indices.sorted { scores[$0] < scores[$1] }
        var rankSumPos = 0.0
        var i = 0
        while i < order.count {
            var j = i
            while j + 1 < order.count && scores[order[j + 1]] == scores[order[i]] { j += 1 }
            let avgRank = Double(i + j) / 2 + 1
            for k in i...j where labels[order[k]] == 1 { rankSumPos += avgRank }
            i = j + 1
        }
        let nPos = Double(labels.filter { $0 == 1 }.count), nNeg = Double(labels.count) - nPos
        guard nPos > 0, nNeg > 0 else { return .nan }
        return (rankSumPos - nPos * (nPos + 1) / 2) / (nPos * nNeg)
    }

    public var description: String {
        var s = String(format: "n=%d acc=%.4f auc=%.4f f1=%.4f ece=%.4f logloss=%.4f", count, accuracy, rocAUC, f1, ece, logLoss)
        if let p = pairwiseAccuracy { s += String(format: " pairwise=%.4f", p) }
        return s
    }
}
