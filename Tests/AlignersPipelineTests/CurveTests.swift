import AlignersSchema
import Foundation
import Logging
import Synchronization
import Testing
@testable import AlignersPipeline
import PipelineTestDoubles

// CURVE over real tcp sockets on loopback. Waits are bounded by events (a refusal counted, a worker
// registered, a message received) with timeouts that only matter when something is broken.

/// A value shared between threads.
final class Locked<Value: Sendable>: Sendable {
    private let mutex: Mutex<Value>
    init(_ value: Value) { mutex = Mutex(value) }
    var value: Value { mutex.withLock { $0 } }
    func update(_ body: (inout Value) -> Void) { mutex.withLock { body(&$0) } }
}

/// Polls `condition` until it holds or `seconds` pass; true when it held.
func waitUntil(seconds: Double = 60, _ condition: () -> Bool) -> Bool {
    let deadline = Date().addingTimeInterval(seconds)
    while !condition() {
        if Date() > deadline { return false }
        usleep(5_000)
    }
    return true
}

/// Key pairs for the router, an allowlisted worker and client, and a stranger on no list, with
/// allowlist files listing the worker and the client.
struct CurveTestKeys {
    let dir: String
    let router: CurveKeyPair, worker: CurveKeyPair, client: CurveKeyPair, stranger: CurveKeyPair
    var workersAllow: String { "\(dir)/workers.allow" }
    var clientsAllow: String { "\(dir)/clients.allow" }

    init() throws {
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("aligners-curve-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        router = try .generate()
        worker = try .generate()
        client = try .generate()
        stranger = try .generate()
        try "# workers\n\(worker.publicKey) # worker\n".write(toFile: workersAllow, atomically: true, encoding: .utf8)
        try "\(client.publicKey) # client\n".write(toFile: clientsAllow, atomically: true, encoding: .utf8)
    }

    func server() throws -> CurveServerKeys {
        CurveServerKeys(keyPair: router, allowlists: try PeerAllowlists(.init(clients: clientsAllow, workers: workersAllow)))
    }

    func client(_ pair: CurveKeyPair) throws -> CurveClientKeys {
        try CurveClientKeys(serverPublicKey: router.publicKey, keyPair: pair)
    }
}

/// A CURVE router on tcp loopback, running on a thread of its own, and its stats as of its last turn.
final class CurveRouter: @unchecked Sendable {
    let context = ZMQContext()
    let router: Router
    let curve: CurveServerKeys
    let logger: Logger
    private let latest = Locked(RouterStats())
    private let finished = DispatchSemaphore(value: 0)

    init(keys: CurveTestKeys, criteria: [String] = ["ethical"], heartbeat: HeartbeatSettings = HeartbeatSettings(intervalMs: 100, liveness: 50),
         tap: Bool = false) throws {
        var logger = Logger(label: "curve-test")
        logger.logLevel = .critical
        self.logger = logger
        var settings = RouterSettings(criteria: criteria)
        settings.batchWindowMs = 5
        settings.jobSize = 2
        settings.heartbeat = heartbeat
        curve = try keys.server()
        router = try Router(context: context, frontend: "tcp://127.0.0.1:*", backend: "tcp://127.0.0.1:*",
                            tap: tap ? "tcp://127.0.0.1:*" : nil, settings: settings,
                            security: RouterSecurity(curve: curve), logger: logger)
        router.onTick = { [latest] stats in latest.update { $0 = stats } }
        let thread = Thread { [router, finished] in
            try? router.run()
            finished.signal()
        }
        thread.start()
    }

    var stats: RouterStats { latest.value }

    /// A worker connected with `keys`, running on a thread of its own.
    func worker(_ handler: any StageHandler, keys: CurveClientKeys?) throws -> Worker {
        var settings = WorkerSettings()
        settings.heartbeat = router.settings.heartbeat
        settings.curve = keys
        let worker = try Worker(context: context, endpoint: router.backendEndpoint, handler: handler, settings: settings, logger: logger)
        Thread { try? worker.run() }.start()
        return worker
    }

