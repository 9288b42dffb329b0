import Foundation
import Testing
import AlignersKernels
@testable import AlignersEngine
@testable import AlignersSquadModels
import AlignersCore

enum SharedGenerator {
    static let engine: TextGenerator? = DecoderTestModel.url.flatMap { try? TextGenerator(path: $0.path, context: TestCompute.context) }
}

@Suite struct SamplerTests {
    @Test func greedyAndTopKOne() {
        var logits: [Float] = [0.1, 2, -1, 1.9]
        var s = Sampler(.greedy)
        #expect(logits.withUnsafeMutableBufferPointer { s.sample($0.baseAddress!, vocabulary: 4, history: []) } == 1)
        var t = Sampler(SamplingParameters(temperature: 1.5, topK: 1, seed: 3))
        for _ in 0..<20 { #expect(logits.withUnsafeMutableBufferPointer { t.sample($0.baseAddress!, vocabulary: 4, history: []) } == 1) }
        // Repetition penalty moves argmax away from a repeated token.
        var r = Sampler(SamplingParameters(repeatPenalty: 1.2))
        #expect(logits.withUnsafeMutableBufferPointer { r.sample($0.baseAddress!, vocabulary: 4, history: [1]) } == 3)
    }

    @Test func seededSamplingIsReproducibleAndRespectsTopP() {
        let base: [Float] = (0..<100).map { Float($0 % 17) * 0.3 }
        func draw(_ p: SamplingParameters) -> [Int] {
            var s = Sampler(p)
            return (0..<50).map { _ in var l = base; return l.withUnsafeMutableBufferPointer { s.sample($0.baseAddress!, vocabulary: 100, history: []) } }
        }
        let p = SamplingParameters(temperature: 0.9, topK: 0, topP: 0.9, seed: 42)
        #expect(draw(p) == draw(p))
        #expect(Set(draw(p)).count > 1)
        var q = p; q.seed = 43
        #expect(draw(p) != draw(q))
        // top-p 0: only the best token survives.
        var tight = p; tight.topP = 0.0001
        #expect(Set(draw(tight)).allSatisfy { base[$0] == base.max()! })
    }
}

@Suite(.enabled(if: DecoderTestModel.available, DecoderTestModel.skipMessage), .serialized)
struct GenerationTests {
    static func greedyFixture() throws -> [(prompt: [Int], continuation: [Int], text: String)] {
        let j = try Fixtures.json("llama")
        return (j["greedy"] as! [[String: Any]]).map {
            (LlamaTests.ints($0["prompt"]), LlamaTests.ints($0["continuation"]), $0["text"] as! String)
        }
    }

    @Test func batchedGreedyMatchesReference() throws {
        let gen = try #require(SharedGenerator.engine)
        let cases = try Self.greedyFixture()
        // Each prompt twice, with different lengths, all in one continuous batch.
        var reqs: [GenerationRequest] = []
        for c in cases {
            reqs.append(GenerationRequest(prompt: c.prompt, maxNewTokens: c.continuation.count, stopTokens: [2]))
            reqs.append(GenerationRequest(prompt: c.prompt, maxNewTokens: 5, stopTokens: [2]))
        }
        let results = gen.generate(reqs)
        for (i, c) in cases.enumerated() {
            let want = c.continuation.filter { $0 != 2 }
            #expect(results[2 * i].tokens == want)
            #expect(results[2 * i].text == gen.tokenizer.decode(want))
            #expect(results[2 * i + 1].tokens == Array(want.prefix(5)))
            #expect(results[2 * i + 1].finishReason == (want.count <= 5 && c.continuation.last == 2 ? .stop : .length))
        }
        #expect(results[0].finishReason == .stop)  // "The capital of France is Paris." then <|im_end|>
    }

    @Test func chatRequestStopsAtEndOfTurnAndStopStrings() throws {
        let gen = try #require(SharedGenerator.engine)
        let chat = [Turn(role: "user", content: "What is the capital of France?")]
        let full = gen.generate([gen.request(chat: chat, maxNewTokens: 40)])[0]
        #expect(full.text == "The capital of France is Paris.")
        #expect(full.finishReason == .stop)
        let cut = gen.generate([gen.request(chat: chat, maxNewTokens: 40, stop: ["France", "xyz"])])[0]
        #expect(cut.text == "The capital of ")
        #expect(cut.finishReason == .stop)
        let short = gen.generate([gen.request(chat: chat, maxNewTokens: 3)])[0]
        #expect(short.tokens.count == 3 && short.finishReason == .length)
    }

