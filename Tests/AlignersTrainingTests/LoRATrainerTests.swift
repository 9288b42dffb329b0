import Foundation
import Testing
import AlignersKernels
import AlignersEngine
import AlignersSquadModels
@testable import AlignersTraining

@Suite(.enabled(if: TrainingTestModel.available, TrainingTestModel.skipMessage), .serialized)
struct LoRATrainerTests {
    final class Saved: @unchecked Sendable { var values: [Float] = []; var saves = 0 }

    static func trainer(_ out: URL, options: LoRATrainingOptions, saved: Saved) throws -> LoRATrainer {
        let base = try #require(TrainingTestModel.base)
        let batch = try LoRAReferenceTests.batch()
        // Six short sequences cut from the fixture's two.
        let train = (0..<6).map { i -> TrainingSequence in
            let s = batch[i % 2], n = s.tokens.count - 3 * (i / 2)
            return TrainingSequence(tokens: Array(s.tokens.prefix(n)), lossStart: s.lossStart)
        }
        let lora = LoRAConfig(rank: 2, alpha: 4, dropout: 0.1, layers: [0, 29])
        return LoRATrainer(model: LlamaLoRA(base: base, pool: ComputeContext(threads: 2).pool), lora: lora, train: train, valid: [batch[0]],
                           options: options, outputDirectory: out, progress: TrainingProgress(terminal: false, write: { _ in })) { p, _ in
            saved.values = p.values
            saved.saves += 1
        }
    }

    static var options: LoRATrainingOptions {
        var o = LoRATrainingOptions()
        o.batchSize = 2
        o.microBatchTokens = 64      // two micro-batches per step: accumulation
        o.maxSteps = 4
        o.warmupSteps = 1
        o.learningRate = 1e-2
        o.evalEvery = 100            // validation only at the end
        o.checkpointEvery = 100
        o.patience = 0
        return o
    }

    /// Paused after 2 steps and resumed: the same parameters, bit for bit, as 4 steps in one go
    /// (same batches, dropout masks, optimiser state and schedule).
    @Test func resumeContinuesExactly() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("lora-trainer-\(UUID().uuidString)")
        let straight = Saved(), paused = Saved()
        let a = try Self.trainer(dir.appendingPathComponent("a"), options: Self.options, saved: straight)
        let ra = try a.run(resume: false)
        #expect(ra.steps == 4)
        let b = try Self.trainer(dir.appendingPathComponent("b"), options: Self.options, saved: paused)
        let first = try b.run(resume: false, stopAfter: 2)
        #expect(first.steps == 2)
        #expect(throws: TrainingError.self) { _ = try Self.trainer(dir.appendingPathComponent("c"), options: Self.options, saved: Saved()).run(resume: true) }
        let rb = try Self.trainer(dir.appendingPathComponent("b"), options: Self.options, saved: paused).run(resume: true)
        #expect(rb.steps == 4)
        #expect(straight.values == paused.values)
        #expect(straight.values.contains { $0 != 0 })
        // Resuming a finished run trains nothing and writes the best adapter again.
        let again = Saved()
        let rc = try Self.trainer(dir.appendingPathComponent("b"), options: Self.options, saved: again).run(resume: true)
        #expect(rc.steps == 4 && again.saves == 1 && again.values == paused.values)
        // The training moved the validation loss (it is measured before and after).
        #expect(ra.validHistory.count == 2 && ra.validHistory[1][1] != ra.validHistory[0][1])

