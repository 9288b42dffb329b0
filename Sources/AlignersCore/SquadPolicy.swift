/// The squad policy of "Aligners: Decoupling LLMs and Alignment" (Ngweta et al., 2024), exactly as
/// the paper's code runs it, for one batch:
///
/// 1. every inspector scores every sample;
/// 2. the criteria are ordered by their mean score over the batch, lowest first — once, from these
///    initial scores;
/// 3. for each criterion in that order, every sample whose *current* score is strictly below the
///    threshold goes through that criterion's aligner, then every inspector re-scores the samples
///    the aligner changed, so the next gate sees the new scores;
/// 4. a sample no gate catches passes through untouched.
///
/// Variants decide whether a rewrite stays (`Acceptance`): the paper keeps every one; the others
/// undo a rewrite the re-inspection does not rate better — the sample's scores go back to what they
/// were before the pass, and the caller restores its response (`reverted`). Small aligners often
/// rewrite a fine answer into a worse one; this lets the inspectors veto that.
///
/// `SquadRun` is that policy as a state machine with no models and no sockets: the caller performs
/// the `step` it asks for (in process, over ZeroMQ, or with test doubles) and reports the result.
public struct SquadRun: Sendable, Equatable {
    /// Which rewrites stay, judged by the re-inspection after the pass.
    public enum Acceptance: String, Sendable, Equatable, CaseIterable {
        /// Every rewrite (the paper).
        case always
        /// Undone when the pass's own criterion scores lower than before (`--revert-regressions`).
        case noRegression = "no-regression"
        /// Kept only when the own criterion scores at least `margin(for:)` higher than before and
        /// no criterion that passed the threshold before the pass fails it after.
        case improvement
    }

    public enum Step: Sendable, Equatable {
        /// Score `samples` (batch indices) with every criterion's inspector.
        case inspect(criteria: [String], samples: [Int])
        /// Run `criterion`'s aligner on `samples`.
        case align(criterion: String, samples: [Int])
        case finished
    }

    public let criteria: [String]
    public let threshold: Double
    public let sampleCount: Int
    public let acceptance: Acceptance
    /// How much higher `improvement` wants the own score (a rise within the inspectors' noise is not one).
    public let acceptanceMargin: Double
    /// Per-criterion margins in place of `acceptanceMargin`: an aligner the judge finds worse than
    /// its inspector thinks needs a larger rise (above 1: none of its rewrites stays).
    public let acceptanceMargins: [String: Double]
    public func margin(for criterion: String) -> Double { acceptanceMargins[criterion] ?? acceptanceMargin }
    /// Whether a criterion's aligner runs at all: not when no rewrite of it could stay (a margin above
    /// 1 under `improvement`, e.g. `.infinity` for "off"); its inspector still scores.
    public func aligns(_ criterion: String) -> Bool { acceptance != .improvement || margin(for: criterion) <= 1 }
    /// Whether any rewrite can be undone.
    public var revertRegressions: Bool { acceptance != .always }
    /// Samples whose last pass was undone (set when its re-inspection is recorded, else empty):
    /// the caller restores their responses from before that pass.
    public private(set) var reverted: [Int] = []
    /// Current score of each sample for each criterion (nil until inspected).
    public private(set) var scores: [[String: Double]]
    /// The criteria in the order the batch applies them; empty until the initial inspection.
    public private(set) var order: [String] = []
    /// Samples that failed (a model error, say): no further gates, means or re-inspections.
    public private(set) var dropped: Set<Int> = []
    public private(set) var step: Step

    private enum Phase: Sendable, Equatable {
        case initialInspection
        case aligning(orderIndex: Int)
        case reinspecting(orderIndex: Int)
        case finished
    }
    private var phase: Phase
    /// Scores of the samples an aligner changed, from before that pass (for `acceptance`).
    private var beforePass: [Int: [String: Double]] = [:]

    public init(sampleCount: Int, criteria: [String], threshold: Double = 0.5, revertRegressions: Bool = false) {
        self.init(sampleCount: sampleCount, criteria: criteria, threshold: threshold, acceptance: revertRegressions ? .noRegression : .always)
    }

