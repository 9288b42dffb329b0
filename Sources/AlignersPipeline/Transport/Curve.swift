import CZeroMQ
import Foundation

/// CURVE (ZeroMQ's encryption and authentication, RFC 26) keys: generated, written to files, read
/// back and put on sockets. A key is 32 bytes, written as Z85 text (40 characters).
///
/// Files:
/// - `NAME.key`, a key pair, secret (mode 0600):
///   ```
///   # comment lines start with "# "
///   public-key = <40 characters>
///   secret-key = <40 characters>
///   ```
/// - `NAME.pub` and allowlists: one public key per line, optionally followed by `# label`;
///   blank lines and lines starting with `# ` are comments. `cat *.pub > workers.allow` makes an
///   allowlist. (`#` itself is a Z85 character, so a comment is `#` followed by a space or the end
///   of the line.)
public enum Curve {
    /// Whether this libzmq can do CURVE (it needs libsodium).
    public static var isAvailable: Bool { zmq_has("curve") != 0 }

    static func requireAvailable() throws {
        guard isAvailable else {
            throw CurveError("this libzmq was built without CURVE (no libsodium): install a libzmq with CURVE "
                + "(Debian's libzmq5 has it), or run without CURVE keys on loopback or ipc:// endpoints")
        }
    }

    /// The 32 bytes of a Z85 key; nil when `text` is not one.
    public static func decode(_ text: String) -> [UInt8]? {
        guard text.utf8.count == 40 else { return nil }
        var out = [UInt8](repeating: 0, count: 32)
        return zmq_z85_decode(&out, text) == nil ? nil : out
    }

    /// The Z85 text of a 32-byte key.
    public static func encode(_ key: [UInt8]) -> String {
        precondition(key.count == 32, "a CURVE key is 32 bytes")
        var out = [CChar](repeating: 0, count: 41)
        _ = zmq_z85_encode(&out, key, key.count)
        return string(out)
    }

    /// Reads a public-key file (`NAME.pub`, or an allowlist holding one key): its one key.
    public static func readPublicKey(from path: String) throws -> String {
        let keys = try PublicKeyList.read(from: path)
        guard keys.entries.count == 1 else {
            throw CurveError("\(path) holds \(keys.entries.count) public keys; expected exactly one (a NAME.pub file)")
        }
        return keys.entries[0].key
    }
}

public struct CurveError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// A CURVE key pair in Z85. Its description shows the public key only.
public struct CurveKeyPair: Sendable, Equatable, CustomStringConvertible {
    public let publicKey: String
    public let secretKey: String

    public var description: String { "CurveKeyPair(public: \(publicKey))" }

    /// A fresh pair from libzmq (libsodium's random source).
    public static func generate() throws -> CurveKeyPair {
        try Curve.requireAvailable()
        var pub = [CChar](repeating: 0, count: 41), sec = [CChar](repeating: 0, count: 41)
        guard zmq_curve_keypair(&pub, &sec) == 0 else { throw ZMQError.last("zmq_curve_keypair") }
        return CurveKeyPair(checkedPublic: string(pub), secret: string(sec))
    }

    /// The pair whose secret key is `secretKey` (the public key is derived from it).
    public init(secretKey: String) throws {
        try Curve.requireAvailable()
        guard Curve.decode(secretKey) != nil else { throw CurveError("not a Z85 CURVE secret key (40 characters)") }
        var pub = [CChar](repeating: 0, count: 41)
        guard zmq_curve_public(&pub, secretKey) == 0 else { throw ZMQError.last("zmq_curve_public") }
        self.init(checkedPublic: string(pub), secret: secretKey)
    }

    private init(checkedPublic: String, secret: String) {
        publicKey = checkedPublic
        secretKey = secret
    }

    var publicBytes: [UInt8] { Curve.decode(publicKey)! }
    var secretBytes: [UInt8] { Curve.decode(secretKey)! }