    /// Runs a filter connected with `keys` over `lines`; returns what it delivered, or its error.
    func filter(_ lines: [String], keys: CurveClientKeys?) throws -> (summary: FilterSummary, envelopes: [Envelope]) {
        var settings = FilterSettings()
        settings.heartbeat = router.settings.heartbeat
        settings.curve = keys
        let delivered = Locked<[Envelope]>([])
        let filter = Filter(context: context, endpoint: router.frontendEndpoint, settings: settings, logger: logger,
                            input: try fileDescriptor(for: lines), output: open("/dev/null", O_WRONLY))
        let summary = try filter.run { _, envelope in if let envelope { delivered.update { $0.append(envelope) } } }
        return (summary, delivered.value)
    }

    func stop() {
        router.drain()
        finished.wait()
    }
}

/// Counts the jobs a stage is given.
final class CountingStage: StageHandler {
    let inner: any StageHandler
    let jobs = Mutex(0)
    init(_ inner: any StageHandler) { self.inner = inner }
    var service: StageService { inner.service }
    var criteria: [String] { inner.criteria }
    var model: String { inner.model }
    func process(_ envelopes: [Envelope]) throws -> [Envelope] {
        jobs.withLock { $0 += 1 }
        return try inner.process(envelopes)
    }
}

/// Receives one message within `seconds`; nil if none came.
func receive(_ socket: ZMQSocket, seconds: Double = 60) throws -> WireMessage? {
    let deadline = Date().addingTimeInterval(seconds)
    var poller = ZMQPoller([socket])
    while Date() < deadline {
        if try poller.poll(timeoutMs: 100)[0], let frames = try socket.receive(dontWait: true), let frame = frames.last {
            return WireMessage.decode(frame)
        }
    }
    return nil
}

let badEthicalLines = (0..<6).map { #"{"id":"s\#($0)","prompt":"q\#($0)","response":"a\#($0) [bad:ethical]"}"# }

@Suite("CURVE and ZAP", .serialized)
struct CurveTests {
    @Test("keys generate: NAME.key (0600) and NAME.pub written, read back, never overwritten without --force", .timeLimit(.minutes(10)))
    func keyFilesRoundTrip() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("aligners-keys-\(UUID().uuidString)/nested").path
        defer { try? FileManager.default.removeItem(atPath: (dir as NSString).deletingLastPathComponent) }
        let pair = try CurveKeyPair.generate()
        #expect(Curve.decode(pair.publicKey)?.count == 32 && Curve.decode(pair.secretKey)?.count == 32)
        #expect(!"\(pair)".contains(pair.secretKey), "a key pair's description never shows the secret")
        let files = try pair.write(to: dir, name: "node-1")
        #expect(files.keyPair == "\(dir)/node-1.key" && files.publicKey == "\(dir)/node-1.pub")
        let mode = { (path: String) -> Int in ((try? FileManager.default.attributesOfItem(atPath: path))?[.posixPermissions] as? Int) ?? -1 }
        #expect(mode(files.keyPair) == 0o600)
        #expect(mode(files.publicKey) == 0o644)
        #expect(mode(dir) == 0o700)
        #expect(try CurveKeyPair.read(from: files.keyPair) == pair)
        #expect(try Curve.readPublicKey(from: files.publicKey) == pair.publicKey)
        #expect(try CurveKeyPair(secretKey: pair.secretKey) == pair, "the public key follows from the secret one")

        // Never replaced by accident; replaced with force.
        #expect(throws: CurveError.self) { try CurveKeyPair.generate().write(to: dir, name: "node-1") }
        #expect(try CurveKeyPair.read(from: files.keyPair) == pair)
        let replacement = try CurveKeyPair.generate()
        _ = try replacement.write(to: dir, name: "node-1", force: true)
        #expect(try CurveKeyPair.read(from: files.keyPair) == replacement)
        #expect(mode(files.keyPair) == 0o600)

        // A secret others can read is refused, saying what to do; so is a .pub given as a key pair and vice versa.
        chmod(files.keyPair, 0o644)
        let open = #expect(throws: CurveError.self) { try CurveKeyPair.read(from: files.keyPair) }
        #expect(open?.description.contains("chmod 600") == true)
        chmod(files.keyPair, 0o600)
        #expect(throws: CurveError.self) { try CurveKeyPair.read(from: files.publicKey) }
        #expect(throws: CurveError.self) { try Curve.readPublicKey(from: files.keyPair) }

        // The command writes the same files and refuses to overwrite them.
        let run = { (arguments: [String]) throws -> (Int32, String) in
            let p = Process()
            p.executableURL = builtExecutable("aligners")
            p.arguments = ["keys", "generate"] + arguments
            let out = Pipe()
            p.standardOutput = out
            p.standardError = out
            try p.run()
            let text = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            p.waitUntilExit()
            return (p.terminationStatus, text)
        }
        let (status, text) = try run(["--out", dir, "--name", "cli"])
        #expect(status == 0, "\(text)")
        let cli = try CurveKeyPair.read(from: "\(dir)/cli.key")
        #expect(text.contains(cli.publicKey) && !text.contains(cli.secretKey))
        #expect(try Curve.readPublicKey(from: "\(dir)/cli.pub") == cli.publicKey)
        let (again, refusal) = try run(["--out", dir, "--name", "cli"])
        #expect(again == 2 && refusal.contains("--force"), "\(refusal)")
    }

    @Test("allowlists: keys with labels and comments; a bad line names its file and line; the ZAP handler answers by domain")
    func allowlistsAndZAP() throws {
        let keys = try CurveTestKeys()
        defer { try? FileManager.default.removeItem(atPath: keys.dir) }
        // '#' is a Z85 digit: a key may start with it, a comment is '#' and a space.
        let list = try PublicKeyList.parse("# comment\n\n  \(keys.worker.publicKey)   # a worker  \n#\n", file: "f")
        #expect(list.entries == [.init(key: keys.worker.publicKey, label: "a worker")])
        let bad = #expect(throws: CurveError.self) { try PublicKeyList.parse("\(keys.worker.publicKey)\nnot-a-key\n", file: "w.allow") }
        #expect(bad?.description.hasPrefix("w.allow:2:") == true)
        #expect(throws: CurveError.self) { try PublicKeyList.parse("\(keys.worker.publicKey) trailing\n", file: "f") }

        let allowlists = try keys.server().allowlists
        #expect(allowlists.allows(keys.worker.publicKey, as: .worker))
        #expect(!allowlists.allows(keys.worker.publicKey, as: .client))
        #expect(allowlists.allows(keys.client.publicKey, as: .tap), "without --allow-tap the clients' list applies to the tap")

        var quiet = Logger(label: "zap")
        quiet.logLevel = .critical
        let handler = try ZAPHandler(context: ZMQContext(), allowlists: allowlists, logger: quiet)
        func ask(_ domain: String, _ key: CurveKeyPair, mechanism: String = "CURVE") -> [String] {
            let request = ["1.0", "7", domain, "127.0.0.1", "", mechanism].map { Array($0.utf8) } + [Curve.decode(key.publicKey)!]
            return handler.answer(request).map { String(decoding: $0, as: UTF8.self) }
        }
        #expect(ask("aligners.worker", keys.worker) == ["1.0", "7", "200", "OK", keys.worker.publicKey, ""])
        #expect(ask("aligners.client", keys.worker)[2] == "400")
        #expect(ask("aligners.worker", keys.stranger)[2] == "400")
        #expect(ask("elsewhere", keys.worker)[2] == "400")
        #expect(ask("aligners.worker", keys.worker, mechanism: "NULL")[2] == "400")
        #expect(handler.answer([Array("0.9".utf8)])[2] == Array("500".utf8))
        #expect(handler.refused == 4)
    }

    @Test("plain tcp beyond loopback is refused without --insecure; loopback, ipc and inproc are not")
    func plainNetworkNeedsInsecure() throws {
        for endpoint in ["tcp://127.0.0.1:5555", "tcp://127.3.4.5:1", "tcp://localhost:5555", "tcp://[::1]:5555", "tcp://lo:5555",
                         "tcp://10.0.0.1:7;127.0.0.1:5555", "ipc:///run/aligners/front", "inproc://x"] {
            #expect(EndpointPolicy.isLocal(endpoint), "\(endpoint)")
        }
        for endpoint in ["tcp://0.0.0.0:5555", "tcp://*:5555", "tcp://eth0:5555", "tcp://192.168.1.2:5555", "tcp://router.example:5556",
                         "tcp://[::]:5555", "tcp://128.0.0.1:1", "pgm://eth0;239.192.1.1:5555"] {
            #expect(!EndpointPolicy.isLocal(endpoint), "\(endpoint)")
        }
        var logger = Logger(label: "policy")
        logger.logLevel = .critical
        let context = ZMQContext()
        let settings = RouterSettings(criteria: ["ethical"])
        let refused = #expect(throws: PlainNetworkEndpoint.self) {
            try Router(context: context, frontend: "tcp://0.0.0.0:*", backend: "inproc://b", settings: settings, logger: logger)
        }
        #expect(refused?.description.contains("--insecure") == true && refused?.description.contains("aligners keys generate") == true)
        _ = try Router(context: context, frontend: "tcp://0.0.0.0:*", backend: "inproc://b2", settings: settings,
                       security: RouterSecurity(insecure: true), logger: logger)
        #expect(throws: PlainNetworkEndpoint.self) {
            try Worker(context: context, endpoint: "tcp://192.0.2.1:5556", handler: InspectorStage(MarkerInspector(criterion: "e")), logger: logger)
        }
        var insecure = WorkerSettings()
        insecure.insecure = true
        _ = try Worker(context: context, endpoint: "tcp://192.0.2.1:5556", handler: InspectorStage(MarkerInspector(criterion: "e")),
                       settings: insecure, logger: logger)
        let filter = Filter(context: context, endpoint: "tcp://192.0.2.1:5555", settings: FilterSettings(), logger: logger,
                            input: try fileDescriptor(for: ["{}"]), output: open("/dev/null", O_WRONLY))
        #expect(throws: PlainNetworkEndpoint.self) { try filter.run() }
        // Metrics are plain HTTP: loopback only, unless --insecure (checked before anything starts).
        #expect(throws: PlainNetworkEndpoint.self) { try MetricsEndpoint.start(port: freePort(), host: "0.0.0.0") }
    }

    @Test("allowlisted worker and client get results end to end; the tap admits listed subscribers only", .timeLimit(.minutes(10)))
    func endToEnd() throws {
        let keys = try CurveTestKeys()
        defer { try? FileManager.default.removeItem(atPath: keys.dir) }
        let pipeline = try CurveRouter(keys: keys, tap: true)
        defer { pipeline.stop() }
        #expect(pipeline.router.frontendEndpoint.hasPrefix("tcp://127.0.0.1:"))
        let workerKeys = try keys.client(keys.worker)
        let workers = [try pipeline.worker(InspectorStage(MarkerInspector(criterion: "ethical")), keys: workerKeys),
                       try pipeline.worker(AlignerStage(MarkerAligner(criterion: "ethical")), keys: workerKeys)]
        defer { workers.forEach { $0.drain() } }

        // Tap subscribers: the client's key is on the list the tap uses, the stranger's is not.
        let subscriber = try ZMQSocket(pipeline.context, .sub)
        try subscriber.makeCurveClient(keys.client(keys.client))
        try subscriber.subscribeAll()
        let intruder = try ZMQSocket(pipeline.context, .sub)
        try intruder.makeCurveClient(keys.client(keys.stranger))
        try intruder.subscribeAll()
        let intruderWatch = try HandshakeWatch(context: pipeline.context, watching: intruder)
        defer { intruderWatch.close(); intruder.close(); subscriber.close() }
        let tapEndpoint = try #require(pipeline.router.tapEndpoint)
        try subscriber.connect(tapEndpoint)
        try intruder.connect(tapEndpoint)
        #expect(waitUntil { pipeline.stats.workers == 2 && pipeline.stats.refusedPeers >= 1 }, "\(pipeline.stats)")
        var refusal: HandshakeFailure?
        #expect(waitUntil { refusal = try? intruderWatch.failures().first; return refusal != nil })
        #expect(refusal?.refused == true, "\(String(describing: refusal))")

        // A PUB drops what it publishes before a subscriber has joined: warm up until this one hears.
        var joined = false
        for _ in 0..<60 where !joined {
            #expect(try pipeline.filter([#"{"prompt":"warm-up","response":"fine"}"#], keys: keys.client(keys.client)).summary.lines == 1)
            joined = try receive(subscriber, seconds: 1) != nil
        }
        try #require(joined, "the allowlisted subscriber never received from the tap")

        let (summary, envelopes) = try pipeline.filter(badEthicalLines, keys: keys.client(keys.client))
        #expect(summary.lines == badEthicalLines.count && summary.aligned == badEthicalLines.count, "\(summary)")
        #expect(envelopes.allSatisfy { $0.response.contains("[fixed:ethical]") && !$0.hasError })
        var tapped = Set<String>()
        while tapped.count < badEthicalLines.count, let message = try receive(subscriber) {
            if case .deliver(let d) = message.kind { tapped.formUnion(d.envelopes.map(\.id).filter { $0.hasPrefix("s") }) }
        }
        #expect(tapped.count == badEthicalLines.count)
        #expect(try receive(intruder, seconds: 0.2) == nil, "a refused subscriber reads nothing")
    }

    @Test("a worker with an unknown key never gets a job; a client with one gets nothing and is told why", .timeLimit(.minutes(10)))
    func strangersRefused() throws {
        let keys = try CurveTestKeys()
        defer { try? FileManager.default.removeItem(atPath: keys.dir) }
        let pipeline = try CurveRouter(keys: keys)
        defer { pipeline.stop() }
        let strangerStage = CountingStage(InspectorStage(MarkerInspector(criterion: "ethical")))
        let stranger = try pipeline.worker(strangerStage, keys: keys.client(keys.stranger))
        #expect(waitUntil { pipeline.stats.refusedPeers >= 1 }, "the stranger's handshake is refused")
        let workerKeys = try keys.client(keys.worker)
        let workers = [try pipeline.worker(InspectorStage(MarkerInspector(criterion: "ethical")), keys: workerKeys),
                       try pipeline.worker(AlignerStage(MarkerAligner(criterion: "ethical")), keys: workerKeys)]
        defer { (workers + [stranger]).forEach { $0.drain() } }
        #expect(waitUntil { pipeline.stats.workers == 2 })

        let (summary, _) = try pipeline.filter(badEthicalLines, keys: keys.client(keys.client))
        #expect(summary.aligned == badEthicalLines.count)
        #expect(strangerStage.jobs.withLock { $0 } == 0, "the refused worker never received a job")
        #expect(pipeline.stats.workers == 2)
        let received = pipeline.stats.received

        let refused = #expect(throws: HandshakeFailure.self) {
            _ = try pipeline.filter(badEthicalLines, keys: keys.client(keys.stranger))
        }
        #expect(refused?.refused == true && refused?.description.contains("allowlist") == true, "\(String(describing: refused))")
        #expect(pipeline.stats.received == received, "nothing from the refused client reached the router")
        // A plain client cannot speak to a CURVE router either, and hears why.
        let plain = #expect(throws: HandshakeFailure.self) { _ = try pipeline.filter(badEthicalLines, keys: nil) }
        #expect(plain?.refused == false && plain?.description.contains("CURVE") == true)
    }

    @Test("reloading the allowlists admits a newly listed key and drops a removed one; a bad file keeps the old lists",
          .timeLimit(.minutes(10)))
    func reload() throws {
        let keys = try CurveTestKeys()
        defer { try? FileManager.default.removeItem(atPath: keys.dir) }
        let pipeline = try CurveRouter(keys: keys)
        defer { pipeline.stop() }
        let aligner = try pipeline.worker(AlignerStage(MarkerAligner(criterion: "ethical")), keys: keys.client(keys.worker))
        // The only inspector has a key no list holds yet.
        let late = try CurveKeyPair.generate()
        let inspector = try pipeline.worker(InspectorStage(MarkerInspector(criterion: "ethical")), keys: keys.client(late))
        defer { [aligner, inspector].forEach { $0.drain() } }
        #expect(waitUntil { pipeline.stats.refusedPeers >= 1 && pipeline.stats.workers == 1 })

        let original = try String(contentsOfFile: keys.workersAllow, encoding: .utf8)
        try (original + "\(late.publicKey) # late\n").write(toFile: keys.workersAllow, atomically: true, encoding: .utf8)
        #expect(try pipeline.router.reloadAllowlists()[.worker] == 2)
        #expect(waitUntil { pipeline.stats.workers == 2 }, "the inspector gets in at its next attempt")
        let (summary, envelopes) = try pipeline.filter(badEthicalLines, keys: keys.client(keys.client))
        #expect(summary.aligned == badEthicalLines.count)
        #expect(envelopes.allSatisfy { $0.scores.map(\.score) == [0.1, 0.9] })

        // A file that does not parse: the reload fails and the lists in force stay.
        try "garbage\n".write(toFile: keys.workersAllow, atomically: true, encoding: .utf8)
        #expect(throws: CurveError.self) { try pipeline.router.reloadAllowlists() }
        #expect(pipeline.curve.allowlists.allows(late.publicKey, as: .worker) && pipeline.curve.allowlists.allows(keys.worker.publicKey, as: .worker))
        #expect(pipeline.stats.workers == 2)

        // Removing a key drops the worker connected with it.
        try original.write(toFile: keys.workersAllow, atomically: true, encoding: .utf8)
        try pipeline.router.reloadAllowlists()
        #expect(waitUntil { pipeline.stats.workers == 1 && pipeline.stats.droppedWorkers == 1 }, "\(pipeline.stats)")
    }

    enum Garbage: String, CaseIterable {
        case nan, aboveOne, negative, missingScore, unknownJob, foreignEnvelope
    }

    @Test("a worker that answers with garbage is dropped and its job re-run by a good worker", .timeLimit(.minutes(10)),
          arguments: Garbage.allCases)
    func garbageWorker(garbage: Garbage) throws {
        let keys = try CurveTestKeys()
        defer { try? FileManager.default.removeItem(atPath: keys.dir) }
        // Nothing expires during the test: the hand-driven worker sends no heartbeats.
        let pipeline = try CurveRouter(keys: keys, heartbeat: HeartbeatSettings(intervalMs: 100, liveness: 600))
        defer { pipeline.stop() }
        let aligner = try pipeline.worker(AlignerStage(MarkerAligner(criterion: "ethical")), keys: keys.client(keys.worker))

        // The only inspector at first: a socket driven by hand.
        let bad = try ZMQSocket(pipeline.context, .dealer)
        defer { bad.close() }
        try bad.makeCurveClient(keys.client(keys.worker))
        try bad.connect(pipeline.router.backendEndpoint)
        var ready = Aligners_V1_Ready()
        ready.service = "inspect"
        ready.criteria = ["ethical"]
        ready.worker = "garbage-\(garbage.rawValue)"
        ready.credit = 1
        try bad.send([WireMessage(.ready(ready)).bytes()])
        #expect(waitUntil { pipeline.stats.workers == 2 })

        let outcome = Locked<Result<FilterSummary, any Error>?>(nil)
        let delivered = Locked<[Envelope]>([])
        let clientKeys = try keys.client(keys.client)
        let filterThread = Thread { [pipeline] in
            let result = Result(catching: {
                let (summary, envelopes) = try pipeline.filter(badEthicalLines, keys: clientKeys)
                delivered.update { $0 = envelopes }
                return summary
            })
            outcome.update { $0 = result }
        }
        filterThread.start()

        var job: Aligners_V1_Job?
        while job == nil, let message = try receive(bad) {
            if case .job(let j) = message.kind { job = j }
        }
        let held = try #require(job, "the hand-driven inspector got a job")
        var result = Aligners_V1_JobResult()
        result.id = garbage == .unknownJob ? 999_999 : held.id
        result.attempt = held.attempt
        result.envelopes = held.envelopes.map { sent in
            var delta = Envelope()
            delta.id = garbage == .foreignEnvelope ? "not-\(sent.id)" : sent.id
            delta.seq = sent.seq
            var record = Aligners_V1_ScoreRecord()
            record.criterion = "ethical"
            switch garbage {
            case .nan: record.score = .nan
            case .aboveOne: record.score = 1.5
            case .negative: record.score = -0.1
            default: record.score = 0.1
            }
            if garbage != .missingScore { delta.scores = [record] }
            return delta
        }
        try bad.send([WireMessage(.result(result)).bytes()])

        // Dropped, told why, and ignored from then on.
        var reason = ""
        while reason.isEmpty, let message = try receive(bad) {
            if case .disconnect(let d) = message.kind { reason = d.reason }
        }
        #expect(reason.hasPrefix("dropped: "), "\(reason)")
        #expect(waitUntil { pipeline.stats.droppedWorkers == 1 && pipeline.stats.workers == 1 })

        // A good inspector arrives and runs the job again, and everything else.
        let inspector = try pipeline.worker(InspectorStage(MarkerInspector(criterion: "ethical")), keys: keys.client(keys.worker))
        defer { [aligner, inspector].forEach { $0.drain() } }
        #expect(waitUntil { outcome.value != nil })
        let summary = try #require(outcome.value).get()
        let envelopes = delivered.value
        #expect(summary.lines == badEthicalLines.count && summary.aligned == badEthicalLines.count && summary.failed == 0, "\(summary)")
        for envelope in envelopes {
            #expect(envelope.scores.allSatisfy { $0.score.isFinite && (0...1).contains($0.score) })
            #expect(envelope.scores.map(\.score) == [0.1, 0.9], "\(envelope.id): \(envelope.scores.map(\.score))")
        }
        #expect(pipeline.stats.requeued >= 1)
    }
}
