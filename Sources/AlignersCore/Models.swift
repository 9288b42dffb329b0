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
