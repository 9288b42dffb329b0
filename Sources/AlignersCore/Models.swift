/// The seams between the pipeline and model code. Models run synchronously on a worker's compute
/// thread; the pipeline keeps sockets and heartbeats on threads of their own.

/// One turn of a conversation.
public struct Turn: Sendable, Hashable, Codable {
    public var role: String
    public var content: String
    public init(role: String, content: String) {
        self.role = role
        self.content = content
    }
}

/// The pair an inspector judges and an aligner corrects: `x` (the conversation so far, ending with
/// the user's turn) and `y` (the response).
public struct Exchange: Sendable, Hashable {
    public var conversation: [Turn]
    public var response: String
    public init(conversation: [Turn], response: String) {
        self.conversation = conversation
        self.response = response
    }
}

/// Scores `(x, y)` pairs for one criterion: the probability in [0, 1] that `y` is aligned.
public protocol Inspector: Sendable {
    var criterion: String { get }
    /// Names the model in score records (e.g. `all-MiniLM-L6-v2+ethical-head@2026-11-23`).
    var modelName: String { get }
    func score(_ batch: [Exchange]) throws -> [Double]
}

/// Scores `(x, y)` pairs for several criteria at once: where the criteria share a model (heads on
/// one encoder), one pass per exchange scores them all. The squad's inspection step runs on one.
public protocol InspectorSet: Sendable {
    /// The criteria scored, in the order of each row `score` returns.
    var criteria: [String] { get }
    var modelName: String { get }
    /// Per exchange, one score per criterion of `criteria`, in that order.
    func score(_ batch: [Exchange]) throws -> [[Double]]
}

/// Inspector sets side by side (criteria on different models), and single inspectors as sets of one.
public struct InspectorGroup: InspectorSet {
    public let parts: [any InspectorSet]
    public init(_ parts: [any InspectorSet]) { self.parts = parts }
    /// One part per inspector: for inspectors that share nothing, or share through their own model.
    public init(_ inspectors: [any Inspector]) { parts = inspectors.map(OneInspector.init) }

    public var criteria: [String] { parts.flatMap(\.criteria) }
    public var modelName: String {
        var seen: [String] = []
        for part in parts where !seen.contains(part.modelName) { seen.append(part.modelName) }
        return seen.joined(separator: ",")
    }

    public func score(_ batch: [Exchange]) throws -> [[Double]] {
        var rows = [[Double]](repeating: [], count: batch.count)
        for part in parts {
            let scored = try part.score(batch)
            guard scored.count == batch.count, scored.allSatisfy({ $0.count == part.criteria.count }) else {
                throw InspectorSetError("\(part.modelName) returned \(scored.count) rows for \(batch.count) exchanges "
                                        + "(each should hold \(part.criteria.count) scores)")
            }
            for i in rows.indices { rows[i] += scored[i] }
        }
        return rows
    }
}

/// One inspector as a set of one criterion.
public struct OneInspector: InspectorSet {
    public let inspector: any Inspector
    public init(_ inspector: any Inspector) { self.inspector = inspector }
    public var criteria: [String] { [inspector.criterion] }
    public var modelName: String { inspector.modelName }
    public func score(_ batch: [Exchange]) throws -> [[Double]] { try inspector.score(batch).map { [$0] } }
}

public struct InspectorSetError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// What an aligner made of one response.
public struct Alignment: Sendable, Hashable {
    /// The corrected response, or the original when the aligner produced nothing usable.
    public var response: String
    /// Why the original was kept, when it was.
    public var note: String?
    public init(response: String, note: String? = nil) {
        self.response = response
        self.note = note
    }
}

/// Rewrites responses so that they satisfy one criterion.
public protocol Aligner: Sendable {
    var criterion: String { get }
    var modelName: String { get }
    func align(_ batch: [Exchange]) throws -> [Alignment]
}

/// Writes the response for conversations that end with the user's turn.
public protocol Generator: Sendable {
    var modelName: String { get }
    func generate(_ conversations: [[Turn]]) throws -> [String]
}