        // Other settings refuse the checkpoint instead of continuing something else.
        var other = Self.options
        other.learningRate = 5e-3
        #expect(throws: TrainingError.self) { _ = try Self.trainer(dir.appendingPathComponent("b"), options: other, saved: Saved()).run(resume: true) }
    }

    @Test func scheduleWarmsUpThenDecays() {
        let s = LearningRateSchedule(peak: 1, warmupSteps: 4, totalSteps: 12, floor: 0.1)
        #expect(s.rate(at: 0) == 0.25 && s.rate(at: 3) == 1)
        #expect(abs(s.rate(at: 8) - 0.55) < 1e-6)          // half-way through the decay
        #expect(abs(s.rate(at: 12) - 0.1) < 1e-6)
        #expect((4..<12).allSatisfy { s.rate(at: $0 + 1) <= s.rate(at: $0) })
    }

    @Test func clippingScalesToTheMaximumNorm() {
        var g: [Float] = [3, 4]
        #expect(clipGradientNorm(&g, maxNorm: 1) == 5)
        #expect(abs((g[0] * g[0] + g[1] * g[1]).squareRoot() - 1) < 1e-5)
        var small: [Float] = [0.3, 0.4]
        clipGradientNorm(&small, maxNorm: 1)
        #expect(small == [0.3, 0.4])
    }

    @Test func batchesAreLengthBucketedAndDeterministic() {
        let seqs = (0..<100).map { TrainingSequence(tokens: Array(repeating: 1, count: 10 + ($0 * 37) % 90), lossStart: 5) }
        let a = lengthBucketedBatches(seqs, batchSize: 8, seed: 3, epoch: 0)
        #expect(a == lengthBucketedBatches(seqs, batchSize: 8, seed: 3, epoch: 0))
        #expect(a != lengthBucketedBatches(seqs, batchSize: 8, seed: 3, epoch: 1))
        #expect(a.flatMap { $0 }.sorted() == Array(0..<100))
        // Within a batch lengths are close: sorted windows, so the spread is far below the data's.
        let spread = a.map { b in b.map { seqs[$0].tokens.count }.max()! - b.map { seqs[$0].tokens.count }.min()! }
        #expect(spread.max()! < 30)
        let mbs = microBatches(a[0], seqs, tokens: 100)
        #expect(mbs.flatMap { $0 } == a[0])
        #expect(mbs.allSatisfy { mb in mb.count == 1 || mb.reduce(0) { $0 + seqs[$1].tokens.count } <= 100 })
    }
}

@Suite(.enabled(if: TrainingTestModel.available, TrainingTestModel.skipMessage))
struct AlignerDataTests {
    static func row(_ i: Int, source: String) -> PreferenceRow {
        try! JSONDecoder().decode(PreferenceRow.self, from: Data("""
            {"id": "r\(i)", "criterion": "ethical", "source": "\(source)", "split": "train",
             "conversation": [{"role": "user", "content": "Question \(i)?"}], "prompt": "Question \(i)?",
             "rejected": "Bad answer \(i).", "chosen": "Good answer \(i)."}
            """.utf8))
    }

    @Test func correctionsNoOpsSourcesAndTheServingPrompt() throws {
        let tokenizer = try BPETokenizer(gguf: try #require(TrainingTestModel.gguf))
        let rows = (0..<30).map { Self.row($0, source: "a") } + (0..<10).map { Self.row(100 + $0, source: "b") }
        var o = AlignerDataOptions()
        o.noopFraction = 0.25
        o.maxPerSource = 20
        let set = AlignerDataset.build(rows: rows, tokenizer: tokenizer, options: o)
        let corrections = set.examples.filter { !$0.noop }, noops = set.examples.filter(\.noop)
        #expect(corrections.count == 30)                              // 20 of a (capped) + 10 of b
        #expect(noops.count == 10)                                    // a quarter of the result
        #expect(corrections.filter { $0.source == "a" }.count == 20)
        // Each example is the serving prompt followed by y' [DONE]; the loss starts right after the prompt.
        for e in set.examples {
            let text = tokenizer.decode(e.sequence.tokens)
            let prompt = tokenizer.decode(Array(e.sequence.tokens.prefix(e.sequence.lossStart)))
            #expect(prompt.hasSuffix("[ALIGNED] ") && text.hasSuffix("[DONE]"))
            #expect(text.contains("[INIT] \(e.noop ? "Good" : "Bad") answer"))
            let target = tokenizer.decode(Array(e.sequence.tokens.suffix(from: e.sequence.lossStart)))
            #expect(target.hasPrefix("Good answer"))
        }
        var only = o
        only.sources = ["b"]
        #expect(AlignerDataset.build(rows: rows, tokenizer: tokenizer, options: only).examples.allSatisfy { $0.source == "b" })
        var short = o
        short.maxTokens = 8
        let none = AlignerDataset.build(rows: rows, tokenizer: tokenizer, options: short)
        #expect(none.examples.isEmpty && none.droppedForLength == 40)
    }
}
