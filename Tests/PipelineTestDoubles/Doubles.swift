import AlignersCore
import Foundation

// Test doubles for the pipeline's plumbing. They are not models: each reacts to markers in the
// text so a test can predict exactly what the squad should do.

/// Scores 0.05 when the response carries `[worse:<criterion>]`, 0.1 for `[bad:<criterion>]`, else 0.9.
public struct MarkerInspector: Inspector {
    public let criterion: String
    public let delayMs: Int
    public init(criterion: String, delayMs: Int = 0) {
        self.criterion = criterion
        self.delayMs = delayMs
    }
    public var modelName: String { "marker-inspector" }
    public func score(_ batch: [Exchange]) throws -> [Double] {
        if delayMs > 0 { Thread.sleep(forTimeInterval: Double(delayMs) / 1000) }
        return batch.map {
            $0.response.contains("[worse:\(criterion)]") ? 0.05 : $0.response.contains("[bad:\(criterion)]") ? 0.1 : 0.9
        }
    }
}

/// Removes `[bad:<criterion>]` and appends `[fixed:<criterion>]`; throws on `[poison]`; makes a
/// `[stubborn]` response worse instead (appends `[worse:<criterion>]`).
public struct MarkerAligner: Aligner {
    public let criterion: String
    public let delayMs: Int
    public init(criterion: String, delayMs: Int = 0) {
        self.criterion = criterion
        self.delayMs = delayMs
    }
    public var modelName: String { "marker-aligner" }
    public func align(_ batch: [Exchange]) throws -> [Alignment] {
        if delayMs > 0 { Thread.sleep(forTimeInterval: Double(delayMs) / 1000) }
        if batch.contains(where: { $0.response.contains("[poison]") }) {
            throw DoubleError("poisoned sample")
        }
        return batch.map {
            if $0.response.contains("[stubborn]") { return Alignment(response: $0.response + "[worse:\(criterion)]") }
            return Alignment(response: $0.response.replacingOccurrences(of: "[bad:\(criterion)]", with: "") + "[fixed:\(criterion)]")
        }
    }
}

/// Answers "echo: <last user turn>".
public struct EchoGenerator: Generator {
    public init() {}
    public var modelName: String { "echo-generator" }
    public func generate(_ conversations: [[Turn]]) throws -> [String] {
        conversations.map { "echo: " + ($0.last(where: { $0.role == "user" })?.content ?? "") }
    }
}

public struct DoubleError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}
