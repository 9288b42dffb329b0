import AlignersCore
import AlignersPipeline
import AlignersSchema
import CZeroMQ
import Foundation
import Glibc
import Logging

/// The pipeline's own cost: envelopes per second through router + no-op workers, and the latency
/// a router hop adds, each beside raw ZeroMQ measured in the same run.
///
///     swift run -c release aligners-bench [--envelopes N] [--size BYTES] [--transport ipc|tcp]
///     swift run -c release aligners-bench --curve [--transport tcp]   (the same, CURVE off and on)
@main
struct PipelineBench {
    static func main() throws {
        let args = CommandLine.arguments
        func value(_ flag: String, _ fallback: String) -> String {
            args.firstIndex(of: flag).flatMap { $0 + 1 < args.count ? args[$0 + 1] : nil } ?? fallback
        }
        if args.contains("--codec") {
            var submit = Aligners_V1_Submit()
            submit.envelopes = (0..<64).map { envelope($0, size: 1024) }
            let bytes: [UInt8] = try WireMessage.with { $0.submit = submit }.serializedBytes()
            var t0 = monotonicNanos()
            for _ in 0..<2000 { _ = try WireMessage(serializedBytes: bytes) }
            say("decode: \(Double(monotonicNanos() - t0) / 2000 / 64) ns per envelope")
            let m = try WireMessage(serializedBytes: bytes)
            t0 = monotonicNanos()
            for _ in 0..<2000 { let _: [UInt8] = try m.serializedBytes() }
            say("encode: \(Double(monotonicNanos() - t0) / 2000 / 64) ns per envelope")
            return
        }
        if args.contains("--help") || args.contains("-h") {
            say("usage: aligners-bench [--envelopes N] [--size BYTES] [--transport ipc|tcp] [--round-trips N] [--curve]")
            say("       --curve: every measure twice, plain and with CURVE on every socket (the cost of encryption per hop)")
            say("       aligners-bench --codec    (protobuf decode/encode cost of one 1 KB envelope)")
            return
        }
        let count = Int(value("--envelopes", "200000"))!
        let size = Int(value("--size", "1024"))!
        let transport = value("--transport", "ipc")
        let roundTrips = Int(value("--round-trips", "5000"))!
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("aligners-bench-\(getpid())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        var port = 47_000 + Int(getpid() % 1000) * 4
        func endpoint(_ name: String) -> String {
            if transport == "tcp" { port += 1; return "tcp://127.0.0.1:\(port)" }
            return "ipc://\(dir.path)/\(name)"
        }
        say("pipeline benchmark: \(count) envelopes of \(size) B over \(transport), \(ProcessInfo.processInfo.activeProcessorCount) cores")
        if args.contains("--curve") {
            try compareCurve(count: count, size: size, roundTrips: roundTrips, dir: dir, endpoint: endpoint)
            return
        }

        let raw = try rawPushPull(count: count, size: size, endpoint: endpoint("raw"))
        let (routed, routerCPU) = try throughRouter(count: count, size: size, front: endpoint("front"), back: endpoint("back"))
        let rawRTT = try rawRoundTrip(n: roundTrips, size: size, endpoint: endpoint("rtt"))
        let routedRTT = try routerRoundTrip(n: roundTrips, size: size, front: endpoint("front2"), back: endpoint("back2"))

        func f(_ x: Double) -> String { String(format: "%10.0f", x) }
        func us(_ x: Double) -> String { String(format: "%8.1f µs", x) }
        say("")
        say("| measure                                   |        ours |   raw ZeroMQ | ours/raw |")
        say("|-------------------------------------------|-------------|--------------|----------|")
        say("| throughput, envelopes/s (\(size) B)            | \(f(routed)) | \(f(raw))   | \(String(format: "%7.2f×", routed / raw)) |")
        say("| router thread alone, envelopes per CPU-second | \(f(Double(count) / routerCPU)) |              |          |")
        say("| round trip, 1 envelope (client→stage→client) | \(us(routedRTT.p50)) | \(us(rawRTT.p50)) | \(String(format: "%7.2f×", routedRTT.p50 / rawRTT.p50)) |")
        say("| round trip p95                             | \(us(routedRTT.p95)) | \(us(rawRTT.p95)) | \(String(format: "%7.2f×", routedRTT.p95 / rawRTT.p95)) |")
        // Ours crosses 4 socket hops (client→router→worker→router→client), raw 2 (there and back).
        say("| cost per hop, p50                          | \(us(routedRTT.p50 / 4)) | \(us(rawRTT.p50 / 2)) | \(String(format: "%7.2f×", (routedRTT.p50 / 4) / (rawRTT.p50 / 2))) |")
        say("")
        say("throughput: raw = PUSH→PULL of \(size)-byte messages, one way; ours = client → router → no-op inspector")
        say("worker → router → client, squad policy included (one criterion, nothing below threshold).")
        say("round trip: raw = DEALER→ROUTER echo; ours = client → router → worker → router → client (2 hops each way).")
    }

    // MARK: CURVE on vs off

    /// Every measure twice in one run, plain and with CURVE on every socket (the router's allowlists
    /// and ZAP handler included), and what encryption adds per socket hop.
    static func compareCurve(count: Int, size: Int, roundTrips: Int, dir: URL, endpoint: @escaping (String) -> String) throws {
        let curve = try BenchCurve(dir: dir)
        var rows: [(measure: String, plain: Double, curve: Double, unit: String)] = []
        // Plain and CURVE alternate per measure, so a change in the machine's load shows on both.
        for (name, unit, measure) in [
            ("throughput, ours (envelopes/s)", "/s", { (c: BenchCurve?) in try throughRouter(count: count, size: size, front: endpoint("front"), back: endpoint("back"), curve: c).0 }),
            ("throughput, raw PUSH→PULL (messages/s)", "/s", { (c: BenchCurve?) in try rawPushPull(count: count, size: size, endpoint: endpoint("raw"), curve: c) }),
            ("round trip p50, ours (4 hops)", "µs", { (c: BenchCurve?) in try routerRoundTrip(n: roundTrips, size: size, front: endpoint("front2"), back: endpoint("back2"), curve: c).p50 }),
            ("round trip p50, raw echo (2 hops)", "µs", { (c: BenchCurve?) in try rawRoundTrip(n: roundTrips, size: size, endpoint: endpoint("rtt"), curve: c).p50 }),
        ] as [(String, String, (BenchCurve?) throws -> Double)] {
            let plain = try measure(nil)
            let encrypted = try measure(curve)
            rows.append((name, plain, encrypted, unit))
            say("  \(name): plain \(String(format: "%.1f", plain)), CURVE \(String(format: "%.1f", encrypted))")
        }
        func cell(_ x: Double, _ unit: String) -> String { unit == "µs" ? String(format: "%.1f µs", x) : String(format: "%.0f", x) }
        say("")
        say("| measure (\(size) B) | plain | CURVE | CURVE / plain |")
        say("|---|---:|---:|---:|")
        for row in rows {
            say("| \(row.measure) | \(cell(row.plain, row.unit)) | \(cell(row.curve, row.unit)) | \(String(format: "%.2f×", row.curve / row.plain)) |")
        }
        let oursAdded = (rows[2].curve - rows[2].plain) / 4, rawAdded = (rows[3].curve - rows[3].plain) / 2
        say("| added by CURVE per hop, p50: ours / raw | \(String(format: "%.1f µs", oursAdded)) | \(String(format: "%.1f µs", rawAdded)) | |")
        say("")
        say("ours = client → router → no-op worker → router → client, CURVE on the front and back end (ZAP allowlists);")
        say("raw = the same ZeroMQ sockets without the router (CURVE server without ZAP). Per hop: the round-trip difference")
        say("divided by the hops it crosses (ours 4, raw 2).")
    }

    // MARK: Raw ZeroMQ baselines

    static func rawPushPull(count: Int, size: Int, endpoint: String, curve: BenchCurve? = nil) throws -> Double {
        let context = ZMQContext()
        let pull = try ZMQSocket(context, .pull)
        try curve?.makeServer(pull)
        try pull.bind(endpoint)
        let payload = [UInt8](repeating: 0x61, count: size)
        // The sender closes (LINGER 0 drops what is still queued) only once everything has arrived:
        // a fixed pause lost the tail when the transfer was slower (CURVE, a loaded machine).
        let allReceived = DispatchSemaphore(value: 0)
        let sender = Thread {
            guard let push = try? ZMQSocket(context, .push) else { return }
            do {
                try curve?.makeClient(push)
                try push.connect(endpoint)
            } catch { return }
            for _ in 0..<count { _ = try? push.send([payload]) }
            allReceived.wait()
            push.close()
        }
        sender.start()
        _ = try pull.receive()  // time from the first message on (connection set up)
        let t0 = monotonicNanos()
        var received = 1
        while received < count {
            _ = try pull.receive()
            received += 1
        }
        let seconds = Double(monotonicNanos() - t0) / 1e9
        allReceived.signal()
        return Double(count - 1) / seconds
    }

    static func rawRoundTrip(n: Int, size: Int, endpoint: String, curve: BenchCurve? = nil) throws -> (p50: Double, p95: Double) {
        let context = ZMQContext()
        let ready = DispatchSemaphore(value: 0)
        let echo = Thread {
            guard let router = try? ZMQSocket(context, .router) else { return }
            do {
                try curve?.makeServer(router)
                try router.bind(endpoint)
            } catch { return }
            ready.signal()
            for _ in 0..<(n + 1) {
                guard let frames = try? router.receive() else { return }
                _ = try? router.send(frames)
            }
        }
        echo.start()
        ready.wait()
        let dealer = try ZMQSocket(context, .dealer)
        try curve?.makeClient(dealer)
        try dealer.connect(endpoint)
        let payload = [UInt8](repeating: 0x61, count: size)
        var samples: [Double] = []
        for i in 0..<(n + 1) {
            let t0 = monotonicNanos()
            try dealer.send([payload])
            _ = try dealer.receive()
            if i > 0 { samples.append(Double(monotonicNanos() - t0) / 1000) }
        }
        return percentiles(samples)
    }

    // MARK: Through the router

    static func envelope(_ i: Int, size: Int) -> Envelope {
        var e = Envelope()
        e.id = "bench-\(i)"
        e.seq = UInt64(i + 1)
        e.conversation = [Aligners_V1_Turn.with { $0.role = "user"; $0.content = "question \(i)" }]
        e.response = String(repeating: "a", count: max(1, size - 40))
        e.originalResponse = ""
        return e
    }

    static func startPipeline(front: String, back: String, batchSize: Int, windowMs: Int, jobSize: Int,
                              workers: Int, curve: BenchCurve? = nil) throws -> (Router, [Worker], ZMQContext) {
        var logger = Logger(label: "bench")
        logger.logLevel = .error
        let context = ZMQContext()
        var settings = RouterSettings(criteria: ["noop"])
        settings.batchSize = batchSize
        settings.batchWindowMs = windowMs
        settings.jobSize = jobSize
        settings.clientWindow = 4096
        let router = try Router(context: context, frontend: front, backend: back, settings: settings,
                                security: RouterSecurity(curve: curve?.server), logger: logger)
        let routerThread = Thread { try? router.run() }
        routerThread.name = "router"
        routerThread.start()
        var ws: [Worker] = []
        for _ in 0..<workers {
            var ws0 = WorkerSettings()
            ws0.credit = 4
            ws0.curve = curve?.worker
            let w = try Worker(context: context, endpoint: back, handler: InspectorStage(NoOpInspector()), settings: ws0, logger: logger)
            let t = Thread { try? w.run() }
            t.name = "worker-io"
            t.start()
            ws.append(w)
        }
        return (router, ws, context)
    }

    /// Envelopes per second end to end, and the seconds of CPU the router thread spent on them.
    static func throughRouter(count: Int, size: Int, front: String, back: String, curve: BenchCurve? = nil) throws -> (Double, Double) {
        let (router, workers, context) = try startPipeline(front: front, back: back, batchSize: 64, windowMs: 1,
                                                           jobSize: 64, workers: 1, curve: curve)
        defer { router.drain(); workers.forEach { $0.drain() } }
        let client = try ZMQSocket(context, .dealer)
        try curve?.makeClient(client)
        try client.connect(front)
        try client.send([hello()])
        let template = (0..<64).map { envelope($0, size: size) }
        let cpuAtStart = router.stats.cpuNanos
        var credit = 0
        var sent = 0
        var received = 0
        var t0: UInt64 = 0
        func handle(_ frames: [[UInt8]]) {
            guard let m = try? WireMessage(serializedBytes: frames[0]) else { return }
            if case .credit(let c) = m.kind { credit += Int(c.envelopes) }
            if case .deliver(let d) = m.kind { received += d.envelopes.count }
        }
        while received < count {
            while credit >= 64 && sent < count {
                if t0 == 0 { t0 = monotonicNanos() }
                var submit = Aligners_V1_Submit()
                submit.envelopes = template.map { var e = $0; e.seq = UInt64(sent) + e.seq; return e }
                try client.send([WireMessage.with { $0.submit = submit }.serializedBytes()])
                sent += 64
                credit -= 64
            }
            handle(try client.receive()!)
            while let frames = try client.receive(dontWait: true) { handle(frames) }
        }
        let elapsed = Double(monotonicNanos() - t0) / 1e9
        Thread.sleep(forTimeInterval: 0.1)  // the router's next loop turn records its CPU time
        let cpu = Double(router.stats.cpuNanos - cpuAtStart) / 1e9
        return (Double(received) / elapsed, cpu)
    }

    static func routerRoundTrip(n: Int, size: Int, front: String, back: String, curve: BenchCurve? = nil) throws -> (p50: Double, p95: Double) {
        let (router, workers, context) = try startPipeline(front: front, back: back, batchSize: 1, windowMs: 0,
                                                           jobSize: 1, workers: 1, curve: curve)
        defer { router.drain(); workers.forEach { $0.drain() } }
        let client = try ZMQSocket(context, .dealer)
        try curve?.makeClient(client)
        try client.connect(front)
        try client.send([hello()])
        var credit = 0
        while credit == 0 {
            let frames = try client.receive()!
            if let m = try? WireMessage(serializedBytes: frames[0]), case .credit(let c) = m.kind { credit += Int(c.envelopes) }
        }
        Thread.sleep(forTimeInterval: 0.2)  // the worker registers
        var samples: [Double] = []
        for i in 0..<(n + 1) {
            var submit = Aligners_V1_Submit()
            submit.envelopes = [envelope(i, size: size)]
            let bytes: [UInt8] = try WireMessage.with { $0.submit = submit }.serializedBytes()
            let t0 = monotonicNanos()
            try client.send([bytes])
            while true {
                let frames = try client.receive()!
                if let m = try? WireMessage(serializedBytes: frames[0]), case .deliver = m.kind { break }
            }
            if i > 0 { samples.append(Double(monotonicNanos() - t0) / 1000) }
        }
        return percentiles(samples)
    }

    static func hello() -> [UInt8] {
        (try? WireMessage.with { $0.heartbeat = Aligners_V1_Heartbeat() }.serializedBytes()) ?? []
    }

    static func percentiles(_ xs: [Double]) -> (p50: Double, p95: Double) {
        let s = xs.sorted()
        return (s[s.count / 2], s[min(s.count - 1, s.count * 95 / 100)])
    }
}

/// A stage that does no model work: isolates the pipeline's own cost.
struct NoOpInspector: Inspector {
    var criterion: String { "noop" }
    var modelName: String { "no-op" }
    func score(_ batch: [Exchange]) throws -> [Double] { Array(repeating: 1, count: batch.count) }
}

/// Unbuffered, so progress shows when piped.
func say(_ s: String) { FileHandle.standardOutput.write(Data((s + "\n").utf8)) }

/// Keys for a CURVE run: the router's pair, one client pair that every allowlist admits (the
/// benchmark's client, its workers and the raw sockets share it).
struct BenchCurve {
    let server: CurveServerKeys
    let worker: CurveClientKeys

