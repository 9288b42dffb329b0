import AlignersSchema
import Foundation

/// One input line that parsed into a sample: the envelope that travels, and what the sink needs to
/// write the line back with the aligned response in place (unknown fields untouched).
public struct InputLine: @unchecked Sendable {
    public enum Shape: Sendable {
        /// `{"prompt": ..., "response": ...}`; the response is written back to `response`.
        case prompt
        /// `{"messages": [...]}` (or `conversation`); the response is the turn at `responseIndex`,
        /// or a new assistant turn appended when the log ended with the user.
        case messages(key: String, responseIndex: Int?)
    }
    public let seq: UInt64
    public let object: [String: Any]
    public let shape: Shape
    public let envelope: Envelope
}

/// Why a line could not be used.
public struct InputError: Error, Sendable {
    public let message: String
}

public enum JSONLines {
    /// Parses one line (without its newline) into a sample.
    public static func parse(_ bytes: ArraySlice<UInt8>, seq: UInt64) -> Result<InputLine, InputError> {
        var bytes = bytes
        if bytes.last == UInt8(ascii: "\r") { bytes = bytes.dropLast() }
        guard bytes.contains(where: { !($0 == 0x20 || $0 == 0x09) }) else {
            return .failure(InputError(message: "empty line"))
        }
        guard String(validating: bytes, as: UTF8.self) != nil else {
            return .failure(InputError(message: "line is not valid UTF-8"))
        }
        let any: Any
        do {
            any = try JSONSerialization.jsonObject(with: Data(bytes), options: [.fragmentsAllowed])
        } catch {
            return .failure(InputError(message: "invalid JSON: \(jsonErrorText(error))"))
        }
        guard let object = any as? [String: Any] else {
            return .failure(InputError(message: "expected a JSON object, got \(typeName(any))"))
        }
        var envelope = Envelope()
        envelope.seq = seq
        envelope.id = (object["id"] as? String) ?? (object["id"] as? NSNumber).map { "\($0)" } ?? "line-\(seq)"
        let shape: InputLine.Shape
        if let key = ["messages", "conversation"].first(where: { object[$0] != nil }) {
            guard let list = object[key] as? [Any] else {
                return .failure(InputError(message: "\"\(key)\" must be an array of {\"role\", \"content\"} objects"))
            }
            var turns: [Aligners_V1_Turn] = []
            for (i, item) in list.enumerated() {
                switch turn(item) {
                case .success(let t): turns.append(t)
                case .failure(let e): return .failure(InputError(message: "\(key)[\(i)]: \(e.message)"))
                }
            }
            guard !turns.isEmpty else { return .failure(InputError(message: "\"\(key)\" is empty")) }
            if turns.last!.role == "assistant" {
                guard turns.count >= 2 else {
                    return .failure(InputError(message: "\"\(key)\" holds only an assistant turn: there is no question to align it to"))
                }
                envelope.response = turns.last!.content
                envelope.conversation = Array(turns.dropLast())
                shape = .messages(key: key, responseIndex: turns.count - 1)
            } else {
                envelope.conversation = turns
                shape = .messages(key: key, responseIndex: nil)
            }
            // The answer being aligned (or written) answers the last user turn: it must say something.
            let question = envelope.conversation.last(where: { $0.role == "user" })
            guard let question, !question.content.allSatisfy(\.isWhitespace) else {
                return .failure(InputError(message: "\"\(key)\" has no user turn with text: there is no question to answer or to align an answer to"))
            }
        } else if let prompt = object["prompt"] {
            guard let text = prompt as? String else {
                return .failure(InputError(message: "\"prompt\" must be a string, got \(typeName(prompt))"))
            }
            guard !text.allSatisfy(\.isWhitespace) else {
                return .failure(InputError(message: "\"prompt\" is empty: there is no question to answer or to align an answer to"))
            }
            var user = Aligners_V1_Turn()
            user.role = "user"
            user.content = text
            envelope.conversation = [user]
            if let response = object["response"], !(response is NSNull) {
                guard let r = response as? String else {
                    return .failure(InputError(message: "\"response\" must be a string, got \(typeName(response))"))
                }
                envelope.response = r
            }
            shape = .prompt
        } else {
            return .failure(InputError(message: "expected \"prompt\" (with optional \"response\") or \"messages\""))
        }
        envelope.originalResponse = envelope.response
        return .success(InputLine(seq: seq, object: object, shape: shape, envelope: envelope))
    }

    private static func turn(_ item: Any) -> Result<Aligners_V1_Turn, InputError> {
        guard let dict = item as? [String: Any] else {
            return .failure(InputError(message: "expected an object, got \(typeName(item))"))
        }
        guard let role = dict["role"] as? String, !role.isEmpty else {
            return .failure(InputError(message: "\"role\" must be a non-empty string"))
        }
        var t = Aligners_V1_Turn()
        t.role = role
        switch dict["content"] {
        case let s as String:
            t.content = s
        case let parts as [Any]:
            // OpenAI content parts: the text parts joined.
            t.content = parts.compactMap { ($0 as? [String: Any])?["text"] as? String }.joined(separator: "\n")
        case nil, is NSNull:
            t.content = ""
        case let other?:
            return .failure(InputError(message: "\"content\" must be a string, got \(typeName(other))"))
        }
        return .success(t)
    }