    /// Reads a key-pair file (`NAME.key`). Refuses one that other users may read, and one whose
    /// public key does not belong to its secret key.
    public static func read(from path: String) throws -> CurveKeyPair {
        var info = stat()
        guard stat(path, &info) == 0 else {
            throw CurveError("cannot read the key file \(path): \(String(cString: strerror(errno)))")
        }
        // Group access is tolerated (systemd may hand credentials over by ACL); others' is not.
        if info.st_mode & 0o007 != 0 {
            throw CurveError("the key file \(path) is open to other users (mode \(String(info.st_mode & 0o777, radix: 8))): "
                + "run `chmod 600 \(path)`, and make a new key pair if others may have read it")
        }
        let text: String
        do { text = try String(contentsOfFile: path, encoding: .utf8) } catch {
            throw CurveError("cannot read the key file \(path): \(error.localizedDescription)")
        }
        var values: [String: String] = [:]
        for (number, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = raw.trimmingCharacters(in: .whitespaces)
            if line.isEmpty || isComment(line) { continue }
            if Curve.decode(String(line.prefix { !$0.isWhitespace })) != nil {
                throw CurveError("\(path) is a public key file (NAME.pub): give the NAME.key file that holds the secret key")
            }
            guard let eq = line.firstIndex(of: "="),
                  case let name = line[..<eq].trimmingCharacters(in: .whitespaces),
                  name == "public-key" || name == "secret-key" else {
                throw CurveError("\(path):\(number + 1): expected `public-key = …` or `secret-key = …` "
                    + "(a key pair file written by `aligners keys generate`)")
            }
            values[name] = line[line.index(after: eq)...].trimmingCharacters(in: .whitespaces)
        }
        guard let secret = values["secret-key"] else {
            throw CurveError("\(path) has no secret-key line: give the NAME.key file that `aligners keys generate` wrote, not NAME.pub")
        }
        let pair: CurveKeyPair
        do { pair = try CurveKeyPair(secretKey: secret) } catch let error as CurveError {
            throw CurveError("\(path): secret-key: \(error.description)")
        }
        if let pub = values["public-key"], pub != pair.publicKey {
            throw CurveError("\(path): public-key is not the public half of secret-key (the file was edited or mixed up)")
        }
        return pair
    }

    /// Files written by `write(to:name:force:)`.
    public struct Files: Sendable, Equatable {
        public let keyPair: String
        public let publicKey: String
    }

    /// Writes `NAME.key` (mode 0600) and `NAME.pub` (0644) into `directory`, made (0700) if missing.
    /// Refuses to replace existing files unless `force`.
    public func write(to directory: String, name: String, force: Bool = false) throws -> Files {
        guard !name.isEmpty, !name.contains("/"), !name.hasPrefix(".") else {
            throw CurveError("key name '\(name)' must be a plain file name (no '/', not starting with '.')")
        }
        let fm = FileManager.default
        var isDirectory: ObjCBool = false
        if !fm.fileExists(atPath: directory, isDirectory: &isDirectory) {
            do {
                try fm.createDirectory(atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
            } catch { throw CurveError("cannot create \(directory): \(error.localizedDescription)") }
        } else if !isDirectory.boolValue {
            throw CurveError("\(directory) is not a directory")
        }
        let files = Files(keyPair: "\(directory)/\(name).key", publicKey: "\(directory)/\(name).pub")
        if !force {
            for path in [files.keyPair, files.publicKey] where fm.fileExists(atPath: path) {
                throw CurveError("\(path) exists; pass --force to replace it (peers that list its public key must then list the new one)")
            }
        }
        let created = ISO8601DateFormatter().string(from: Date())
        try writeAtomically("""
            # aligners CURVE key pair "\(name)", made \(created). Secret: keep it mode 0600 and off shared disks.
            # Its public half is \(name).pub: list that in the router's allowlists (or give it to clients).
            public-key = \(publicKey)
            secret-key = \(secretKey)

            """, to: files.keyPair, mode: 0o600)
        try writeAtomically("\(publicKey) # \(name)\n", to: files.publicKey, mode: 0o644)
        return files
    }
}

/// Through a temporary file in the same directory, created with `mode`, then renamed: a reader
/// never sees half a key, and a secret is never readable by others, not even for a moment.
private func writeAtomically(_ text: String, to path: String, mode: mode_t) throws {
    let temporary = "\(path).tmp-\(getpid())"
    let fd = open(temporary, O_WRONLY | O_CREAT | O_EXCL, mode)
    guard fd >= 0 else { throw CurveError("cannot write \(temporary): \(String(cString: strerror(errno)))") }
    fchmod(fd, mode)   // exactly `mode`, whatever the umask
    let bytes = Array(text.utf8)
    let written = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
    let synced = fsync(fd) == 0
    close(fd)
    guard written == bytes.count, synced, rename(temporary, path) == 0 else {
        let message = String(cString: strerror(errno))
        unlink(temporary)
        throw CurveError("cannot write \(path): \(message)")
    }
}

/// A NUL-terminated buffer's text.
private func string(_ buffer: [CChar]) -> String {
    String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
}

/// Comments are `#` then a space or nothing: `#` alone also starts some Z85 keys.
func isComment(_ trimmedLine: String) -> Bool {
    trimmedLine == "#" || trimmedLine.hasPrefix("# ") || trimmedLine.hasPrefix("#\t")
}

/// A list of public keys as an allowlist file or a `NAME.pub` holds them.
struct PublicKeyList: Equatable {
    struct Entry: Equatable {
        /// Canonical Z85 (decoded and encoded again).
        let key: String
        /// The text after `# ` on its line, for logs.
        let label: String
    }
    var entries: [Entry] = []

