import Foundation
import Testing
import AlignersCore
@testable import AlignersEngine
@testable import AlignersSquadModels

@Suite struct OutputGuardTests {
    let g = OutputGuard()
    let original = "You should just hit him back harder."
    func ctx(_ finish: FinishReason? = .stop, forbidden: [String] = []) -> OutputGuard.Context {
        .init(original: original, question: "My brother keeps hitting me. What should I do?", forbiddenCopies: forbidden, finishReason: finish)
    }
    let fixed = "Tell a parent or another adult you trust, and walk away when it starts."

    @Test func keepsTheCorrectedAnswerAfterTheCritique() {
        let raw = "Critique: The answer encourages violence. (Violates: 1.)\n\nCorrected answer: \(fixed)"
        let a = g.check(raw, ctx())
        #expect(a == Alignment(response: fixed))
    }

    @Test func stripsTemplateDebrisAndRoleTags() {
        #expect(g.check("<|im_start|>assistant\nCorrected answer: \(fixed)<|im_end|>\n", ctx()).response == fixed)
        #expect(g.check("Assistant: \(fixed)<|im_end|><|im_start|>user\nQuestion: next", ctx()).response == fixed)
        #expect(g.check("\(fixed)\n<|im_start|>user\nQuestion: What?", ctx()).response == fixed)
        #expect(g.check("Corrected answer: \"\(fixed)\"", ctx()).response == fixed)
        #expect(g.check(" [ALIGNED] \(fixed) [DONE]", ctx()).response == fixed)
    }

    @Test func cutsAtTheNextSection() {
        let raw = "Critique: Violent.\n\nCorrected answer: \(fixed)\n\nQuestion: How do I bake bread?\nAnswer: Use flour."
        #expect(g.check(raw, ctx()).response == fixed)
        let raw2 = "Corrected answer: \(fixed)\nCritique: This is now fine."
        #expect(g.check(raw2, ctx()).response == fixed)
    }

    @Test func stripsAnEchoedQuestion() {
        let raw = "Corrected answer: My brother keeps hitting me. What should I do? \(fixed)"
        #expect(g.check(raw, ctx()).response == fixed)
    }

    @Test func critiqueWithoutAnswerIsRejected() {
        let a = g.check("Critique: The answer encourages violence and should be rewritten.", ctx())
        #expect(a.response == original)
        #expect(a.note?.contains("critique but no corrected answer") == true)
    }

    @Test func emptyAndDebrisOnlyAreRejected() {
        #expect(g.check("", ctx()) == Alignment(response: original, note: "rejected: the aligner produced nothing"))
        let a = g.check("<|im_end|>\n<|im_start|>assistant\n", ctx())
        #expect(a.response == original && a.note?.hasPrefix("rejected:") == true)
        #expect(g.check("Corrected answer: ...", ctx()).note?.hasPrefix("rejected:") == true)
    }

    @Test func unchangedIsKeptWithANote() {
        let a = g.check("Critique: Fine. (Violates: none.)\n\nCorrected answer: \(original)", ctx())
        #expect(a.response == original && a.note?.hasPrefix("unchanged:") == true)
        let b = g.check("[UNCHANGED]", ctx())
        #expect(b.response == original && b.note?.hasPrefix("unchanged:") == true)
    }

    @Test func copiesOfTheQuestionOrADemonstrationAreRejected() {
        #expect(g.check("Corrected answer: My brother keeps hitting me. What should I do?", ctx()).note?.contains("question") == true)
        let demo = "Keep a record of what you did and when."
        #expect(g.check("Corrected answer: \(demo)", ctx(forbidden: [demo])).note?.contains("demonstration") == true)
    }

    @Test func critiqueAndCommentaryAreRejected() {
        let raw = "Critique: The advice is violent. (Violates: 1.)\n\nCorrected answer: The advice is violent. (Violates: 1.)"
        #expect(g.check(raw, ctx()).note?.contains("repeated its critique") == true)
        #expect(g.check("Critique: x\n\nCorrected answer: The answer is not helpful. (Violates: 2, 3.)", ctx()).note?.contains("commented") == true)
        #expect(g.check("Corrected answer: \(fixed) (Violates: none.)", ctx()).response == fixed)
    }

    @Test func repeatedSentencesAreCut() {
        let loop = "Tell a trusted adult about it. Walk away when it starts. Walk away when it starts. Walk away when it starts."
        #expect(g.check("Corrected answer: \(loop)", ctx()).response == "Tell a trusted adult about it. Walk away when it starts.")
    }

    @Test func loopsThatCannotBeCutAreRejected() {
        let loop = String(repeating: "and then you walk away and then you talk ", count: 12)
        #expect(g.check("Corrected answer: " + loop, ctx(.length)).note == "rejected: degenerate output (repetition loop)")
        #expect(g.check("Corrected answer: Talk to an adult" + String(repeating: "!", count: 40), ctx()).note?.contains("degenerate") == true)
    }

    @Test func lengthIsCappedAtASentenceEnd() {
        let g = OutputGuard(lengthFactor: 1, minimumCap: 80)
        let long = "Tell a parent what is happening. Ask them to help you set rules at home. Walk away when he starts and go somewhere safe."
        let a = g.check("Corrected answer: \(long)", ctx())
        #expect(a.note == nil)
        #expect(a.response == "Tell a parent what is happening. Ask them to help you set rules at home.")
    }

    @Test func unfinishedLastSentenceIsDroppedWhenCutByLength() {
        let a = g.check("Corrected answer: Tell a parent what is happening. Ask them to help you set rules and", ctx(.length))
        #expect(a.response == "Tell a parent what is happening.")
        // A stop (not the length limit) keeps the text as it is.
        #expect(g.check("Corrected answer: Tell a parent. Ask them to help", ctx(.stop)).response == "Tell a parent. Ask them to help")
    }
}
