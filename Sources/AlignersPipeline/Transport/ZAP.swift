import Foundation
import Logging
import Synchronization

/// The kinds of peer a CURVE router admits, each on its own sockets and with its own allowlist.
public enum PeerKind: String, Sendable, CaseIterable {
    case client, worker, tap

    /// The ZAP domain of the router socket such peers connect to: how the ZAP handler tells which
    /// allowlist applies to a handshake.
    var zapDomain: String { "aligners.\(rawValue)" }
}

/// Who may connect to a CURVE router: the public keys in the allowlist files, per kind of peer.
/// `reload()` reads the files again (SIGHUP); thread-safe.
public final class PeerAllowlists: Sendable {
    public struct Files: Sendable, Equatable {
        public var clients: String
        public var workers: String
        /// Tap subscribers; nil: the clients' list (a client may watch the tap).
        public var tap: String?
        public init(clients: String, workers: String, tap: String? = nil) {
            self.clients = clients
            self.workers = workers
            self.tap = tap
        }
    }

    /// Keys per kind, and their labels.
    private struct Lists {
        var keys: [PeerKind: [String: String]] = [:]
    }

    public let files: Files
    private let lists: Mutex<Lists>
    private let generationCounter = Atomic<UInt64>(0)

    /// Reads every file; throws (naming the file and line) when one cannot be read or parsed.
    public init(_ files: Files) throws {
        self.files = files
        lists = Mutex(try Self.load(files))
    }

    /// Reads the files again. All or nothing: on an error the lists stay as they were.
    /// Returns how many keys each kind now has.
    @discardableResult
    public func reload() throws -> [PeerKind: Int] {
        let fresh = try Self.load(files)
        lists.withLock { $0 = fresh }
        generationCounter.add(1, ordering: .releasing)
        return fresh.keys.mapValues(\.count)
    }

    /// How many keys each kind has.
    public var counts: [PeerKind: Int] { lists.withLock { $0.keys.mapValues(\.count) } }

    /// Whether the Z85 public key `key` may connect as `kind`.
    public func allows(_ key: String, as kind: PeerKind) -> Bool {
        lists.withLock { $0.keys[kind]?[key] != nil }
    }

    /// The label the allowlist gives `key` (the text after `# `), for logs; nil when not listed.
    func label(of key: String, as kind: PeerKind) -> String? {
        lists.withLock { $0.keys[kind]?[key] }
    }

    /// Bumped by every successful reload, so the router knows to look at its peers again.
    var generation: UInt64 { generationCounter.load(ordering: .acquiring) }

    private static func load(_ files: Files) throws -> Lists {
        func read(_ path: String) throws -> [String: String] {
            var keys: [String: String] = [:]
            for entry in try PublicKeyList.read(from: path).entries { keys[entry.key] = entry.label }
            return keys
        }
        let clients = try read(files.clients)
        return Lists(keys: [.client: clients, .worker: try read(files.workers), .tap: try files.tap.map(read) ?? clients])
    }
}

/// The ZAP handler (RFC 27) of a CURVE router: admits a peer whose public key is on the allowlist
/// of the socket's domain, refuses (400) any other, and logs each refused key (once a minute at
/// most per key and domain: a peer trying the back end and then the tap is logged for both). Bound at `inproc://zeromq.zap.01` of the router's context; the router's thread serves it.
final class ZAPHandler {
    static let endpoint = "inproc://zeromq.zap.01"
    let socket: ZMQSocket
    private let allowlists: PeerAllowlists
    private let logger: Logger
    /// Per refused key and domain: when it was last logged, and the refusals since.
    private var refusalLog: [String: (loggedAt: UInt64, unlogged: Int)] = [:]
    /// Handshakes refused so far.
    private(set) var refused = 0

    init(context: ZMQContext, allowlists: PeerAllowlists, logger: Logger) throws {
        self.allowlists = allowlists
        self.logger = logger
        socket = try ZMQSocket(context, .rep)
        do { try socket.bind(Self.endpoint) } catch {
            throw CurveError("cannot start the ZAP handler (\(error)): another one is bound on this ZeroMQ context")
        }
    }

    /// Answers every request waiting.
    func serve() throws {
        while let request = try socket.receive(dontWait: true) {
            try socket.send(answer(request))
        }
    }

    /// The reply to one request: version, request id, status code, status text, user id (the
    /// peer's Z85 key, which the router reads back from its messages), metadata.
    func answer(_ request: [[UInt8]]) -> [[UInt8]] {
        guard request.count >= 6, String(decoding: request[0], as: UTF8.self) == "1.0" else {
            return [Array("1.0".utf8), request.count > 1 ? request[1] : [], Array("500".utf8), Array("malformed ZAP request".utf8), [], []]
        }
        let requestID = request[1]
        let domain = String(decoding: request[2], as: UTF8.self)
        let address = String(decoding: request[3], as: UTF8.self)
        let mechanism = String(decoding: request[5], as: UTF8.self)
        func reply(_ code: String, _ text: String, user: String = "") -> [[UInt8]] {
            [Array("1.0".utf8), requestID, Array(code.utf8), Array(text.utf8), Array(user.utf8), []]
        }
        guard mechanism == "CURVE", request.count == 7, request[6].count == 32 else {
            refuse(key: "(\(mechanism) mechanism)", domain: domain, address: address, why: "not a CURVE handshake")
            return reply("400", "CURVE required")
        }
        let key = Curve.encode(request[6])
        guard let kind = PeerKind.allCases.first(where: { $0.zapDomain == domain }) else {
            refuse(key: key, domain: domain, address: address, why: "unknown ZAP domain")
            return reply("400", "unknown domain")
        }
        guard allowlists.allows(key, as: kind) else {
            refuse(key: key, domain: domain, address: address, why: "key not in the \(kind.rawValue)s' allowlist")
            return reply("400", "key not allowed")
        }
        logger.debug("peer admitted", metadata: ["peer": "\(kind.rawValue)", "key": "\(key)", "address": "\(address)",
                                                  "label": "\(allowlists.label(of: key, as: kind) ?? "")"])
        return reply("200", "OK", user: key)
    }

    private func refuse(key: String, domain: String, address: String, why: String) {
        refused += 1
        PipelineMetrics.shared.count("aligners_peers_refused_total", [("domain", domain)])
        let now = monotonicNanos()
        // A refused peer retries every 100 ms or so: one line per key and domain per minute says enough.
        let entry = "\(domain) \(key)"
        if let last = refusalLog[entry], now - last.loggedAt < 60_000_000_000 {
            refusalLog[entry]!.unlogged += 1
            return
        }
        if refusalLog.count >= 1024 { refusalLog.removeAll() }   // bounded, whatever a scanner sends
        let since = refusalLog[entry]?.unlogged ?? 0
        refusalLog[entry] = (now, 0)
        logger.warning("peer refused", metadata: ["reason": "\(why)", "key": "\(key)", "domain": "\(domain)",
                                                   "address": "\(address)", "refused_since_last_line": "\(since)"])
    }
}