    static func read(from path: String) throws -> PublicKeyList {
        let text: String
        do { text = try String(contentsOfFile: path, encoding: .utf8) } catch {
            throw CurveError("cannot read \(path): \(error.localizedDescription)")
        }
        return try parse(text, file: path)
    }

    static func parse(_ text: String, file: String) throws -> PublicKeyList {
        var list = PublicKeyList()
        for (number, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = raw.trimmingCharacters(in: .whitespaces)
            if line.isEmpty || isComment(line) { continue }
            let where_ = "\(file):\(number + 1)"
            if line.hasPrefix("public-key") || line.hasPrefix("secret-key") {
                throw CurveError("\(where_): this is a key pair file, which holds a secret key: give the NAME.pub file instead")
            }
            let token = String(line.prefix { !$0.isWhitespace })
            let rest = line.dropFirst(token.count).trimmingCharacters(in: .whitespaces)
            guard let bytes = Curve.decode(token) else {
                throw CurveError("\(where_): '\(token.prefix(48))' is not a Z85 CURVE public key (40 characters, as in the "
                    + "NAME.pub files `aligners keys generate` writes; comments start with '# ')")
            }
            guard rest.isEmpty || isComment(rest) else {
                throw CurveError("\(where_): unexpected text after the key (a label goes after '# ')")
            }
            let label = rest.isEmpty ? "" : String(rest.dropFirst()).trimmingCharacters(in: .whitespaces)
            list.entries.append(Entry(key: Curve.encode(bytes), label: label))
        }
        return list
    }
}

/// What a CURVE client (a worker, a filter, the tap) needs: the router's public key and its own pair.
public struct CurveClientKeys: Sendable, Equatable {
    public let serverPublicKey: String
    public let keyPair: CurveKeyPair

    public init(serverPublicKey: String, keyPair: CurveKeyPair) throws {
        guard Curve.decode(serverPublicKey) != nil else { throw CurveError("the router's public key is not a Z85 CURVE key") }
        self.serverPublicKey = serverPublicKey
        self.keyPair = keyPair
    }

    /// What to do about a plain network endpoint on the client side.
    static let remedy = "Connect with CURVE (--curve-server-key with the router's NAME.pub, --curve-key with this "
        + "peer's NAME.key; `aligners keys generate` makes keys), or through a loopback or ipc:// endpoint"

    /// From the router's `NAME.pub` and this peer's `NAME.key`.
    public init(serverKeyFile: String, keyFile: String) throws {
        try Curve.requireAvailable()
        try self.init(serverPublicKey: Curve.readPublicKey(from: serverKeyFile), keyPair: CurveKeyPair.read(from: keyFile))
    }
}

extension ZMQSocket {
    /// Makes the socket a CURVE server whose peers the ZAP handler checks under `domain`. Call
    /// before `bind`. Without a ZAP handler its handshakes fail (ZAP_ENFORCE_DOMAIN): never open.
    func makeCurveServer(_ keys: CurveKeyPair, zapDomain domain: String) throws {
        try set(ZMQ_CURVE_SERVER, 1)
        try set(ZMQ_CURVE_SECRETKEY, bytes: keys.secretBytes)
        try set(ZMQ_ZAP_DOMAIN, bytes: Array(domain.utf8))
        // ZMQ_ZAP_ENFORCE_DOMAIN (a draft option in 4.3's header, hence the number): where the
        // library has it, a handshake fails when no handler answers instead of passing unchecked.
        // The router binds its handler before these sockets and closes it after them either way.
        try? set(93, 1)
    }

