import Testing
@testable import AlignersCore

/// A toy world for the policy: a response is a set of flags; each inspector scores one flag and
/// each aligner rewrites flags by a rule. Driving `SquadRun` through it shows the policy's choices.
private struct World {
    var responses: [Set<String>]
    /// criterion -> (response -> score)
    var inspectors: [String: (Set<String>) -> Double]
    /// criterion -> (response -> new response)
    var aligners: [String: (Set<String>) -> Set<String>]

    /// Runs the policy to the end and returns the aligner passes it made, in order.
    mutating func run(_ squad: inout SquadRun) -> [(criterion: String, samples: [Int])] {
        var passes: [(String, [Int])] = []
        while true {
            switch squad.step {
            case .finished:
                return passes
            case .inspect(let criteria, let samples):
                var scores: [Int: [String: Double]] = [:]
                for s in samples {
                    scores[s] = Dictionary(uniqueKeysWithValues: criteria.map { ($0, inspectors[$0]!(responses[s])) })
                }
                squad.recordScores(scores)
            case .align(let criterion, let samples):
                passes.append((criterion, samples))
                var changed = Set<Int>()
                for s in samples {
                    let new = aligners[criterion]!(responses[s])
                    if new != responses[s] { changed.insert(s) }
                    responses[s] = new
                }
                squad.recordAlignment(changed: changed)
            }
        }
    }
}

@Suite("Squad policy")
struct SquadPolicyTests {
    @Test("initial inspection covers every sample with every criterion")
    func initialStep() {
        let squad = SquadRun(sampleCount: 3, criteria: ["ethical", "helpful"])
        #expect(squad.step == .inspect(criteria: ["ethical", "helpful"], samples: [0, 1, 2]))
    }

    @Test("revertRegressions undoes a pass that lowered its own criterion, and only then", arguments: [false, true])
    func revertRegressions(enabled: Bool) {
        var squad = SquadRun(sampleCount: 3, criteria: ["a", "b"], revertRegressions: enabled)
        squad.recordScores([0: ["a": 0.2, "b": 0.9], 1: ["a": 0.3, "b": 0.9], 2: ["a": 0.9, "b": 0.1]])
        #expect(squad.step == .align(criterion: "a", samples: [0, 1]))
        squad.recordAlignment(changed: [0, 1])
        #expect(squad.step == .inspect(criteria: ["a", "b"], samples: [0, 1]))
        // Sample 0's rewrite scores lower on `a` (and breaks `b`); sample 1's improves.
        squad.recordScores([0: ["a": 0.1, "b": 0.2], 1: ["a": 0.8, "b": 0.9]])
        if enabled {
            #expect(squad.reverted == [0])
            #expect(squad.scores[0] == ["a": 0.2, "b": 0.9])
            #expect(squad.scores[1] == ["a": 0.8, "b": 0.9])
            #expect(squad.step == .align(criterion: "b", samples: [2]))
        } else {
            #expect(squad.reverted.isEmpty)
            #expect(squad.step == .align(criterion: "b", samples: [0, 2]))
        }
        squad.recordAlignment(changed: [])
        #expect(squad.reverted.isEmpty)
        #expect(squad.step == .finished)
    }