    init(dir: URL) throws {
        let router = try CurveKeyPair.generate(), client = try CurveKeyPair.generate()
        let list = dir.appendingPathComponent("allow").path
        try "\(client.publicKey) # bench\n".write(toFile: list, atomically: true, encoding: .utf8)
        server = CurveServerKeys(keyPair: router, allowlists: try PeerAllowlists(.init(clients: list, workers: list)))
        worker = try CurveClientKeys(serverPublicKey: router.publicKey, keyPair: client)
    }

    /// A CURVE server socket without ZAP (any client key): for the raw baselines only.
    func makeServer(_ socket: ZMQSocket) throws {
        try socket.set(ZMQ_CURVE_SERVER, 1)
        try socket.set(ZMQ_CURVE_SECRETKEY, bytes: Curve.decode(server.keyPair.secretKey)!)
    }

    func makeClient(_ socket: ZMQSocket) throws {
        try socket.set(ZMQ_CURVE_SERVERKEY, bytes: Curve.decode(worker.serverPublicKey)!)
        try socket.set(ZMQ_CURVE_PUBLICKEY, bytes: Curve.decode(worker.keyPair.publicKey)!)
        try socket.set(ZMQ_CURVE_SECRETKEY, bytes: Curve.decode(worker.keyPair.secretKey)!)
    }
}