    /// Makes the socket a CURVE client of the server whose public key is in `keys`. Call before `connect`.
    func makeCurveClient(_ keys: CurveClientKeys) throws {
        try set(ZMQ_CURVE_SERVERKEY, bytes: Curve.decode(keys.serverPublicKey)!)
        try set(ZMQ_CURVE_PUBLICKEY, bytes: keys.keyPair.publicBytes)
        try set(ZMQ_CURVE_SECRETKEY, bytes: keys.keyPair.secretBytes)
    }
}

/// A failed handshake with the router, as the socket monitor reports it.
public struct HandshakeFailure: Error, CustomStringConvertible, Equatable {
    public let endpoint: String
    /// ZAP refused our key (400 and the like) rather than the two sides disagreeing on the protocol.
    public let refused: Bool
    let value: Int32

    public var description: String {
        if refused {
            return "the router at \(endpoint) refused our CURVE key (ZAP status \(value)): add our public key (NAME.pub "
                + "of --curve-key) to the router's allowlist for this kind of peer and reload it (SIGHUP)"
        }
        switch value {
        case ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
            return "the router at \(endpoint) and we disagree on security: one side uses CURVE and the other does not "
                + "(give both --curve-server-key and --curve-key when the router has --curve-secret-key, and neither otherwise)"
        case ZMQ_PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC, ZMQ_PROTOCOL_ERROR_ZMTP_KEY_EXCHANGE:
            return "the CURVE handshake with \(endpoint) failed: is --curve-server-key the router's public key?"
        default:
            return "the handshake with \(endpoint) failed (ZeroMQ protocol error 0x\(String(UInt32(bitPattern: value), radix: 16)))"
        }
    }
}

/// Watches a client socket's handshakes (zmq_socket_monitor), so that a refused key or a security
/// mismatch is reported as such instead of looking like a router that never answers.
final class HandshakeWatch {
    /// Poll this; `failures()` reads it.
    let events: ZMQSocket
    private let watched: ZMQSocket
    private var closed = false

    init(context: ZMQContext, watching socket: ZMQSocket) throws {
        let endpoint = "inproc://aligners-handshakes-\(UUID().uuidString)"
        let kinds = ZMQ_EVENT_HANDSHAKE_FAILED_AUTH | ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL
        guard zmq_socket_monitor(socket.handle, endpoint, kinds) == 0 else { throw ZMQError.last("zmq_socket_monitor") }
        watched = socket
        events = try ZMQSocket(context, .pair)
        try events.connect(endpoint)
    }

    /// The failures reported since the last call.
    func failures() throws -> [HandshakeFailure] {
        var out: [HandshakeFailure] = []
        // An event: a frame of a 16-bit event and a 32-bit value (native order), then the endpoint.
        while let frames = try events.receive(dontWait: true) {
            guard frames.count == 2, frames[0].count == 6 else { continue }
            let (event, value) = frames[0].withUnsafeBytes {
                (Int32($0.loadUnaligned(as: UInt16.self)), Int32(bitPattern: $0.loadUnaligned(fromByteOffset: 2, as: UInt32.self)))
            }
            out.append(HandshakeFailure(endpoint: String(decoding: frames[1], as: UTF8.self),
                                        refused: event == ZMQ_EVENT_HANDSHAKE_FAILED_AUTH, value: value))
        }
        return out
    }

    func close() {
        guard !closed else { return }
        closed = true
        zmq_socket_monitor(watched.handle, nil, 0)
        events.close()
    }

    deinit { close() }
}

/// A DEALER connected to a router, a CURVE client when `curve` is set, with a watch on its
/// handshakes (none on inproc://, which has no handshake).
final class RouterConnection {
    let socket: ZMQSocket
    let watch: HandshakeWatch?

    init(context: ZMQContext, endpoint: String, curve: CurveClientKeys?) throws {
        socket = try ZMQSocket(context, .dealer)
        // libzmq gives up on a connection whose handshake failed, and a DEALER with no connection
        // blocks in send: time out instead, so the caller's loop goes on and sees the failure.
        try socket.set(ZMQ_SNDTIMEO, 1000)
        if let curve { try socket.makeCurveClient(curve) }
        watch = endpoint.hasPrefix("inproc://") ? nil : try HandshakeWatch(context: context, watching: socket)
        try socket.connect(endpoint)
    }

    /// The sockets to poll: the connection, then the watch's events if any.
    var pollSockets: [ZMQSocket] { [socket] + (watch.map { [$0.events] } ?? []) }

    func close() {
        watch?.close()
        socket.close()
    }
}