    @Test func streamingChunksAddUpToTheResult() async throws {
        let gen = try #require(SharedGenerator.engine)
        let req = gen.request(chat: [Turn(role: "user", content: "Name three colors.")], maxNewTokens: 30, stop: ["blue"])
        var chunks: [String] = []
        var final: GenerationResult?
        for await ev in gen.stream(req) {
            switch ev {
            case .text(let t): chunks.append(t)
            case .done(let r): final = r
            }
        }
        let r = try #require(final)
        #expect(chunks.joined() == r.text)
        #expect(!r.text.contains("blue"))
    }

    @Test func seededSamplingIsReproducible() throws {
        let gen = try #require(SharedGenerator.engine)
        let p = SamplingParameters(temperature: 0.8, topK: 40, topP: 0.95, repeatPenalty: 1.1, seed: 7)
        let req = gen.request(chat: [Turn(role: "user", content: "Tell me a story.")], maxNewTokens: 16, sampling: p)
        let a = gen.generate([req, req])
        #expect(a[0].tokens == a[1].tokens)
        #expect(a[0].tokens.count == 16 || a[0].finishReason == .stop)
    }

    @Test func conformsToGenerator() throws {
        let gen = try #require(SharedGenerator.engine)
        let g: any Generator = LLMGenerator(engine: gen, maxNewTokens: 20)
        let out = try g.generate([[Turn(role: "user", content: "What is the capital of France?")], [Turn(role: "user", content: "Hi!")]])
        #expect(out.count == 2)
        #expect(out[0] == "The capital of France is Paris.")
        #expect(!out[1].isEmpty)
        #expect(g.modelName.contains("SmolLM2-135M-Instruct"))
    }

    /// A prompt longer than the context is refused by name, not answered with an empty response.
    @Test func promptOverTheContextSaysSo() throws {
        let gen = try #require(SharedGenerator.engine)
        let g = LLMGenerator(engine: gen, maxNewTokens: 8)
        let huge = String(repeating: "alpha beta gamma delta ", count: 3000)   // ~12k tokens
        let error = #expect(throws: GenerationFailed.self) { try g.generate([[Turn(role: "user", content: huge)]]) }
        #expect(error?.message.contains("context of \(gen.model.config.contextLength)") == true, "\(String(describing: error))")
    }

    /// Prompts that share a long prefix (an aligner's principles and demonstrations) reuse its keys
    /// and values and still decode exactly what they decode alone.
    @Test func sharedPrefixReuseKeepsGreedyOutputs() throws {
        let gen = try #require(SharedGenerator.engine)
        let system = "You are a careful assistant. Follow these principles: be accurate, be kind, be brief, "
            + "say when a question lacks the information to answer it, and never invent facts or sources."
        let questions = ["What is the capital of France?", "Name a primary colour.", "How many legs does a spider have?"]
        let requests = questions.map {
            gen.request(chat: [Turn(role: "system", content: system), Turn(role: "user", content: $0)], maxNewTokens: 12)
        }
        // A model instance of its own: the shared engine's runs on its own thread, with its own scratch memory.
        let model = try DecoderRegistry.load(GGUFFile(path: try #require(DecoderTestModel.url).path), context: TestCompute.context)
        func run(snapshots: Int) throws -> ([[Int]], Int) {
            let scheduler = BatchScheduler(model: model, tokenizer: gen.tokenizer, maxBatch: 8, prefillChunk: 64)
            scheduler.prefixSnapshots = snapshots
            let box = ResultBox()
            for (i, r) in requests.enumerated() {
                scheduler.add(r) { if case .done(let result) = $0 { box.set(i, result.tokens) } }
            }
            try scheduler.runUntilIdle()
            return (box.sorted, scheduler.reusedPrefixTokens)
        }
        let (plain, none) = try run(snapshots: 0)
        let (reused, saved) = try run(snapshots: 4)
        #expect(none == 0)
        // The second prompt starts prefilling in the step the first one finishes; the third starts from its snapshot.
        #expect(saved >= 32)
        #expect(reused == plain)
    }
}

final class ResultBox: @unchecked Sendable {
    private var values: [Int: [Int]] = [:]
    func set(_ i: Int, _ v: [Int]) { values[i] = v }
    var sorted: [[Int]] { values.keys.sorted().map { values[$0]! } }
}
