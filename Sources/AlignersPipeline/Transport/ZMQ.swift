import CZeroMQ
import Foundation

/// A small Swift face on libzmq. A `ZMQSocket` belongs to the one thread that made it (ZeroMQ's
/// rule); only the context is shared.
public struct ZMQError: Error, CustomStringConvertible {
    public let code: Int32
    public let operation: String
    public var description: String { "\(operation): \(String(cString: zmq_strerror(code)))" }
    static func last(_ operation: String) -> ZMQError { ZMQError(code: zmq_errno(), operation: operation) }
    var isInterrupted: Bool { code == EINTR }
    var isTerminated: Bool { code == ETERM }
}

public final class ZMQContext: @unchecked Sendable {
    let handle: UnsafeMutableRawPointer

    public init(ioThreads: Int32 = 1) {
        handle = zmq_ctx_new()!
        zmq_ctx_set(handle, ZMQ_IO_THREADS, ioThreads)
        zmq_ctx_set(handle, ZMQ_BLOCKY, 0)
    }

    /// Makes blocking calls on every socket of the context return ETERM.
    public func shutdown() { zmq_ctx_shutdown(handle) }

    deinit { zmq_ctx_term(handle) }
}

public final class ZMQSocket {
    public enum Kind {
        case router, dealer, pub, sub, pair, push, pull, rep
        var raw: Int32 {
            switch self {
            case .router: ZMQ_ROUTER
            case .dealer: ZMQ_DEALER
            case .pub: ZMQ_PUB
            case .sub: ZMQ_SUB
            case .pair: ZMQ_PAIR
            case .push: ZMQ_PUSH
            case .pull: ZMQ_PULL
            case .rep: ZMQ_REP
            }
        }
    }

    let handle: UnsafeMutableRawPointer
    private var closed = false
    /// Keeps the context alive while the socket is (terminating a context waits for its sockets).
    private let context: ZMQContext

    public init(_ context: ZMQContext, _ kind: Kind) throws {
        guard let h = zmq_socket(context.handle, kind.raw) else { throw ZMQError.last("zmq_socket") }
        handle = h
        self.context = context
        try set(ZMQ_LINGER, 0)
        // Flow control is ours (credit); high-water marks only guard against misbehaving peers.
        try set(ZMQ_SNDHWM, 100_000)
        try set(ZMQ_RCVHWM, 100_000)
    }

    deinit { close() }

    public func close() {
        if !closed { zmq_close(handle); closed = true }
    }

    public func set(_ option: Int32, _ value: Int32) throws {
        var v = value
        guard zmq_setsockopt(handle, option, &v, MemoryLayout<Int32>.size) == 0 else {
            throw ZMQError.last("zmq_setsockopt(\(option))")
        }
    }

    public func set(_ option: Int32, bytes: [UInt8]) throws {
        let rc = bytes.withUnsafeBytes { zmq_setsockopt(handle, option, $0.baseAddress, $0.count) }
        guard rc == 0 else { throw ZMQError.last("zmq_setsockopt(\(option))") }
    }

    /// Inbound messages larger than this drop the peer's connection (libzmq's ZMQ_MAXMSGSIZE):
    /// a stray or hostile peer cannot make the process buffer a frame of any size.
    public func setMaxMessageSize(_ bytes: Int) throws {
        var v = Int64(bytes)
        guard zmq_setsockopt(handle, ZMQ_MAXMSGSIZE, &v, MemoryLayout<Int64>.size) == 0 else {
            throw ZMQError.last("zmq_setsockopt(ZMQ_MAXMSGSIZE)")
        }
    }

    /// A ROUTER reports an unknown or vanished peer (EHOSTUNREACH) instead of dropping silently.
    public func setRouterMandatory() throws { try set(ZMQ_ROUTER_MANDATORY, 1) }

    /// Subscribes a SUB socket to every topic.
    public func subscribeAll() throws { try set(ZMQ_SUBSCRIBE, bytes: []) }

    public func bind(_ endpoint: String) throws {
        guard zmq_bind(handle, endpoint) == 0 else { throw ZMQError.last("bind \(endpoint)") }
    }

    public func connect(_ endpoint: String) throws {
        guard zmq_connect(handle, endpoint) == 0 else { throw ZMQError.last("connect \(endpoint)") }
    }

