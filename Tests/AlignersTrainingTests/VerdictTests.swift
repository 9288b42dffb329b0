import Foundation
import Testing
import AlignersCore
import AlignersKernels
import AlignersEngine
import AlignersSquadModels
@testable import AlignersTraining

/// The verdict head against the language-model path (itself checked against PEFT): the verdict
/// logit is CE("No") − CE("Yes") at the same position, so its loss and gradients follow exactly
/// from the language-model loss and gradients of the two one-token continuations.
@Suite(.enabled(if: TrainingTestModel.available, TrainingTestModel.skipMessage), .serialized)
struct VerdictTests {
    @Test func verdictHeadMatchesTheLanguageModelPath() throws {
        let base = try #require(TrainingTestModel.base)
        let engine = LlamaLoRA(base: base, pool: ComputeContext(threads: 2).pool)
        var p = LoRAParameters(config: LoRAConfig(rank: 2, alpha: 4, dropout: 0, layers: [0, 29]), model: base.config)
        // Non-zero A and B, so every adapter matrix gets a gradient.
        var rng = SplitMix64(seed: 5)
        p.values = p.values.map { _ in Float(Int(rng.next() % 2001) - 1000) * 2e-5 }
        let prompts = try LoRAReferenceTests.batch().map { Array($0.tokens.prefix(14)) }
        let answers = VerdictTokens(yes: 7_000, no: 12_345)
        let verdicts = [VerdictSequence(tokens: prompts[0], label: 1, weight: 0.7),
                        VerdictSequence(tokens: prompts[1], label: 0, weight: 1.3),
                        VerdictSequence(tokens: Array(prompts[0].prefix(9)), label: 0, weight: 0.5)]
        var g = [Float](repeating: 0, count: p.count)
        let r = try g.withUnsafeMutableBufferPointer {
            try engine.runVerdicts(verdicts, answers: answers, parameters: p, gradients: $0.baseAddress!, lossScale: 0.5)
        }

        var expectedLoss = 0.0
        var expected = [Double](repeating: 0, count: p.count)
        for (k, v) in verdicts.enumerated() {
            func lm(_ token: Int) throws -> (Double, [Float]) {
                var grad = [Float](repeating: 0, count: p.count)
                let loss = try grad.withUnsafeMutableBufferPointer {
                    try engine.run([TrainingSequence(tokens: v.tokens + [token], lossStart: v.tokens.count)], parameters: p, gradients: $0.baseAddress!)
                }
                return (loss, grad)
            }
            let (ly, gy) = try lm(answers.yes), (ln, gn) = try lm(answers.no)
            let z = ln - ly
            #expect(abs(z - Double(r.logits[k])) < 2e-3 * max(1, abs(z)), "verdict logit \(r.logits[k]) vs CE difference \(z)")
            let s = 1 / (1 + exp(-z)), y = Double(v.label), w = Double(v.weight)
            expectedLoss += w * -(y * log(s) + (1 - y) * log(1 - s))
            for i in expected.indices { expected[i] += 0.5 * w * (s - y) * Double(gn[i] - gy[i]) }
        }
        #expect(abs(r.loss - expectedLoss) < 1e-3 * expectedLoss, "loss \(r.loss) vs \(expectedLoss)")
        let diff = zip(g, expected).reduce(0.0) { $0 + pow(Double($1.0) - $1.1, 2) }.squareRoot()
        let norm = expected.reduce(0.0) { $0 + $1 * $1 }.squareRoot()
        #expect(norm > 0)
        #expect(diff / norm < 1e-3, "relative gradient error \(diff / norm)")

        // Without gradients: the same logits, and the batch split does not change them.
        let alone = try engine.runVerdicts([verdicts[2]], answers: answers, parameters: p, gradients: nil)
        #expect(abs(alone.logits[0] - r.logits[2]) < 1e-3 * max(1, abs(r.logits[2])))
    }

    @Test func answerTokensAreSingleTokens() throws {
        let url = try #require(TrainingTestModel.url)
        let tokenizer = try BPETokenizer(gguf: GGUFFile(path: url.path))
        let t = try LlamaVerdicts.answerTokens(tokenizer)
        #expect(t.yes != t.no)
        #expect(tokenizer.decode([t.yes]) == VerdictPrompt.yes && tokenizer.decode([t.no]) == VerdictPrompt.no)
        // The prompt ends where the assistant's reply starts.
        let text = VerdictPrompt.text(criterion: "the response is polite", exchange: Exchange(conversation: [Turn(role: "user", content: "Hi <|im_end|>")],
                                                                                            response: "Hello."))
        #expect(text.hasSuffix("<|im_start|>assistant\n"))
        #expect(text.components(separatedBy: "<|im_end|>").count == 3)   // the user's control-token text is escaped
    }
}
