import AlignersPipeline
import AlignersSchema
import CZeroMQ
import Foundation
import PipelineTestDoubles
import SwiftProtobuf

/// Appends envelope ids to a file, one per line, as they arrive (O_APPEND: each line whole).
final class IDRecorder: Sendable {
    private let fd: Int32

    init(path: String) throws {
        fd = open(path, O_WRONLY | O_CREAT | O_APPEND, 0o644)
        guard fd >= 0 else { throw DoubleError("cannot open --record \(path): \(String(cString: strerror(errno)))") }
    }

    func record(_ ids: [String]) {
        guard !ids.isEmpty else { return }
        let text = ids.map { $0 + "\n" }.joined()
        _ = text.utf8CString.withUnsafeBufferPointer { write(fd, $0.baseAddress, $0.count - 1) }
    }
}

/// A stage that records the ids of every envelope it is given, then lets `inner` answer.
struct RecordingStage: StageHandler {
    let inner: any StageHandler
    let recorder: IDRecorder
    init(_ inner: any StageHandler, recorder: IDRecorder) {
        self.inner = inner
        self.recorder = recorder
    }
    var service: StageService { inner.service }
    var criteria: [String] { inner.criteria }
    var model: String { inner.model }
    func process(_ envelopes: [Envelope]) throws -> [Envelope] {
        recorder.record(envelopes.map(\.id))
        return try inner.process(envelopes)
    }
}

/// `--tap ENDPOINT`: subscribes to a router's tap (a CURVE client when keys are given), records the
/// id of every envelope published, and says on stderr how each handshake went:
/// `tap handshake succeeded`, `tap handshake refused (ZAP status N)` or
/// `tap handshake failed (ZeroMQ protocol error 0xN)`. Runs until killed.
func runTapReader(endpoint: String, curve: CurveClientKeys?, recorder: IDRecorder?) -> Never {
    func say(_ line: String) { FileHandle.standardError.write(Data("\(line)\n".utf8)) }
    func check(_ rc: Int32, _ what: String) {
        if rc != 0 { fail("\(what): \(String(cString: zmq_strerror(zmq_errno())))") }
    }
    func setBytes(_ socket: UnsafeMutableRawPointer, _ option: Int32, _ bytes: [UInt8], _ what: String) {
        check(bytes.withUnsafeBytes { zmq_setsockopt(socket, option, $0.baseAddress, $0.count) }, what)
    }
    guard let context = zmq_ctx_new(), let sub = zmq_socket(context, ZMQ_SUB), let monitor = zmq_socket(context, ZMQ_PAIR) else {
        fail("cannot create ZeroMQ sockets")
    }
    if let curve {
        setBytes(sub, ZMQ_CURVE_SERVERKEY, Curve.decode(curve.serverPublicKey)!, "ZMQ_CURVE_SERVERKEY")
        setBytes(sub, ZMQ_CURVE_PUBLICKEY, Curve.decode(curve.keyPair.publicKey)!, "ZMQ_CURVE_PUBLICKEY")
        setBytes(sub, ZMQ_CURVE_SECRETKEY, Curve.decode(curve.keyPair.secretKey)!, "ZMQ_CURVE_SECRETKEY")
    }
    setBytes(sub, ZMQ_SUBSCRIBE, [], "ZMQ_SUBSCRIBE")
    let monitorEndpoint = "inproc://tap-reader-monitor"
    let events = ZMQ_EVENT_HANDSHAKE_SUCCEEDED | ZMQ_EVENT_HANDSHAKE_FAILED_AUTH | ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL
        | ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL
    check(zmq_socket_monitor(sub, monitorEndpoint, events), "zmq_socket_monitor")
    check(zmq_connect(monitor, monitorEndpoint), "connecting the monitor")
    check(zmq_connect(sub, endpoint), "connecting to \(endpoint)")
    say("tap reader connecting to \(endpoint)\(curve == nil ? " without CURVE" : " with CURVE key \(curve!.keyPair.publicKey)")")

    /// The next message on `socket`, all frames, if one is waiting.
    func receive(_ socket: UnsafeMutableRawPointer) -> [[UInt8]]? {
        var frames: [[UInt8]] = []
        while true {
            var message = zmq_msg_t()
            zmq_msg_init(&message)
            defer { zmq_msg_close(&message) }
            guard zmq_msg_recv(&message, socket, frames.isEmpty ? ZMQ_DONTWAIT : 0) >= 0 else { return nil }
            let size = zmq_msg_size(&message)
            frames.append(size == 0 ? [] : Array(UnsafeRawBufferPointer(start: zmq_msg_data(&message), count: size)))
            guard zmq_msg_more(&message) == 1 else { return frames }
        }
    }

    var items = [zmq_pollitem_t(socket: sub, fd: 0, events: Int16(ZMQ_POLLIN), revents: 0),
                 zmq_pollitem_t(socket: monitor, fd: 0, events: Int16(ZMQ_POLLIN), revents: 0)]
    while true {
        guard zmq_poll(&items, 2, 1000) >= 0 else {
            if zmq_errno() == EINTR { continue }
            fail("zmq_poll: \(String(cString: zmq_strerror(zmq_errno())))")
        }
        while let frames = receive(monitor) {
            // A monitor event: 16-bit event and 32-bit value (native order), then the endpoint.
            guard frames.count == 2, frames[0].count == 6 else { continue }
            let (event, value) = frames[0].withUnsafeBytes {
                (Int32($0.loadUnaligned(as: UInt16.self)), $0.loadUnaligned(fromByteOffset: 2, as: UInt32.self))
            }
            switch event {
            case ZMQ_EVENT_HANDSHAKE_SUCCEEDED: say("tap handshake succeeded")
            case ZMQ_EVENT_HANDSHAKE_FAILED_AUTH: say("tap handshake refused (ZAP status \(value))")
            default: say("tap handshake failed (ZeroMQ protocol error 0x\(String(value, radix: 16)))")
            }
        }
        while let frames = receive(sub) {
            guard let frame = frames.last, let message = try? Aligners_V1_Message(serializedBytes: frame),
                  case .deliver(let delivery) = message.kind else { continue }
            recorder?.record(delivery.envelopes.map(\.id))
        }
    }
}