    /// The endpoint actually bound (resolves `tcp://127.0.0.1:*` to a port).
    public var lastEndpoint: String {
        var buffer = [CChar](repeating: 0, count: 512)
        var size = buffer.count
        zmq_getsockopt(handle, ZMQ_LAST_ENDPOINT, &buffer, &size)
        let bytes = buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// Sends a multipart message. Returns false when it would block (`dontWait`) or, on a ROUTER
    /// with ROUTER_MANDATORY, when the peer is gone.
    @discardableResult
    public func send(_ frames: [[UInt8]], dontWait: Bool = false) throws -> Bool {
        for (i, frame) in frames.enumerated() {
            var flags: Int32 = i < frames.count - 1 ? ZMQ_SNDMORE : 0
            if dontWait { flags |= ZMQ_DONTWAIT }
            let rc = frame.withUnsafeBytes { zmq_send(handle, $0.baseAddress, $0.count, flags) }
            if rc < 0 {
                let err = ZMQError.last("zmq_send")
                if err.code == EAGAIN || err.code == EHOSTUNREACH { return false }
                throw err
            }
        }
        return true
    }

    /// Receives one multipart message; nil when none is waiting and `dontWait` is set.
    public func receive(dontWait: Bool = false) throws -> [[UInt8]]? {
        try receiveMessage(dontWait: dontWait, userID: false)?.frames
    }

    /// Receives one multipart message and the ZAP user id its sender's connection was admitted under
    /// (on a CURVE router, the peer's public key in Z85; "" without ZAP).
    public func receiveWithUserID(dontWait: Bool = false) throws -> (frames: [[UInt8]], userID: String)? {
        try receiveMessage(dontWait: dontWait, userID: true)
    }

    private func receiveMessage(dontWait: Bool, userID wantUserID: Bool) throws -> (frames: [[UInt8]], userID: String)? {
        var frames: [[UInt8]] = []
        let msg = UnsafeMutablePointer<zmq_msg_t>.allocate(capacity: 1)
        defer { msg.deallocate() }
        while true {
            zmq_msg_init(msg)
            defer { zmq_msg_close(msg) }
            if zmq_msg_recv(msg, handle, dontWait ? ZMQ_DONTWAIT : 0) < 0 {
                let err = ZMQError.last("zmq_msg_recv")
                if err.code == EAGAIN && frames.isEmpty { return nil }
                throw err
            }
            let size = zmq_msg_size(msg)
            let data = zmq_msg_data(msg)!
            frames.append(Array(UnsafeRawBufferPointer(start: data, count: size)))
            if zmq_msg_more(msg) == 0 {
                // Metadata rides on the frames the peer sent (a ROUTER's identity frame has none).
                let userID = wantUserID ? zmq_msg_gets(msg, "User-Id").map { String(cString: $0) } ?? "" : ""
                return (frames, userID)
            }
        }
    }
}

/// Something `ZMQPoller` waits on: a socket, or a plain descriptor (a `Mailbox`'s).
enum PollTarget {
    case socket(ZMQSocket)
    case fd(Int32)
}

/// Waits on several sockets at once.
public struct ZMQPoller {
    private var items: [zmq_pollitem_t]

    /// Polls `sockets`, then plain file descriptors `fds` (e.g. a `Mailbox`'s), for input.
    public init(_ sockets: [ZMQSocket], fds: [Int32] = []) {
        items = sockets.map { zmq_pollitem_t(socket: $0.handle, fd: 0, events: Int16(ZMQ_POLLIN), revents: 0) }
            + fds.map { zmq_pollitem_t(socket: nil, fd: $0, events: Int16(ZMQ_POLLIN), revents: 0) }
    }

    /// Polls `targets` for input, in their order.
    init(_ targets: [PollTarget]) {
        items = targets.map {
            switch $0 {
            case .socket(let socket): zmq_pollitem_t(socket: socket.handle, fd: 0, events: Int16(ZMQ_POLLIN), revents: 0)
            case .fd(let fd): zmq_pollitem_t(socket: nil, fd: fd, events: Int16(ZMQ_POLLIN), revents: 0)
            }
        }
    }

    /// Returns which are readable, in the order given (sockets before descriptors with `init(_:fds:)`);
    /// `timeoutMs` -1 waits forever.
    public mutating func poll(timeoutMs: Int) throws -> [Bool] {
        let rc = zmq_poll(&items, Int32(items.count), timeoutMs)
        if rc < 0 {
            let err = ZMQError.last("zmq_poll")
            if err.isInterrupted { return Array(repeating: false, count: items.count) }
            throw err
        }
        return items.map { $0.revents & Int16(ZMQ_POLLIN) != 0 }
    }
}