    public init(sampleCount: Int, criteria: [String], threshold: Double = 0.5, acceptance: Acceptance, acceptanceMargin: Double = 0.05,
                acceptanceMargins: [String: Double] = [:]) {
        precondition(Set(criteria).count == criteria.count, "criteria must be distinct")
        self.criteria = criteria
        self.threshold = threshold
        self.acceptance = acceptance
        self.acceptanceMargin = acceptanceMargin
        self.acceptanceMargins = acceptanceMargins
        self.sampleCount = sampleCount
        self.scores = Array(repeating: [:], count: sampleCount)
        if sampleCount == 0 || criteria.isEmpty {
            phase = .finished
            step = .finished
        } else {
            phase = .initialInspection
            step = .inspect(criteria: criteria, samples: Array(0..<sampleCount))
        }
    }

    /// Completes an `.inspect` step with the scores it produced (`scores[sample][criterion]`).
    /// A sample missing a criterion's score keeps its previous one.
    public mutating func recordScores(_ newScores: [Int: [String: Double]]) {
        guard case .inspect = step else { preconditionFailure("recordScores outside an inspect step (\(step))") }
        for (sample, byCriterion) in newScores where scores.indices.contains(sample) {
            scores[sample].merge(byCriterion) { _, new in new }
        }
        reverted = []
        switch phase {
        case .initialInspection:
            order = Self.order(criteria: criteria, scores: scores, excluding: dropped)
            advance(from: 0)
        case .reinspecting(let index):
            let criterion = order[index]
            for (sample, old) in beforePass.sorted(by: { $0.key < $1.key }) where !dropped.contains(sample) {
                if !accepts(old: old, new: scores[sample], criterion: criterion) {
                    scores[sample] = old
                    reverted.append(sample)
                }
            }
            beforePass = [:]
            advance(from: index + 1)
        default:
            preconditionFailure("inspect step in phase \(phase)")
        }
    }

    /// Completes an `.align` step: `changed` are the samples whose response the aligner rewrote.
    public mutating func recordAlignment(changed: Set<Int>) {
        guard case .align = step, case .aligning(let index) = phase else {
            preconditionFailure("recordAlignment outside an align step (\(step))")
        }
        let toInspect = changed.subtracting(dropped).sorted()
        reverted = []
        if revertRegressions { beforePass = Dictionary(uniqueKeysWithValues: toInspect.map { ($0, scores[$0]) }) }
        if toInspect.isEmpty {
            advance(from: index + 1)
        } else {
            phase = .reinspecting(orderIndex: index)
            step = .inspect(criteria: criteria, samples: toInspect)
        }
    }

    func accepts(old: [String: Double], new: [String: Double], criterion: String) -> Bool {
        guard let now = new[criterion], let was = old[criterion] else { return true }
        switch acceptance {
        case .always: return true
        case .noRegression: return now >= was
        case .improvement:
            return now >= was + margin(for: criterion) && now > was && criteria.allSatisfy { c in
                guard c != criterion, let before = old[c], let after = new[c] else { return true }
                return !(before >= threshold && after < threshold)
            }
        }
    }

    /// Takes samples out of the run (they failed); the current step is unchanged.
    public mutating func drop(_ samples: some Sequence<Int>) {
        dropped.formUnion(samples)
    }

    /// Lowest mean first; ties keep the configured order. Unscored samples do not count.
    static func order(criteria: [String], scores: [[String: Double]], excluding: Set<Int>) -> [String] {
        func mean(_ c: String) -> Double {
            var sum = 0.0, n = 0
            for (i, s) in scores.enumerated() where !excluding.contains(i) {
                if let v = s[c] { sum += v; n += 1 }
            }
            return n == 0 ? .infinity : sum / Double(n)
        }
        let means = criteria.map(mean)
        return criteria.indices.sorted { (means[$0], $0) < (means[$1], $1) }.map { criteria[$0] }
    }

    /// Moves to the first criterion at or after `index` whose gate catches a sample.
    private mutating func advance(from index: Int) {
        var i = index
        while i < order.count {
            let criterion = order[i]
            guard aligns(criterion) else { i += 1; continue }
            let gate = (0..<sampleCount).filter { s in
                !dropped.contains(s) && (scores[s][criterion].map { $0 < threshold } ?? false)
            }
            if !gate.isEmpty {
                phase = .aligning(orderIndex: i)
                step = .align(criterion: criterion, samples: gate)
                return
            }
            i += 1
        }
        phase = .finished
        step = .finished
    }
}
