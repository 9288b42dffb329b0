import Foundation
import Synchronization

// How the router and its peers exchange `WireMessage`s. Between processes: ZeroMQ ROUTER and
// DEALER sockets, a message encoded to protobuf on each hop. In one process (`LocalPipeline`): a
// `LocalHub` of mailboxes, the values themselves. Everything above (liveness, heartbeats,
// incarnation, credit, re-queue) is the same code either way.

/// What one side of the router had waiting: a message and its sender, or frames that are not a
/// message (from a stray peer; counted as rejected).
enum RouterArrival {
    /// `key`: the sender's CURVE public key ("" without CURVE).
    case message(WireMessage, from: Identity, key: String)
    case junk
}

/// One side of the router (front end or back end) as its loop sees it. Used by the router's thread only.
protocol RouterPort: AnyObject {
    var pollTarget: PollTarget { get }
    /// For logs, and for daemons' peers: the endpoint bound.
    var endpoint: String { get }
    /// The next arrival; nil when nothing waits. Never blocks.
    func receive() throws -> RouterArrival?
    /// False when the peer is gone. Never blocks. `encoded` caches the message's protobuf bytes
    /// across sends of one message (the tap, every peer's heartbeat): a socket encodes it at most
    /// once, a hub never.
    func send(_ message: WireMessage, to peer: Identity, encoded: inout [UInt8]?) -> Bool
    func close()
}

extension RouterPort {
    func send(_ message: WireMessage, to peer: Identity) -> Bool {
        var encoded: [UInt8]?
        return send(message, to: peer, encoded: &encoded)
    }
}

/// A ROUTER socket: messages are protobuf frames after the peer's routing id.
final class ZMQRouterPort: RouterPort {
    let socket: ZMQSocket
    /// With CURVE, each message's sender key is read (ZAP's user id).
    private let readsKeys: Bool

    init(_ socket: ZMQSocket, readsKeys: Bool) {
        self.socket = socket
        self.readsKeys = readsKeys
    }

    var pollTarget: PollTarget { .socket(socket) }
    var endpoint: String { socket.lastEndpoint }

    func receive() throws -> RouterArrival? {
        let frames: [[UInt8]], key: String
        if readsKeys {
            guard let received = try socket.receiveWithUserID(dontWait: true) else { return nil }
            (frames, key) = received
        } else {
            guard let received = try socket.receive(dontWait: true) else { return nil }
            (frames, key) = (received, "")
        }
        guard frames.count == 2, let message = WireMessage.decode(frames[1]) else { return .junk }
        return .message(message, from: Identity(frames[0]), key: key)
    }

    func send(_ message: WireMessage, to peer: Identity, encoded: inout [UInt8]?) -> Bool {
        let bytes = encoded ?? message.bytes()
        encoded = bytes
        return (try? socket.send([peer.bytes, bytes], dontWait: true)) ?? false
    }

    func close() { socket.close() }
}

/// What a peer's link had waiting: a message from the router, or frames that are not one.
enum LinkArrival {
    case message(WireMessage)
    case junk
}

/// A worker's or client's connection to the router. Used by the peer's own thread only.
protocol PeerLink: AnyObject {
    /// What to poll: the link first, then whatever `handshakeFailures()` reads (ZeroMQ's watch).
    var pollTargets: [PollTarget] { get }
    /// The handshakes refused since the last call (CURVE over ZeroMQ; never in process).
    func handshakeFailures() throws -> [HandshakeFailure]
    /// Queues a message for the router; false when it could not (a send that timed out).
    @discardableResult
    func send(_ message: WireMessage) throws -> Bool
    /// The next arrival; nil when nothing waits. Never blocks.
    func receive() throws -> LinkArrival?
    func close()
}

extension RouterConnection: PeerLink {
    var pollTargets: [PollTarget] { pollSockets.map { .socket($0) } }

    func handshakeFailures() throws -> [HandshakeFailure] { try watch?.failures() ?? [] }

    @discardableResult
    func send(_ message: WireMessage) throws -> Bool { try socket.send([message.bytes()]) }

