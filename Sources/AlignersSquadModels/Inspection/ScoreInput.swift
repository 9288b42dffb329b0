import AlignersEngine
import Foundation
import AlignersCore

public struct ScoreInputError: Error, CustomStringConvertible, Sendable {
    public var kind: String
    public var description: String
    public init(kind: String, description: String) { self.kind = kind; self.description = description }
}

/// Parses one input line of `aligners score`: `{"prompt", "response"}` or `{"messages": [...]}`
/// (OpenAI chat: the last assistant turn is the response, the turns before it the conversation;
/// content may be a string or a list of text parts).
public enum ScoreInput {
    public static func parse(_ line: String) -> Result<([String: Any], Exchange), ScoreInputError> {
        guard let data = line.data(using: .utf8),
              let any = try? JSONSerialization.jsonObject(with: data), let obj = any as? [String: Any] else {
            return .failure(ScoreInputError(kind: "bad_json", description: "line is not a JSON object"))
        }
        if let messages = obj["messages"] {
            guard let arr = messages as? [[String: Any]] else {
                return .failure(ScoreInputError(kind: "bad_messages", description: "\"messages\" must be an array of {role, content} objects"))
            }
            var turns: [Turn] = []
            for m in arr {
                guard let role = m["role"] as? String else {
                    return .failure(ScoreInputError(kind: "bad_messages", description: "a message lacks a string \"role\""))
                }
                let content: String
                if let s = m["content"] as? String { content = s }
                else if let parts = m["content"] as? [[String: Any]] { content = parts.compactMap { $0["text"] as? String }.joined(separator: "\n") }
                else if m["content"] == nil || m["content"] is NSNull { content = "" }
                else { return .failure(ScoreInputError(kind: "bad_messages", description: "message content must be a string or text parts")) }
                turns.append(Turn(role: role, content: content))
            }
            guard let last = turns.lastIndex(where: { $0.role == "assistant" }) else {
                return .failure(ScoreInputError(kind: "no_response", description: "no assistant turn to score in \"messages\""))
            }
            return .success((obj, Exchange(conversation: Array(turns[..<last]), response: turns[last].content)))
        }
        guard let prompt = obj["prompt"] as? String else {
            return .failure(ScoreInputError(kind: "missing_field", description: "need \"prompt\" and \"response\" strings, or \"messages\""))
        }
        guard let response = obj["response"] as? String else {
            return .failure(ScoreInputError(kind: "missing_field", description: "need a \"response\" string to score"))
        }
        return .success((obj, Exchange(conversation: [Turn(role: "user", content: prompt)], response: response)))
    }
}

