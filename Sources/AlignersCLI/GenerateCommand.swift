import AlignersKernels
import AlignersPipeline
import ArgumentParser
import Foundation
import AlignersCore
import AlignersEngine
import AlignersSquadModels

/// `aligners generate`: run the embedded causal LM on one prompt (streamed) or on JSONL prompts.
struct GenerateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "generate",
        abstract: "Generate text with the embedded causal LM (GGUF, CPU).",
        discussion: """
            One prompt, streamed: aligners generate "What is the capital of France?" (or --prompt "…").

            Many: JSONL on stdin or from --input, one object per line, answered as one continuous batch:
              {"id": "a", "prompt": "…"}
              {"id": "b", "messages": [{"role": "user", "content": "…"}]}
            Optional per line: "max_tokens", "stop" (string or list), "raw" (true: no chat template).
            Output lines: {"id", "text", "finish_reason", "prompt_tokens", "completion_tokens"}.
            """.reflowed)

    @Option(help: "One prompt (a user turn, rendered with the chat template unless --raw); streamed to stdout.")
    var prompt: String?

    @Argument(help: "The prompt, as with --prompt (`aligners generate \"What is the capital of France?\"`).")
    var positionalPrompt: String?

    @Option(help: "JSONL file of prompts (default: stdin when --prompt is absent).")
    var input: String?

    @Option(help: "Path of a GGUF model file (default: \(TextGenerator.defaultModel) under the models directory).")
    var model: String?

    @Option(help: "Models directory to search first.")
    var modelsDir: String?

    @Option(help: "System turn to put first (default: the template's own).")
    var system: String?

    @Flag(help: "Use the prompt text as is, without the chat template.")
    var raw = false

    @Option(help: "Most new tokens per prompt.") var maxTokens = 256
    @Option(help: "Sampling temperature (0 = greedy).") var temperature: Float = 0
    @Option(help: "Top-k cut (0 = off).") var topK = 40
    @Option(help: "Top-p (nucleus) cut (1 = off).") var topP: Float = 1
    @Option(help: "Repetition penalty (1 = off) over the last 64 tokens.") var repeatPenalty: Float = 1
    @Option(help: "Random seed for sampling.") var seed: UInt64?
    @Option(help: "Stop string (repeatable).") var stop: [String] = []
    @Option(help: "Most sequences decoding at once.") var batch = 64
    @Flag(help: "Print timing to stderr.") var stats = false

    func validate() throws {
        if prompt != nil && positionalPrompt != nil { throw ValidationError("give the prompt once: as an argument or with --prompt") }
    }

    func run() throws {
        let prompt = self.prompt ?? positionalPrompt
        let path: String
        if let model { path = model } else { path = try ModelLocator.locate(TextGenerator.defaultModel, explicit: modelsDir).path }
        let gen = try TextGenerator(path: path, maxBatch: batch, context: .forCommand())
        let sampling = SamplingParameters(temperature: temperature, topK: topK, topP: topP, repeatPenalty: repeatPenalty, seed: seed)

        func makeRequest(prompt: String?, messages: [Turn]?, raw: Bool, maxTokens: Int, stop: [String]) -> GenerationRequest {
            if raw, let prompt { return gen.request(text: prompt, maxNewTokens: maxTokens, sampling: sampling, stop: stop) }
            var turns = messages ?? [Turn(role: "user", content: prompt ?? "")]
            if let system, turns.first?.role != "system" { turns.insert(Turn(role: "system", content: system), at: 0) }
            return gen.request(chat: turns, maxNewTokens: maxTokens, sampling: sampling, stop: stop)
        }

        if let prompt {
            let req = makeRequest(prompt: prompt, messages: nil, raw: raw, maxTokens: maxTokens, stop: stop)
            let done = DispatchSemaphore(value: 0)
            let start = Date()
            let box = Box()
            gen.submit(req) { ev in
                switch ev {
                case .text(let t):
                    StandardStreams.output(Array(t.utf8))
                    if box.first == nil { box.first = Date() }
                case .done(let r):
                    box.result = r
                    done.signal()
                }
            }
            done.wait()
            StandardStreams.output([10])
            if let r = box.result {
                if let e = r.error { throw ValidationError(e) }
                if stats {
                    let total = Date().timeIntervalSince(start)
                    let ttft = (box.first ?? Date()).timeIntervalSince(start)
                    let decode = r.tokens.count > 1 ? Double(r.tokens.count - 1) / max(1e-9, total - ttft) : 0
                    StandardStreams.error(String(format: "prompt %d tokens, %d generated (%@), first text %.0f ms, %.1f tok/s decode\n",
                                                               r.promptTokens, r.tokens.count, r.finishReason.rawValue, ttft * 1000, decode))
                }
            }
            return
        }

        // JSONL mode: read everything, run as one continuous batch, print in input order.
        let data: Data
        if let input { data = try Data(contentsOf: URL(fileURLWithPath: input)) } else { data = FileHandle.standardInput.readDataToEndOfFile() }
        var ids: [Any] = []
        var requests: [GenerationRequest] = []
        for (n, line) in String(decoding: data, as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: true).enumerated() {
            guard let obj = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any] else {
                throw ValidationError("line \(n + 1): not a JSON object")
            }
            var turns: [Turn]?
            if let msgs = (obj["messages"] ?? obj["conversation"]) as? [[String: Any]] {
                turns = msgs.compactMap { m in (m["role"] as? String).map { Turn(role: $0, content: m["content"] as? String ?? "") } }
            }
            let p = obj["prompt"] as? String
            guard p != nil || turns != nil else { throw ValidationError("line \(n + 1): needs \"prompt\" or \"messages\"") }
            var lineStop = stop
            if let s = obj["stop"] as? String { lineStop.append(s) } else if let s = obj["stop"] as? [String] { lineStop += s }
            requests.append(makeRequest(prompt: p, messages: turns, raw: (obj["raw"] as? Bool) ?? raw,
                                        maxTokens: (obj["max_tokens"] as? Int) ?? maxTokens, stop: lineStop))
            ids.append(obj["id"] ?? n)
        }
        let start = Date()
        let results = gen.generate(requests)
        let elapsed = Date().timeIntervalSince(start)
        for (id, r) in zip(ids, results) {
            var out: [String: Any] = ["id": id, "text": r.text, "finish_reason": r.finishReason.rawValue,
                                      "prompt_tokens": r.promptTokens, "completion_tokens": r.tokens.count]
            if let e = r.error { out["error"] = e }
            let bytes = try JSONSerialization.data(withJSONObject: out, options: [.sortedKeys, .withoutEscapingSlashes])
            StandardStreams.output(Array(bytes) + [10])
        }
        if stats {
            let gen = results.reduce(0) { $0 + $1.tokens.count }
            StandardStreams.error(String(format: "%d prompts, %d tokens generated in %.2f s (%.1f tok/s aggregate)\n",
                                                       results.count, gen, elapsed, Double(gen) / elapsed))
        }
    }
}

private final class Box: @unchecked Sendable {
    var first: Date?
    var result: GenerationResult?
}