    func receive() throws -> LinkArrival? {
        guard let frames = try socket.receive(dontWait: true) else { return nil }
        guard frames.count == 1, let message = WireMessage.decode(frames[0]) else { return .junk }
        return .message(message)
    }
}

/// One side of an in-process router: what a ROUTER socket and its connected DEALERs are, as
/// mailboxes. The router's side reads one inbox (each message with its sender); each connected
/// peer has a mailbox of its own, known by an identity the hub draws. A peer that closed its link
/// is gone: sending to it fails, as on a ROUTER_MANDATORY socket.
public final class LocalHub: RouterPort, @unchecked Sendable {
    /// What the peers sent, oldest first. (`@unchecked`: the mailboxes and the peer table lock
    /// themselves; the rest is constant.)
    private let inbox: Mailbox<(Identity, WireMessage)>
    private let peers = Mutex<[Identity: Mailbox<WireMessage>]>([:])
    private let nextPeer = Atomic<UInt64>(1)
    /// For logs: which side this is.
    let endpoint: String

    init(name: String) throws {
        inbox = try Mailbox()
        endpoint = "in-process \(name)"
    }

    // The router's side.

    var pollTarget: PollTarget { .fd(inbox.wakeFD) }

    func receive() throws -> RouterArrival? {
        guard let (peer, message) = inbox.takeAvailable(limit: 1).first else { return nil }
        return .message(message, from: peer, key: "")
    }

    func send(_ message: WireMessage, to peer: Identity, encoded: inout [UInt8]?) -> Bool {
        guard let mailbox = peers.withLock({ $0[peer] }) else { return false }
        mailbox.put(message)
        return true
    }

    func close() {}

    // The peers' side.

    /// A new peer, with an identity of its own.
    func connect() throws -> LocalLink {
        let number = nextPeer.add(1, ordering: .relaxed).oldValue
        let identity = Identity(withUnsafeBytes(of: number.bigEndian) { Array($0) })
        let mailbox = try Mailbox<WireMessage>()
        peers.withLock { $0[identity] = mailbox }
        return LocalLink(hub: self, identity: identity, mailbox: mailbox)
    }

    fileprivate func submit(_ message: WireMessage, from peer: Identity) {
        inbox.put((peer, message))
    }

    fileprivate func disconnect(_ peer: Identity) {
        _ = peers.withLock { $0.removeValue(forKey: peer) }
    }
}

/// A peer's end of a `LocalHub`: its own mailbox in, the hub's inbox out.
final class LocalLink: PeerLink {
    private let hub: LocalHub
    let identity: Identity
    private let mailbox: Mailbox<WireMessage>

    fileprivate init(hub: LocalHub, identity: Identity, mailbox: Mailbox<WireMessage>) {
        self.hub = hub
        self.identity = identity
        self.mailbox = mailbox
    }

    var pollTargets: [PollTarget] { [.fd(mailbox.wakeFD)] }

    func handshakeFailures() throws -> [HandshakeFailure] { [] }

    @discardableResult
    func send(_ message: WireMessage) throws -> Bool {
        hub.submit(message, from: identity)
        return true
    }

    func receive() throws -> LinkArrival? {
        mailbox.takeAvailable(limit: 1).first.map { .message($0) }
    }

    func close() { hub.disconnect(identity) }
}

/// Where a worker or client finds its router.
public enum RouterAddress: Sendable, CustomStringConvertible {
    /// A ZeroMQ endpoint (tcp://, ipc://, inproc://).
    case endpoint(String)
    /// A router in this process, reached through one side of it (no sockets, no encoding).
    case inProcess(LocalHub)

    public var description: String {
        switch self {
        case .endpoint(let endpoint): endpoint
        case .inProcess(let hub): hub.endpoint
        }
    }

    /// A fresh connection (a new identity at the router).
    func connect(context: ZMQContext, curve: CurveClientKeys?) throws -> any PeerLink {
        switch self {
        case .endpoint(let endpoint): try RouterConnection(context: context, endpoint: endpoint, curve: curve)
        case .inProcess(let hub): try hub.connect()
        }
    }
}