    /// The output line for a finished sample: the input with the aligned response in place and an
    /// `alignment` object (plus `error` when the sample failed).
    public static func render(_ line: InputLine, _ envelope: Envelope, explain: Bool = false) -> [UInt8] {
        var object = line.object
        switch line.shape {
        case .prompt:
            object["response"] = envelope.response
        case .messages(let key, let index):
            var list = object[key] as? [Any] ?? []
            if let index, index < list.count, var turn = list[index] as? [String: Any] {
                turn["content"] = envelope.response
                list[index] = turn
            } else if !envelope.response.isEmpty {
                list.append(["role": "assistant", "content": envelope.response])
            }
            object[key] = list
        }
        var alignment = alignmentObject(envelope)
        if explain { alignment["trace"] = trace(envelope) }
        object["alignment"] = alignment
        if envelope.hasError { object["error"] = errorObject(envelope.error) }
        return serialize(object)
    }

    /// The record that stands in for a line that could not be used.
    public static func errorRecord(seq: UInt64, message: String, input: ArraySlice<UInt8>?, totalBytes: Int) -> [UInt8] {
        var object: [String: Any] = [
            "line": seq,
            "error": ["code": "invalid_input", "message": message, "stage": "source"],
        ]
        if let input {
            if let text = String(validating: input, as: UTF8.self), input.count == totalBytes {
                object["input"] = text
            } else if input.count == totalBytes {
                object["input_base64"] = Data(input).base64EncodedString()
            } else {
                object["input_prefix_base64"] = Data(input).base64EncodedString()
                object["input_bytes"] = totalBytes
            }
        }
        return serialize(object)
    }

    static func alignmentObject(_ e: Envelope) -> [String: Any] {
        var scores: [String: Any] = [:]
        for criterion in Set(e.scores.map(\.criterion)) {
            let history = e.scores.filter { $0.criterion == criterion }
            scores[criterion] = ["before": rounded(history.first!.score), "after": rounded(history.last!.score),
                                 "model": history.last!.model]
        }
        let steps: [[String: Any]] = e.steps.map { step in
            var s: [String: Any] = [
                "criterion": step.criterion, "aligner": step.aligner, "changed": step.changed,
                "score_before": rounded(step.scoreBefore), "duration_ms": Double(step.durationNs / 10_000) / 100,
            ]
            if !step.scoreAfter.isNaN { s["score_after"] = rounded(step.scoreAfter) }
            if !step.note.isEmpty { s["note"] = step.note }
            return s
        }
        var out: [String: Any] = [
            "original_response": e.originalResponse,
            "generated": e.generated,
            "scores": scores,
            "steps": steps,
            "order": e.batch.order,
            "batch": e.batch.id,
        ]
        if e.completedUnixNs > e.receivedUnixNs && e.receivedUnixNs > 0 {
            out["latency_ms"] = Double((e.completedUnixNs - e.receivedUnixNs) / 10_000) / 100
        }
        return out
    }

    /// The squad's decisions for one sample, in the order they were taken: each inspection pass
    /// with its scores, and for each criterion in the batch's order the gate it met (sent to the
    /// aligner, or passed) with the score that decided it.
    static func trace(_ e: Envelope) -> [[String: Any]] {
        var events: [[String: Any]] = []
        var current: [String: Double] = [:]
        var pass: UInt32 = 0
        func inspection(_ k: UInt32) {
            let records = e.scores.filter { $0.pass == k }
            guard !records.isEmpty else { return }
            var scores: [String: Double] = [:]
            for r in records { scores[r.criterion] = rounded(r.score); current[r.criterion] = r.score }
            events.append(["event": "inspect", "pass": k, "scores": scores])
        }
        inspection(0)
        var steps = e.steps[...]
        for criterion in e.batch.order {
            guard let score = current[criterion] else { continue }
            let relation = score < e.batch.threshold ? "<" : "≥"
            var event: [String: Any] = [
                "event": "gate", "criterion": criterion, "score": rounded(score),
                "rule": "\(rounded(score)) \(relation) \(e.batch.threshold)",
            ]
            if let step = steps.first, step.criterion == criterion {
                steps = steps.dropFirst()
                pass += 1
                event["decision"] = "aligned"
                event["changed"] = step.changed
                if !step.note.isEmpty { event["note"] = step.note }
                events.append(event)
                inspection(pass)
            } else {
                event["decision"] = score >= e.batch.threshold ? "passed"
                    : e.batch.notAligned.contains(criterion) ? "aligner off" : "not reached"
                events.append(event)
            }
        }
        if e.hasError { events.append(["event": "error", "stage": e.error.stage, "message": e.error.message]) }
        return events
    }

    static func errorObject(_ error: EnvelopeError) -> [String: Any] {
        let code: String
        switch error.code {
        case .invalidInput: code = "invalid_input"
        case .modelFailed: code = "model_failed"
        case .noWorker: code = "no_worker"
        case .retriesExhausted: code = "retries_exhausted"
        case .internal: code = "internal"
        default: code = "unspecified"
        }
        return ["code": code, "message": error.message, "stage": error.stage]
    }

    static func serialize(_ object: [String: Any]) -> [UInt8] {
        let data = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes]))
            ?? Data(#"{"error":{"code":"internal","message":"output could not be encoded"}}"#.utf8)
        return Array(data)
    }

    private static func rounded(_ x: Double) -> Double { x.isFinite ? (x * 10_000).rounded() / 10_000 : 0 }

    private static func typeName(_ value: Any) -> String {
        switch value {
        case is String: "a string"
        case is [Any]: "an array"
        case is [String: Any]: "an object"
        case is NSNull: "null"
        case let n as NSNumber: n.objCType.pointee == CChar(UInt8(ascii: "c")) ? "a boolean" : "a number"
        default: "\(type(of: value))"
        }
    }

    private static func jsonErrorText(_ error: Error) -> String {
        let ns = error as NSError
        return (ns.userInfo[NSDebugDescriptionErrorKey] as? String) ?? ns.localizedDescription
    }
}