    @Test("improvement keeps a rewrite only when its own score rises and no passing criterion starts failing")
    func improvementAcceptance() {
        var squad = SquadRun(sampleCount: 4, criteria: ["a", "b"], acceptance: .improvement, acceptanceMargin: 0.05)
        squad.recordScores([0: ["a": 0.2, "b": 0.9], 1: ["a": 0.3, "b": 0.9], 2: ["a": 0.3, "b": 0.9], 3: ["a": 0.4, "b": 0.3]])
        #expect(squad.step == .align(criterion: "a", samples: [0, 1, 2, 3]))
        squad.recordAlignment(changed: [0, 1, 2, 3])
        // 0: own score up by less than the margin → undone; 1: better on a, b stays passing → kept;
        // 2: better on a but b now fails → undone; 3: better on a, b was already failing → kept.
        squad.recordScores([0: ["a": 0.24, "b": 0.9], 1: ["a": 0.45, "b": 0.8], 2: ["a": 0.9, "b": 0.4], 3: ["a": 0.6, "b": 0.2]])
        #expect(squad.reverted == [0, 2])
        #expect(squad.scores[1] == ["a": 0.45, "b": 0.8])
        #expect(squad.scores[2] == ["a": 0.3, "b": 0.9])
        #expect(squad.scores[3] == ["a": 0.6, "b": 0.2])
        #expect(squad.step == .align(criterion: "b", samples: [3]))
        // The same scores under no-regression undo nothing (no own score fell).
        var lenient = SquadRun(sampleCount: 4, criteria: ["a", "b"], acceptance: .noRegression)
        lenient.recordScores([0: ["a": 0.2, "b": 0.9], 1: ["a": 0.3, "b": 0.9], 2: ["a": 0.3, "b": 0.9], 3: ["a": 0.4, "b": 0.3]])
        lenient.recordAlignment(changed: [0, 1, 2, 3])
        lenient.recordScores([0: ["a": 0.24, "b": 0.9], 1: ["a": 0.45, "b": 0.8], 2: ["a": 0.9, "b": 0.4], 3: ["a": 0.6, "b": 0.2]])
        #expect(lenient.reverted.isEmpty)
    }

    @Test("a criterion's own acceptance margin replaces the default one for its rewrites only")
    func perCriterionMargins() {
        var squad = SquadRun(sampleCount: 2, criteria: ["a", "b"], acceptance: .improvement, acceptanceMargin: 0.05,
                             acceptanceMargins: ["b": 0.3])
        #expect(squad.margin(for: "a") == 0.05 && squad.margin(for: "b") == 0.3)
        squad.recordScores([0: ["a": 0.4, "b": 0.1], 1: ["a": 0.9, "b": 0.2]])
        #expect(squad.step == .align(criterion: "b", samples: [0, 1]))
        squad.recordAlignment(changed: [0, 1])
        // +0.2 on b is under b's margin (undone); +0.35 is over it (kept).
        squad.recordScores([0: ["a": 0.4, "b": 0.3], 1: ["a": 0.9, "b": 0.55]])
        #expect(squad.reverted == [0])
        #expect(squad.scores[0]["b"] == 0.1 && squad.scores[1]["b"] == 0.55)
        #expect(squad.step == .align(criterion: "a", samples: [0]))
        squad.recordAlignment(changed: [0])
        squad.recordScores([0: ["a": 0.6, "b": 0.1]])   // +0.2 on a: over a's margin, kept
        #expect(squad.reverted.isEmpty)
        #expect(squad.step == .finished)
        // Above 1 no rewrite could stay, so that aligner does not run; the others still do.
        var off = SquadRun(sampleCount: 1, criteria: ["a", "b"], acceptance: .improvement, acceptanceMargins: ["a": .infinity])
        #expect(!off.aligns("a") && off.aligns("b"))
        off.recordScores([0: ["a": 0, "b": 0.1]])
        #expect(off.order == ["a", "b"])
        #expect(off.step == .align(criterion: "b", samples: [0]))
        // Under `always` every aligner runs whatever the margins say.
        #expect(SquadRun(sampleCount: 1, criteria: ["a"], acceptance: .always, acceptanceMargins: ["a": .infinity]).aligns("a"))
    }

    @Test("order is by mean initial score, lowest first, ties in configured order")
    func ordering() {
        let scores: [[String: Double]] = [["a": 0.9, "b": 0.2, "c": 0.5], ["a": 0.7, "b": 0.4, "c": 0.5]]
        #expect(SquadRun.order(criteria: ["a", "b", "c"], scores: scores, excluding: []) == ["b", "c", "a"])
        let tied: [[String: Double]] = [["a": 0.5, "b": 0.5, "c": 0.1]]
        #expect(SquadRun.order(criteria: ["a", "b", "c"], scores: tied, excluding: []) == ["c", "a", "b"])
    }

