import AlignersSchema
import SwiftProtobuf

public typealias Envelope = Aligners_V1_Envelope
public typealias WireMessage = Aligners_V1_Message
public typealias EnvelopeError = Aligners_V1_Error

/// What a worker serves, typed; `name` is how it travels (`generate`, `inspect`, `align.helpful`).
public enum StageService: Hashable, Sendable {
    case generate
    /// One job scores a chunk of samples on every criterion of the squad (one encoder pass where
    /// the inspectors share a model); the worker announces its criteria when it registers.
    case inspect
    case align(String)

    public var name: String {
        switch self {
        case .generate: "generate"
        case .inspect: "inspect"
        case .align(let c): "align.\(c)"
        }
    }

    /// Parses a registered name; nil for one no stage serves (e.g. a per-criterion `inspect.ethical`
    /// of builds before one inspection service).
    public init?(name: String) {
        switch name {
        case "generate": self = .generate
        case "inspect": self = .inspect
        default:
            guard name.hasPrefix("align."), name.count > 6 else { return nil }
            self = .align(String(name.dropFirst(6)))
        }
    }

    /// The criterion of an aligner service.
    public var criterion: String? {
        if case .align(let c) = self { c } else { nil }
    }

    /// The `aligners worker --role` that serves it.
    public var role: String {
        switch self {
        case .generate: "generator"
        case .inspect: "inspector"
        case .align: "aligner"
        }
    }
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

    /// A heartbeat announcing the sender's own timing (see `HeartbeatSettings.expiryNs(peer:)`).
    static func heartbeat(_ settings: HeartbeatSettings) -> WireMessage {
        var hb = Aligners_V1_Heartbeat()
        hb.sentUnixNs = unixNanos()
        hb.timing = settings.timing
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

    /// How long a peer that heartbeats with `peer`'s timing may stay silent before we count it
    /// dead: our liveness, at the slower of the two intervals. A peer is never expected to beat
    /// faster than it said it would, so a mismatch cannot make a live peer look dead.
    func expiryNs(peer: HeartbeatSettings?) -> UInt64 {
        guard let peer else { return expiryNs }
        return UInt64(max(intervalMs, peer.intervalMs)) * 1_000_000 * UInt64(liveness)
    }

    var timing: Aligners_V1_HeartbeatTiming {
        var t = Aligners_V1_HeartbeatTiming()
        t.intervalMs = UInt32(clamping: intervalMs)
        t.liveness = UInt32(clamping: liveness)
        return t
    }

    /// A peer's announced timing; nil when it announced none (or nonsense).
    init?(_ timing: Aligners_V1_HeartbeatTiming) {
        guard timing.intervalMs > 0, timing.liveness > 0 else { return nil }
        // Bounded, so a broken peer cannot make itself immortal: an hour between beats at most.
        self.init(intervalMs: Int(min(timing.intervalMs, 3_600_000)), liveness: Int(min(timing.liveness, 1000)))
    }

    /// For logs: "1000 ms × 3".
    var summary: String { "\(intervalMs) ms × \(liveness)" }
}
