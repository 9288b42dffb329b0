import AlignersCore
import AlignersKernels
import AlignersEngine
import AlignersSquadModels
import Foundation

/// A pairwise judge: which of two answers to the same conversation is better for one criterion.
///
/// It is a Bradley–Terry model, P(a ≻ b) = σ(w·(φ(x,a) − φ(x,b))), over the sentence embeddings
/// of the conversation `u` and of the answer `v`: φ = [v, u⊙v, length]. It shares the encoder
/// with the inspectors but not their view (they read `x [SEP] y` as one pair) nor their training
/// rows: judges are trained on the *valid* split, inspectors on *train*, and the judge's own
/// accuracy is measured on *test* pairs it never saw. No bias term, so swapping a and b gives
/// exactly 1 − P: there is no position bias to correct.
public struct PairwiseJudge: Sendable {
    public var criterion: String
    public var weights: [Float]
    public var recipe: String

    public static let lengthFeatures = 2
    public static func dimension(embedding d: Int) -> Int { 2 * d + lengthFeatures }

    public init(criterion: String, weights: [Float], recipe: String) {
        self.criterion = criterion
        self.weights = weights
        self.recipe = recipe
    }

    /// φ(x, y) from the conversation's and the answer's embeddings and the answer's length in word pieces.
    public static func features(conversation u: [Float], answer v: [Float], answerTokens n: Int) -> [Float] {
        var f = v
        f.reserveCapacity(2 * v.count + lengthFeatures)
        for i in v.indices { f.append(u[i] * v[i]) }
        // Length matters to every human and model judge; give it a smooth and a saturating form.
        f.append(Float(Foundation.log1p(Double(n)) / 8))
        f.append(Float(min(n, 512)) / 512)
        return f
    }

    /// w·φ: the answer's strength; only differences between answers to one conversation mean anything.
    public func strength(_ phi: [Float]) -> Float { dot(weights, phi) }

    /// P(a is better than b).
    public func preference(_ a: [Float], over b: [Float]) -> Double {
        1 / (1 + Foundation.exp(-Double(strength(a) - strength(b))))
    }
}

/// Fits a `PairwiseJudge` by Newton's method on the L2-regularised logistic loss of the pair
/// differences (convex: ~10 steps), choosing the L2 strength by k-fold cross-validation.
public enum PairwiseJudgeTrainer {
    public struct Fit: Sendable {
        public var weights: [Float]
        public var lambda: Double
        public var crossValidatedAccuracy: Double
    }

    /// `differences[i]` = φ(x, better) − φ(x, worse). Deterministic: folds are taken in order.
    public static func fit(differences: [[Float]], lambdas: [Double] = [1e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1],
                           folds: Int = 5) -> Fit {
        precondition(!differences.isEmpty, "no pairs to fit")
        var best = (lambda: lambdas[0], accuracy: -1.0)
        for lambda in lambdas {
            var correct = 0, total = 0
            for k in 0..<folds {
                let held = differences.indices.filter { $0 % folds == k }
                let train = differences.indices.filter { $0 % folds != k }.map { differences[$0] }
                guard !held.isEmpty, !train.isEmpty else { continue }
                let w = newton(train, lambda: lambda)
                for i in held where dot(w, differences[i]) > 0 { correct += 1 }
                total += held.count
            }
            let acc = total > 0 ? Double(correct) / Double(total) : 0
            if acc > best.accuracy + 1e-9 { best = (lambda, acc) }
        }
        return Fit(weights: newton(differences, lambda: best.lambda), lambda: best.lambda, crossValidatedAccuracy: best.accuracy)
    }

    /// Minimises Σ −log σ(w·dᵢ) + λ·n/2·|w|².
    public static func newton(_ rows: [[Float]], lambda: Double, steps: Int = 25) -> [Float] {
        let n = rows.count, d = rows[0].count
        var x = [Float](repeating: 0, count: n * d)
        for (i, r) in rows.enumerated() { for j in 0..<d { x[i * d + j] = r[j] } }
        var w = [Double](repeating: 0, count: d)
        let reg = lambda * Double(n)
        var scaled = [Float](repeating: 0, count: n * d)
        var hessian = [Float](repeating: 0, count: d * d)
        for _ in 0..<steps {
            var grad = w.map { reg * $0 }
            let wf = w.map(Float.init)
            for i in 0..<n {
                var z: Double = 0
                for j in 0..<d { z += Double(wf[j] * x[i * d + j]) }
                let p = 1 / (1 + Foundation.exp(-z))
                let s = Float((p * (1 - p)).squareRoot())
                for j in 0..<d {
                    grad[j] += (p - 1) * Double(x[i * d + j])
                    scaled[i * d + j] = s * x[i * d + j]
                }
            }
            // H = Xsᵀ Xs + λn I
            scaled.withUnsafeBufferPointer { s in
                hessian.withUnsafeMutableBufferPointer { h in
                    BLAS.gemm(transposeA: true, transposeB: false, m: d, n: d, k: n, a: s.baseAddress!, lda: d,
                              b: s.baseAddress!, ldb: d, c: h.baseAddress!, ldc: d)
                }
            }
            var h = hessian.map(Double.init)
            for j in 0..<d { h[j * d + j] += reg }
            guard let step = choleskySolve(&h, grad, d) else { break }
            var size: Double = 0
            for j in 0..<d { w[j] -= step[j]; size = max(size, abs(step[j])) }
            if size < 1e-7 { break }
        }
        return w.map(Float.init)
    }

