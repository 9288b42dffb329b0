import AlignersSchema
import SwiftProtobuf

public typealias Envelope = Aligners_V1_Envelope
public typealias WireMessage = Aligners_V1_Message
public typealias EnvelopeError = Aligners_V1_Error

/// Service names workers register under.
public enum ServiceName {
    public static let generate = "generate"
    public static func inspect(_ criterion: String) -> String { "inspect.\(criterion)" }
    /// One job scores a sample on every criterion of the step (an inspector set on one encoder pass).
    public static let inspectAll = "inspect.*"
    public static func align(_ criterion: String) -> String { "align.\(criterion)" }
}

extension WireMessage {
    init(_ kind: OneOf_Kind) {
        self.init()
        self.kind = kind
    }

    func bytes() -> [UInt8] {
        // Encoding a well-formed message cannot fail.
        (try? serializedBytes()) ?? []
    }

    /// Decodes a frame; nil for bytes that are not a Message (junk from a stray peer).
    static func decode(_ frame: [UInt8]) -> WireMessage? {
        try? WireMessage(serializedBytes: frame)
    }

    static func heartbeat() -> WireMessage {
        var hb = Aligners_V1_Heartbeat()
        hb.sentUnixNs = unixNanos()
        return WireMessage(.heartbeat(hb))
    }

    static func disconnect(_ reason: String) -> WireMessage {
        var d = Aligners_V1_Disconnect()
        d.reason = reason
        return WireMessage(.disconnect(d))
    }
}

extension EnvelopeError {
    init(_ code: Code, _ message: String, stage: String) {
        self.init()
        self.code = code
        self.message = message
        self.stage = stage
    }
}

/// Timings shared by every peer of the router protocol.
public struct HeartbeatSettings: Sendable, Equatable {
    /// How often each side sends a heartbeat.
    public var intervalMs: Int = 1000
    /// Missed intervals after which a peer counts as dead.
    public var liveness: Int = 3
    public init(intervalMs: Int = 1000, liveness: Int = 3) {
        self.intervalMs = intervalMs
        self.liveness = liveness
    }
    var intervalNs: UInt64 { UInt64(intervalMs) * 1_000_000 }
    var expiryNs: UInt64 { intervalNs * UInt64(liveness) }
}
