import Foundation
import Testing
import AlignersKernels
import AlignersCore
@testable import AlignersEngine
@testable import AlignersSquadModels

@Suite struct TrainedAlignerTests {
    let ex = Exchange(conversation: [Turn(role: "user", content: "Is the Great Wall visible from space?")],
                      response: "Yes, it is easily visible with the naked eye from the Moon.")

    @Test func formatIsThePapers() {
        #expect(TrainedAligner.promptText(conversation: ex.conversation, response: ex.response)
                == "Is the Great Wall visible from space? [INIT] Yes, it is easily visible with the naked eye from the Moon. [ALIGNED] ")
        #expect(TrainedAligner.trainingText(conversation: ex.conversation, response: "y", aligned: "y2").hasSuffix("[ALIGNED] y2 [DONE]"))
        let multi = [Turn(role: "system", content: "sys"), Turn(role: "user", content: "a"), Turn(role: "assistant", content: "b"),
                     Turn(role: "user", content: "c")]
        #expect(TrainedAligner.renderX(multi) == "User: a\nAssistant: b\nUser: c")
    }

    @Test func parsesUntilDoneWithTheGuard() throws {
        let engine = ScriptedEngine { prompt in
            #expect(prompt.hasSuffix("[ALIGNED] "))
            return CompletionResult(text: "No. It is hard to see even from low Earth orbit, and not at all from the Moon.", finishReason: .stop)
        }
        let a = TrainedAligner(criterion: "factuality", engine: engine)
        let out = try a.align([ex, ex, ex])
        #expect(out.count == 3)
        #expect(out.allSatisfy { $0 == Alignment(response: "No. It is hard to see even from low Earth orbit, and not at all from the Moon.") })
        #expect(engine.calls == 1 && engine.requests.allSatisfy { $0.stop.contains("[DONE]") && $0.sampling == .greedy })
        #expect(a.modelName == "trained(factuality)+scripted")
    }

    @Test func debrisAndFailuresKeepTheOriginal() throws {
        let outputs = ["  [DONE]", "Yes, it is easily visible with the naked eye from the Moon.", "No, it is not.\n[INIT] more"]
        let engine = ScriptedEngine { _ in CompletionResult(text: "", finishReason: .stop) }
        _ = engine
        var i = 0
        let lock = NSLock()
        let seq = ScriptedEngine { _ in
            lock.lock(); defer { lock.unlock(); i += 1 }
            return CompletionResult(text: outputs[i], finishReason: .stop)
        }
        let out = try TrainedAligner(criterion: "factuality", engine: seq).align([ex, ex, ex])
        #expect(out[0].response == ex.response && out[0].note?.hasPrefix("rejected:") == true)
        #expect(out[1].response == ex.response && out[1].note?.hasPrefix("unchanged:") == true)
        #expect(out[2] == Alignment(response: "No, it is not."))
    }

    @Test func factoryPicksTheKindFromTheFile() throws {
        let c = try CriteriaLibrary.parse("""
            name: custom
            description: d
            principles: [Be right.]
            demonstrations:
              - {question: q, answer: a, critique: c, violated: [1], corrected: b}
              - {question: q, answer: a, critique: c, violated: [], corrected: a}
            inspector: {head: inspectors/custom}
            aligner: {kind: trained, model: adapters/custom.gguf}
            """, file: "/tmp/criteria/custom.yaml")
        #expect(c.aligner.kind == .trained && c.aligner.model == "adapters/custom.gguf")
        let f = AlignerFactory(modelsDir: "/nonexistent-models", compute: TestCompute.context)
        #expect(throws: ModelNotFound.self) { try f.modelPath(for: c) }
    }

    /// The base model in the trained format: no adapter exists yet, so this checks only that the
    /// format runs through the real decoder and the guard (quality is not claimed).
    @Test(.enabled(if: DecoderTestModel.available, DecoderTestModel.skipMessage))
    func runsOnTheBaseModel() throws {
        let engine = try #require(SharedGenerator.engine)
        let out = try TrainedAligner(criterion: "factuality", engine: engine, maxNewTokens: 48).align([ex, ex])
        #expect(out.count == 2 && out[0] == out[1])
        #expect(!out[0].response.isEmpty && !out[0].response.contains("[DONE]") && !out[0].response.contains("[ALIGNED]"))
        print("[trained format, base model] \(out[0].response) | note: \(out[0].note ?? "-")")
    }
}
