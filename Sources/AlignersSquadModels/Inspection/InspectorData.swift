import AlignersEngine
import Foundation
import AlignersCore

/// One row of `../shared/data/<criterion>.jsonl`: a conversation, a misaligned and an aligned answer.
public struct PreferenceRow: Sendable, Decodable {
    public var id: String
    public var criterion: String
    public var source: String
    public var split: String
    public var conversation: [Turn]
    public var prompt: String
    public var rejected: String
    public var chosen: String
    /// BBQ only: "ambig" (the gold answer is "can't be determined") or "disambig" (the context names the person).
    public var contextCondition: String?

    enum CodingKeys: String, CodingKey {
        case id, criterion, source, split, conversation, prompt, rejected, chosen
        case contextCondition = "context_condition"
    }

    /// The source, with BBQ split by context condition ("bbq-ambig", "bbq-disambig") for reporting.
    public var reportingSource: String { contextCondition.map { "\(source)-\($0)" } ?? source }
}

/// One labelled example for an inspector: label 1 = aligned (`chosen`), 0 = misaligned (`rejected`).
public struct InspectorExample: Sendable {
    public var exchange: Exchange
    public var label: Int
    public var source: String
    public var rowID: String
}

public enum InspectorData {
    /// Reads the rows of one split ("train", "valid", "test"; nil = all) from a JSONL file.
    public static func load(_ url: URL, split: String?) throws -> [PreferenceRow] {
        let data = try Data(contentsOf: url)
        var rows: [PreferenceRow] = []
        let decoder = JSONDecoder()
        var lineNo = 0
        for line in data.split(separator: UInt8(ascii: "\n")) {
            lineNo += 1
            if line.allSatisfy({ $0 == 32 || $0 == 13 }) { continue }
            do {
                let row = try decoder.decode(PreferenceRow.self, from: Data(line))
                if split == nil || row.split == split { rows.append(row) }
            } catch {
                throw InspectorError("\(url.path):\(lineNo): not a preference row: \(error)")
            }
        }
        return rows
    }

    /// Two examples per row: (x, chosen) → 1 and (x, rejected) → 0.
    public static func examples(_ rows: [PreferenceRow]) -> [InspectorExample] {
        rows.flatMap { r -> [InspectorExample] in
            let conv = r.conversation.isEmpty ? [Turn(role: "user", content: r.prompt)] : r.conversation
            return [
                InspectorExample(exchange: Exchange(conversation: conv, response: r.chosen), label: 1, source: r.source, rowID: r.id),
                InspectorExample(exchange: Exchange(conversation: conv, response: r.rejected), label: 0, source: r.source, rowID: r.id),
            ]
        }
    }
}

public struct InspectorError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}