    /// Solves A x = b for symmetric positive-definite A (overwritten by its Cholesky factor).
    static func choleskySolve(_ a: inout [Double], _ b: [Double], _ n: Int) -> [Double]? {
        for j in 0..<n {
            var s = a[j * n + j]
            for k in 0..<j { s -= a[j * n + k] * a[j * n + k] }
            guard s > 0 else { return nil }
            let l = s.squareRoot()
            a[j * n + j] = l
            for i in (j + 1)..<max(j + 1, n) {
                var t = a[i * n + j]
                for k in 0..<j { t -= a[i * n + k] * a[j * n + k] }
                a[i * n + j] = t / l
            }
        }
        var y = b
        for i in 0..<n {
            for k in 0..<i { y[i] -= a[i * n + k] * y[k] }
            y[i] /= a[i * n + i]
        }
        for i in stride(from: n - 1, through: 0, by: -1) {
            for k in (i + 1)..<max(i + 1, n) { y[i] -= a[k * n + i] * y[k] }
            y[i] /= a[i * n + i]
        }
        return y
    }
}

/// What a judge was trained on and how well it does; written beside its weights.
public struct JudgeCard: Codable, Sendable {
    public var criterion: String
    public var judge: String
    public var recipe: String
    public var encoder: String
    public var data: String
    public var trainedOn: String
    public var trainPairs: Int
    public var lambda: Double
    public var crossValidatedAccuracy: Double
    /// Accuracy on held-out (test) pairs, overall and per source.
    public var heldOutAccuracy: Double
    public var heldOutPairs: Int
    public var heldOutBySource: [String: Double]
    public var date: String
}

/// Finds and writes judges: `<dir>/<criterion>.safetensors` + `.json`. Search order: an explicit
/// directory, `$ALIGNERS_JUDGES_DIR`, `./judges`, the checkout's `judges/`, `/var/lib/aligners/judges`.
public enum JudgeStore {
    public static let environmentVariable = "ALIGNERS_JUDGES_DIR"

    public static func directories(explicit: String? = nil) -> [URL] {
        SearchPath.directories(folder: "judges", explicit: explicit, environment: environmentVariable,
                               system: "/var/lib/aligners/judges")
    }

    public static func save(_ judge: PairwiseJudge, card: JudgeCard, to dir: URL) throws {
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        try SafetensorsWriter.write([.init(name: "w", shape: [judge.weights.count], values: judge.weights)],
                                   metadata: ["criterion": judge.criterion, "recipe": judge.recipe],
                                   to: dir.appendingPathComponent("\(judge.criterion).safetensors"))
        let enc = JSONEncoder()
        enc.outputFormatting = [.prettyPrinted, .sortedKeys]
        try enc.encode(card).write(to: dir.appendingPathComponent("\(judge.criterion).json"), options: .atomic)
    }

    public static func load(criterion: String, explicit: String? = nil) throws -> (PairwiseJudge, JudgeCard?) {
        let dirs = directories(explicit: explicit)
        guard let dir = dirs.first(where: { FileManager.default.fileExists(atPath: $0.appendingPathComponent("\(criterion).safetensors").path) }) else {
            throw EvaluationError("no judge for criterion '\(criterion)'; looked for \(criterion).safetensors in: "
                + dirs.map(\.path).joined(separator: ", ") + ". Train one with `aligners train judge --criterion \(criterion) --data FILE`.")
        }
        let file = try SafetensorsFile(path: dir.appendingPathComponent("\(criterion).safetensors").path)
        let w = try file.floats("w")
        let card = try? JSONDecoder().decode(JudgeCard.self, from: Data(contentsOf: dir.appendingPathComponent("\(criterion).json")))
        return (PairwiseJudge(criterion: criterion, weights: w, recipe: file.metadata["recipe"] ?? ""), card)
    }
}

public struct EvaluationError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}