    @Test("the gate is strict: a score equal to the threshold passes", arguments: [0.5, 0.3])
    func strictGate(threshold: Double) {
        var squad = SquadRun(sampleCount: 3, criteria: ["a"], threshold: threshold)
        squad.recordScores([0: ["a": threshold], 1: ["a": threshold - 0.0001], 2: ["a": 0.99]])
        #expect(squad.step == .align(criterion: "a", samples: [1]))
    }

    @Test("untouched samples: nothing below threshold means no aligner runs")
    func nothingToDo() {
        var squad = SquadRun(sampleCount: 2, criteria: ["a", "b"])
        squad.recordScores([0: ["a": 0.8, "b": 0.6], 1: ["a": 0.51, "b": 0.9]])
        #expect(squad.step == .finished)
    }

    @Test("only changed samples are re-inspected, by every inspector")
    func reinspection() {
        var squad = SquadRun(sampleCount: 3, criteria: ["a", "b"])
        squad.recordScores([0: ["a": 0.1, "b": 0.9], 1: ["a": 0.2, "b": 0.9], 2: ["a": 0.9, "b": 0.9]])
        #expect(squad.step == .align(criterion: "a", samples: [0, 1]))
        squad.recordAlignment(changed: [1])
        #expect(squad.step == .inspect(criteria: ["a", "b"], samples: [1]))
        squad.recordScores([1: ["a": 0.8, "b": 0.3]])
        // b's gate uses the new score of sample 1.
        #expect(squad.step == .align(criterion: "b", samples: [1]))
        squad.recordAlignment(changed: [])
        #expect(squad.step == .finished)
    }

    @Test("order is fixed once per batch from the initial scores")
    func orderFixed() {
        var squad = SquadRun(sampleCount: 2, criteria: ["a", "b"])
        squad.recordScores([0: ["a": 0.1, "b": 0.4], 1: ["a": 0.2, "b": 0.45]])
        #expect(squad.order == ["a", "b"])
        squad.recordAlignment(changed: [0, 1])
        // After the pass b scores far lower than a ever did; the order does not change.
        squad.recordScores([0: ["a": 0.9, "b": 0.01], 1: ["a": 0.9, "b": 0.01]])
        #expect(squad.order == ["a", "b"])
        #expect(squad.step == .align(criterion: "b", samples: [0, 1]))
    }

    @Test("dropped samples leave gates, means and re-inspections")
    func dropping() {
        var squad = SquadRun(sampleCount: 2, criteria: ["a"])
        squad.drop([0])
        squad.recordScores([1: ["a": 0.2]])
        #expect(squad.step == .align(criterion: "a", samples: [1]))
        squad.drop([1])
        squad.recordAlignment(changed: [1])
        #expect(squad.step == .finished)
    }

    @Test("an empty batch or no criteria finishes at once")
    func empty() {
        #expect(SquadRun(sampleCount: 0, criteria: ["a"]).step == .finished)
        #expect(SquadRun(sampleCount: 4, criteria: []).step == .finished)
    }

    // The three situations of the paper's Figure 2.

    @Test("Figure 2, independent criteria: each aligner fixes its own criterion only")
    func independent() {
        var world = World(
            responses: [["rude"], ["vague"], ["rude", "vague"], []],
            inspectors: ["ethical": { $0.contains("rude") ? 0.1 : 0.9 }, "helpful": { $0.contains("vague") ? 0.2 : 0.8 }],
            aligners: ["ethical": { $0.subtracting(["rude"]) }, "helpful": { $0.subtracting(["vague"]) }])
        var squad = SquadRun(sampleCount: 4, criteria: ["ethical", "helpful"])
        let passes = world.run(&squad)
        // Means: ethical (0.1+0.9+0.1+0.9)/4 = 0.5, helpful (0.8+0.2+0.2+0.8)/4 = 0.5: tie, configured order.
        #expect(squad.order == ["ethical", "helpful"])
        #expect(passes.map(\.criterion) == ["ethical", "helpful"])
        #expect(passes[0].samples == [0, 2])
        #expect(passes[1].samples == [1, 2])
        #expect(world.responses.allSatisfy { $0.isEmpty })
        #expect(squad.scores[3] == ["ethical": 0.9, "helpful": 0.8], "the fine sample was never touched")
    }

