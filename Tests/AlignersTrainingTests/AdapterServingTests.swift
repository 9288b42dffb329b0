import Foundation
import Testing
import AlignersKernels
@testable import AlignersEngine
@testable import AlignersSquadModels
@testable import AlignersTraining

/// Several adapters and the base model in one continuous batch over one copy of the weights: each
/// sequence decodes exactly as it does alone.
@Suite(.enabled(if: TrainingTestModel.available, TrainingTestModel.skipMessage), .serialized)
struct AdapterServingTests {
    /// The fixture adapter with B scaled up, so that it changes what greedy decoding writes.
    static func strong(_ factor: Float, name: String) throws -> LoRAAdapter {
        let a = try PEFTAdapter.load(directory: LoRAReferenceTests.adapterDir, model: try #require(TrainingTestModel.inference).config)
        return LoRAAdapter(config: a.config, modules: a.modules.map { m in
            LoRAModule(layer: m.layer, target: m.target, inputs: m.inputs, outputs: m.outputs, a: m.a, b: m.b.map { $0 * factor })
        }, name: name)
    }

    func generate(_ scheduler: BatchScheduler, _ requests: [GenerationRequest]) throws -> [[Int]] {
        var out = [[Int]](repeating: [], count: requests.count)
        for (i, r) in requests.enumerated() {
            scheduler.add(r) { ev in if case .done(let res) = ev { out[i] = res.tokens } }
        }
        try scheduler.runUntilIdle()
        return out
    }

    @Test func mixedBatchDecodesAsAlone() throws {
        let model = try #require(TrainingTestModel.inference)
        let tokenizer = try BPETokenizer(gguf: try #require(TrainingTestModel.gguf))
        let x = try Self.strong(40, name: "x"), y = try Self.strong(-40, name: "y")
        let prompts = ["The capital of France is", "Write a short poem about the sea.", "The capital of France is"]
            .map { tokenizer.encode($0) }
        let requests = [
            GenerationRequest(prompt: prompts[0], maxNewTokens: 8, adapter: x),
            GenerationRequest(prompt: prompts[1], maxNewTokens: 8),
            GenerationRequest(prompt: prompts[2], maxNewTokens: 8, adapter: y),
            GenerationRequest(prompt: prompts[0], maxNewTokens: 8),
        ]
        let together = try generate(BatchScheduler(model: model, tokenizer: tokenizer), requests)
        for (i, r) in requests.enumerated() {
            let alone = try generate(BatchScheduler(model: model, tokenizer: tokenizer), [r])
            #expect(alone[0] == together[i], "request \(i) decodes differently in the mixed batch")
        }
        // The adapters do change the text (else the comparison above proves nothing).
        #expect(together[0] != together[3])
        #expect(together[2] != together[3] && together[0] != together[2])
    }
}
