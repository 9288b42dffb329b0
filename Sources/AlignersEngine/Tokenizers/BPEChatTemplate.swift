import AlignersCore

/// Renders conversations for chat models. Implements ChatML (`<|im_start|>role\ncontent<|im_end|>\n`),
/// which is what SmolLM2's Jinja template produces, including its default system turn when the
/// conversation has none. Detected from `tokenizer.chat_template`; not a Jinja interpreter.
public struct ChatTemplate: Sendable {
    public enum Style: Sendable { case chatML }
    public let style: Style
    /// Inserted as the first turn when a conversation has no system turn (nil: none).
    public let defaultSystem: String?
    public let stopStrings: [String]

    public init(style: Style = .chatML, defaultSystem: String?) {
        self.style = style
        self.defaultSystem = defaultSystem
        stopStrings = ["<|im_end|>"]
    }

    /// Reads the template text of a GGUF (`tokenizer.chat_template`); nil when it is not ChatML.
    public init?(jinja: String) {
        guard jinja.contains("<|im_start|>") else { return nil }
        var system: String?
        let marker = "<|im_start|>system\n"
        if let r = jinja.range(of: marker), let e = jinja.range(of: "<|im_end|>", range: r.upperBound..<jinja.endIndex) {
            let s = String(jinja[r.upperBound..<e.lowerBound])
            // Only a literal default (the template's `{{ '...' }}`), not a Jinja expression.
            if !s.contains("{{") && !s.contains("{%") && !s.contains("'") { system = s }
        }
        self.init(style: .chatML, defaultSystem: system)
    }

    public func render(_ conversation: [Turn], addGenerationPrompt: Bool = true) -> String {
        var out = ""
        if let sys = defaultSystem, conversation.first?.role != "system" {
            out += "<|im_start|>system\n\(sys)<|im_end|>\n"
        }
        for t in conversation {
            out += "<|im_start|>\(t.role)\n\(t.content)<|im_end|>\n"
        }
        if addGenerationPrompt { out += "<|im_start|>assistant\n" }
        return out
    }
}