    @Test("Figure 2, helping criteria: fixing one lifts the other, so its aligner is skipped")
    func helping() {
        // Aligning for factuality also removes the vagueness helpful complains about.
        var world = World(
            responses: [["false", "vague"], ["false", "vague"]],
            inspectors: ["factuality": { $0.contains("false") ? 0.1 : 0.9 }, "helpful": { $0.contains("vague") ? 0.3 : 0.9 }],
            aligners: ["factuality": { $0.subtracting(["false", "vague"]) }, "helpful": { $0.subtracting(["vague"]) }])
        var squad = SquadRun(sampleCount: 2, criteria: ["helpful", "factuality"])
        let passes = world.run(&squad)
        #expect(squad.order == ["factuality", "helpful"])
        #expect(passes.map(\.criterion) == ["factuality"])
        #expect(squad.scores.allSatisfy { $0["helpful"] == 0.9 && $0["factuality"] == 0.9 })
    }

    @Test("Figure 2, conflicting criteria: a later aligner repairs what an earlier one broke")
    func conflicting() {
        // The ethical aligner refuses (fixes harm, hurts helpfulness); the helpful aligner then
        // adds safe help. Helpful starts fine, so ethical goes first and helpful's gate only
        // catches the samples the refusal damaged.
        var world = World(
            responses: [["harmful"], ["harmful"], ["ok"]],
            inspectors: [
                "ethical": { $0.contains("harmful") ? 0.05 : 0.95 },
                "helpful": { $0.contains("refusal") ? 0.2 : 0.9 },
            ],
            aligners: [
                "ethical": { $0.subtracting(["harmful"]).union(["refusal"]) },
                "helpful": { $0.subtracting(["refusal"]).union(["safe-help"]) },
            ])
        var squad = SquadRun(sampleCount: 3, criteria: ["helpful", "ethical"])
        let passes = world.run(&squad)
        #expect(squad.order == ["ethical", "helpful"])
        #expect(passes.map(\.criterion) == ["ethical", "helpful"])
        #expect(passes[1].samples == [0, 1])
        #expect(world.responses[0] == ["safe-help"])
        #expect(world.responses[2] == ["ok"])
        #expect(squad.scores.allSatisfy { ($0["ethical"] ?? 0) >= 0.5 && ($0["helpful"] ?? 0) >= 0.5 })
    }

    @Test("Figure 2, conflicting criteria in the other order: the conflict stays visible in the scores")
    func conflictingUnrepaired() {
        // Helpful goes first (lowest mean), then ethical's refusal lowers helpful again; the
        // policy does not loop back, exactly as the paper's code.
        var world = World(
            responses: [["harmful", "terse"]],
            inspectors: [
                "ethical": { $0.contains("harmful") ? 0.3 : 0.95 },
                "helpful": { $0.contains("terse") || $0.contains("refusal") ? 0.1 : 0.9 },
            ],
            aligners: [
                "ethical": { $0.subtracting(["harmful"]).union(["refusal"]) },
                "helpful": { $0.subtracting(["terse"]) },
            ])
        var squad = SquadRun(sampleCount: 1, criteria: ["ethical", "helpful"])
        let passes = world.run(&squad)
        #expect(passes.map(\.criterion) == ["helpful", "ethical"])
        #expect(squad.scores[0]["helpful"] == 0.1)
        #expect(squad.scores[0]["ethical"] == 0.95)
    }
}
