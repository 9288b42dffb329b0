import AlignersSchema
import CZeroMQ
import Foundation
import Logging
import Testing
@testable import AlignersPipeline
import PipelineTestDoubles

/// A small seeded generator so every fuzz run is reproducible.
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

func randomBytes(_ n: Int, _ rng: inout SplitMix64) -> [UInt8] { (0..<n).map { _ in UInt8.random(in: 0...255, using: &rng) } }

/// Lines a person or a broken program might send: valid samples, truncations, junk, odd Unicode.
func fuzzLine(_ rng: inout SplitMix64) -> [UInt8] {
    let valid = #"{"prompt":"p","response":"r [bad:ethical]","x":[1,{"y":null}]}"#
    switch Int.random(in: 0..<8, using: &rng) {
    case 0: return Array(valid.utf8)
    case 1: return Array(valid.utf8.prefix(Int.random(in: 0..<valid.utf8.count, using: &rng)))
    case 2: return randomBytes(Int.random(in: 0..<200, using: &rng), &rng).filter { $0 != 10 }
    case 3: return Array(#"{"messages":[{"role":"user","content":"ñ 中文 🙂 \u0000"},{"role":"assistant","content":"a"}]}"#.utf8)
    case 4: return Array(#"{"prompt":"\#(String(repeating: "é", count: Int.random(in: 0..<500, using: &rng)))"}"#.utf8)
    case 5: return Array(#"{"messages":[{"role":5}]}"#.utf8)
    case 6: return Array(String(repeating: "[", count: Int.random(in: 1..<3000, using: &rng)).utf8)  // deep nesting
    default:
        var bytes = Array(valid.utf8)
        for _ in 0..<3 { bytes[Int.random(in: 0..<bytes.count, using: &rng)] = UInt8.random(in: 0...255, using: &rng) }
        return bytes.filter { $0 != 10 }
    }
}

@Suite("Fuzz", .serialized)
struct FuzzTests {
    @Test("random lines and bytes through the filter: one record per line, no crash, no hang",
          .timeLimit(.minutes(10)), arguments: [1, 2, 3, 4])
    func filterFuzz(seed: UInt64) throws {
        var rng = SplitMix64(state: seed)
        var input: [UInt8] = []
        var lines = 0
        for _ in 0..<400 {
            input += fuzzLine(&rng) + [10]
            lines += 1
        }
        // A final line without a newline counts as a line.
        input += randomBytes(50, &rng).filter { $0 != 10 }
        lines += 1
        let out = try runFilter(input, criteria: ["ethical"])
        #expect(out.raw.count == lines)
        #expect(out.lines.allSatisfy { !$0.isEmpty }, "every output line is a JSON object")
        #expect(out.summary.lines == lines)
    }

    @Test("random bytes into the envelope decoder never crash it", arguments: [7, 8])
    func decoderFuzz(seed: UInt64) {
        var rng = SplitMix64(state: seed)
        var valid = Envelope()
        valid.id = "x"
        valid.response = "hello"
        valid.conversation = [Aligners_V1_Turn.with { $0.role = "user"; $0.content = "q" }]
        let good = (try? valid.serializedBytes()) ?? [UInt8]()
        var decoded = 0
        for i in 0..<20_000 {
            var bytes = i % 2 == 0 ? randomBytes(Int.random(in: 0..<64, using: &rng), &rng) : good
            if i % 2 == 1 { bytes[Int.random(in: 0..<bytes.count, using: &rng)] ^= UInt8.random(in: 1...255, using: &rng) }
            if (try? Envelope(serializedBytes: bytes)) != nil { decoded += 1 }
            _ = WireMessage.decode(bytes)
        }
        #expect(decoded > 0)
    }

    /// A started in-process pipeline for the ethical criterion on the marker doubles, on inproc://
    /// sockets (the tests speak raw ZeroMQ to its router).
    static func ethicalPipeline(heartbeat: HeartbeatSettings) throws -> (ZMQContext, LocalPipeline, Logger) {
        var logger = Logger(label: "fuzz")
        logger.logLevel = .critical
        let context = ZMQContext()
        var settings = RouterSettings(criteria: ["ethical"])
        settings.batchWindowMs = 5
        settings.heartbeat = heartbeat
        let pipeline = try LocalPipeline(context: context, settings: settings,
                                         handlers: [InspectorStage(MarkerInspector(criterion: "ethical")),
                                                    AlignerStage(MarkerAligner(criterion: "ethical"))],
                                         transport: .inprocSockets, logger: logger)
        pipeline.start()
        return (context, pipeline, logger)
    }

    @Test("a worker registering again from a new socket replaces its old registration", .timeLimit(.minutes(10)))
    func reconnectedWorkerCountsOnce() throws {
        // Nothing expires during the test.
        let (context, pipeline, logger) = try Self.ethicalPipeline(heartbeat: HeartbeatSettings(intervalMs: 60_000, liveness: 5))
        var sockets: [ZMQSocket] = []
        for name in ["twin", "twin", "other"] {
            let s = try ZMQSocket(context, .dealer)
            try s.connect(pipeline.router.backendEndpoint)
            var ready = Aligners_V1_Ready()
            ready.service = "align.unused"
            ready.worker = name
            ready.credit = 1
            _ = try s.send([WireMessage(.ready(ready)).bytes()], dontWait: false)
            sockets.append(s)
        }
        // A stream through the pipeline afterwards (the registrations are handled by then).
        let filter = Filter(context: context, router: pipeline.frontend, settings: FilterSettings(), logger: logger,
                            input: try fileDescriptor(for: (0..<5).map { #"{"prompt":"q","response":"r\#($0)"}"# }),
                            output: open("/dev/null", O_WRONLY))
        #expect(try filter.run().lines == 5)
        pipeline.stop()
        for s in sockets { s.close() }
        // The pipeline's own inspector and aligner, one "twin" and one "other".
        #expect(pipeline.router.stats.workers == 4)
    }

    @Test("junk on the router's sockets is ignored and the pipeline keeps working", .timeLimit(.minutes(10)))
    func routerSocketFuzz() throws {
        let (context, pipeline, logger) = try Self.ethicalPipeline(heartbeat: HeartbeatSettings(intervalMs: 100, liveness: 5))
        defer { pipeline.stop() }
        var rng = SplitMix64(state: 99)
        let backendEndpoint = pipeline.router.backendEndpoint
        for endpoint in [pipeline.router.frontendEndpoint, backendEndpoint] {
            let junk = try ZMQSocket(context, .dealer)
            try junk.connect(endpoint)
            for i in 0..<2000 {
                let frames = (0..<Int.random(in: 1...3, using: &rng)).map { _ in randomBytes(Int.random(in: 0..<100, using: &rng), &rng) }
                if i % 10 == 0 {
                    // Well-formed messages in the wrong place or with nonsense fields.
                    var job = Aligners_V1_JobResult()
                    job.id = UInt64.random(in: 0...10, using: &rng)
                    job.attempt = 1
                    _ = try junk.send([WireMessage(.result(job)).bytes()], dontWait: true)
                    var ready = Aligners_V1_Ready()
                    ready.service = "align.nonexistent"
                    ready.credit = 0
                    _ = try junk.send([WireMessage(.ready(ready)).bytes()], dontWait: true)
                }
                _ = try junk.send(frames, dontWait: true)
            }
            junk.close()
        }
        // A real client afterwards gets every sample back.
        let filter = Filter(context: context, router: pipeline.frontend, settings: FilterSettings(), logger: logger,
                            input: try fileDescriptor(for: (0..<20).map { #"{"prompt":"q","response":"r\#($0) [bad:ethical]"}"# }),
                            output: open("/dev/null", O_WRONLY))
        let summary = try filter.run()
        #expect(summary.lines == 20)
        #expect(summary.aligned == 20)
        #expect(pipeline.router.stats.rejectedFrames > 0)
    }
}

/// A readable descriptor holding `lines` (through a temporary file).
func fileDescriptor(for lines: [String]) throws -> Int32 {
    let url = FileManager.default.temporaryDirectory.appendingPathComponent("aligners-\(UUID().uuidString).jsonl")
    try (lines.joined(separator: "\n") + "\n").write(to: url, atomically: true, encoding: .utf8)
    defer { try? FileManager.default.removeItem(at: url) }
    return open(url.path, O_RDONLY)
}

/// The events of one ZeroMQ socket (zmq_socket_monitor), for tests that must know a handshake
/// happened or a connection was closed.
final class SocketEvents {
    private let events: ZMQSocket
    private let watched: ZMQSocket
    private(set) var seen: [Int32] = []

    init(_ context: ZMQContext, watching socket: ZMQSocket) throws {
        let endpoint = "inproc://test-events-\(UUID().uuidString)"
        guard zmq_socket_monitor(socket.handle, endpoint, ZMQ_EVENT_ALL) == 0 else { throw ZMQError.last("zmq_socket_monitor") }
        watched = socket
        events = try ZMQSocket(context, .pair)
        try events.connect(endpoint)
    }

    /// Waits until `event` has been reported (true) or `seconds` pass (false).
    func wait(for event: Int32, seconds: Double = 120) -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        var poller = ZMQPoller([events])
        while !seen.contains(event) && Date() < deadline {
            guard (try? poller.poll(timeoutMs: 100))?.first == true else { continue }
            while let frames = try? events.receive(dontWait: true), frames.count == 2, frames[0].count == 6 {
                seen.append(frames[0].withUnsafeBytes { Int32($0.loadUnaligned(as: UInt16.self)) })
            }
        }
        return seen.contains(event)
    }

    func close() {
        zmq_socket_monitor(watched.handle, nil, 0)
        events.close()
    }
}

/// Connects a plain TCP socket to 127.0.0.1:`port`, sends `prefix` and then filler in 1 MB chunks,
/// up to `total` bytes, until the peer closes the connection. Returns what went out and whether
/// the peer closed it (false: everything was taken, or a send blocked for a minute).
func flood(port: Int, prefix: [UInt8], total: Int) -> (sent: Int, closedByPeer: Bool) {
    let fd = loopbackSocket(port: port)
    defer { if fd >= 0 { close(fd) } }
    guard fd >= 0 else { return (0, false) }
    var timeout = timeval(tv_sec: 60, tv_usec: 0)
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    var sent = 0
    var chunk = prefix
    let filler = [UInt8](repeating: 0xA5, count: 1 << 20)
    while sent < total {
        if chunk.isEmpty { chunk = Array(filler.prefix(total - sent)) }
        let n = chunk.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        if n < 0 { return (sent, errno == EPIPE || errno == ECONNRESET) }
        sent += n
        chunk.removeFirst(n)
    }
    return (sent, false)
}

/// Peak resident memory (VmHWM) of process `pid`, in bytes; 0 if it cannot be read.
func peakResidentBytes(_ pid: Int32) -> Int {
    guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8),
          let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmHWM:") }),
          let kb = Int(line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "") else { return 0 }
    return kb * 1024
}

@Suite("Fuzz under CURVE", .serialized)
struct CurveFuzzTests {
    /// The issue's 400 MB frame, under CURVE: a router process (the real binary, `ZMQ_MAXMSGSIZE` at
    /// its 128 MB default) is sent frames larger than that by an allowlisted client and worker,
    /// and by peers that never pass the handshake (an unknown key; raw TCP announcing a 400 MB
    /// frame; junk). Each connection is closed or refused without the frame being held: the
    /// router's peak memory stays below one such frame, its workers are never declared lost, and
    /// normal traffic afterwards comes out whole.
    @Test("huge frames from authenticated and unauthenticated peers: dropped, memory bounded, the router keeps serving",
          .timeLimit(.minutes(10)))
    func hugeFramesUnderCurve() throws {
        let group = try ProcessGroup()
        let dir = group.logDir.path
        for name in ["router", "worker", "client", "stranger"] { _ = try CurveKeyPair.generate().write(to: "\(dir)/keys", name: name) }
        try String(contentsOfFile: "\(dir)/keys/worker.pub", encoding: .utf8).write(toFile: "\(dir)/workers.allow", atomically: true, encoding: .utf8)
        try String(contentsOfFile: "\(dir)/keys/client.pub", encoding: .utf8).write(toFile: "\(dir)/clients.allow", atomically: true, encoding: .utf8)
        let frontPort = freePort(), backPort = freePort()
        let front = "tcp://127.0.0.1:\(frontPort)", back = "tcp://127.0.0.1:\(backPort)"
        // Slow heartbeats with a long liveness: only a router that stops serving loses its workers.
        let beat = ["--heartbeat-ms", "1000", "--liveness", "10"]
        let router = try group.start(builtExecutable("aligners"), [
            "router", "--frontend", front, "--backend", back, "--criteria", "ethical", "--window-ms", "5", "--log-level", "info",
            "--curve-secret-key", "\(dir)/keys/router.key", "--allow-clients", "\(dir)/clients.allow", "--allow-workers", "\(dir)/workers.allow"]
            + beat, name: "router")
        for service in ["inspect", "align.ethical"] {
            try group.start(builtExecutable("aligners-testworker"), ["--service", service, "--connect", back, "--curve-server-key",
                                                                     "\(dir)/keys/router.pub", "--curve-key", "\(dir)/keys/worker.key"] + beat,
                            name: service)
        }
        try #require(waitUntil(seconds: 120) { group.log("router").components(separatedBy: "msg=\"worker ready\"").count == 3 || !router.isRunning },
                     "\(group.log("router"))")
        let before = peakResidentBytes(router.processIdentifier)
        try #require(before > 0, "cannot read /proc/\(router.processIdentifier)/status")
        let huge = 160 << 20   // above the router's 128 MB limit

        // Raw TCP: a ZMTP 3.0 greeting asking for CURVE, then a command frame announcing 400 MB.
        var greeting: [UInt8] = [0xFF] + [UInt8](repeating: 0, count: 8) + [0x7F, 3, 0] + Array("CURVE".utf8)
        greeting += [UInt8](repeating: 0, count: 64 - greeting.count)
        var announced: [UInt8] = [0x06]   // a command, with an 8-byte size
        withUnsafeBytes(of: UInt64(400 << 20).bigEndian) { announced += $0 }
        for port in [frontPort, backPort] {
            let (sent, closed) = flood(port: port, prefix: greeting + announced, total: 64 << 20)
            #expect(closed && sent < 64 << 20, "port \(port): the router took \(sent) bytes of a frame announced as 400 MB")
        }
        // Raw junk, no greeting at all.
        var rng = SplitMix64(state: 5)
        let junk = flood(port: frontPort, prefix: randomBytes(4096, &rng), total: 16 << 20)
        #expect(junk.closedByPeer && junk.sent < 16 << 20, "the router took \(junk.sent) bytes of junk")

        // ZeroMQ peers: an allowlisted client and worker send one huge message each (the router
        // drops the connection), a stranger's key never gets past the handshake.
        let context = ZMQContext()
        let serverKey = try Curve.readPublicKey(from: "\(dir)/keys/router.pub")
        for (name, endpoint, expectRefusal) in [("client", front, false), ("worker", back, false), ("stranger", front, true), ("stranger", back, true)] {
            let socket = try ZMQSocket(context, .dealer)
            try socket.makeCurveClient(CurveClientKeys(serverPublicKey: serverKey, keyPair: CurveKeyPair.read(from: "\(dir)/keys/\(name).key")))
            let events = try SocketEvents(context, watching: socket)
            try socket.connect(endpoint)
            if expectRefusal {
                #expect(events.wait(for: ZMQ_EVENT_HANDSHAKE_FAILED_AUTH), "\(name) at \(endpoint): \(events.seen)")
                _ = try socket.send([[UInt8](repeating: 0x5A, count: huge)], dontWait: true)
            } else {
                try #require(events.wait(for: ZMQ_EVENT_HANDSHAKE_SUCCEEDED), "\(name) at \(endpoint): \(events.seen)")
                #expect(try socket.send([[UInt8](repeating: 0x5A, count: huge)]))
                #expect(events.wait(for: ZMQ_EVENT_DISCONNECTED), "the router kept \(name)'s connection after a \(huge >> 20) MB message: \(events.seen)")
            }
            events.close()
            socket.close()
        }
        #expect(router.isRunning, "\(group.log("router"))")

        // Normal traffic afterwards, through the same router.
        let input = group.logDir.appendingPathComponent("in.jsonl"), output = group.logDir.appendingPathComponent("out.jsonl")
        try Data(jsonl((0..<50).map { ["id": "s\($0)", "prompt": "q", "response": "a\($0) [bad:ethical]"] })).write(to: input)
        let filter = try group.start(builtExecutable("aligners"), ["filter", "--connect", front, "--curve-server-key", "\(dir)/keys/router.pub",
                                                                   "--curve-key", "\(dir)/keys/client.key"],
                                     name: "filter", stdin: input, stdout: output)
        #expect(waitUntil(seconds: 120) { !filter.isRunning }, "\(group.log("filter"))")
        filter.waitUntilExit()
        #expect(filter.terminationStatus == 0, "\(group.log("filter"))")
        let text = try String(contentsOf: output, encoding: .utf8)
        #expect(lineCount(output) == 50 && text.components(separatedBy: "[fixed:ethical]").count == 51)

        let after = peakResidentBytes(router.processIdentifier)
        #expect(after < huge, "the router's peak memory reached \(after >> 20) MB (from \(before >> 20) MB)")
        let log = group.log("router")
        #expect(!log.contains("msg=\"worker lost\""), "the router stopped serving its workers: \(log.suffix(3000))")
        #expect(log.contains("msg=\"peer refused\""))
        print("huge frames under CURVE: router peak memory \(before >> 20) MB before, \(after >> 20) MB after")
    }
}
