import AlignersSchema
import Foundation
import Logging
import Synchronization

public struct FilterSettings: Sendable {
    /// Write results as soon as they are ready instead of in input order.
    public var unordered = false
    /// Lines read but not yet written; bounds memory however large the input.
    public var window = 256
    /// Add the squad's per-sample trace (scores and gate decisions) to each output line.
    public var explain = false
    /// Longer lines become error records without being held in memory.
    public var maxLineBytes = 4 << 20
    /// Most bytes of envelopes in one message to the router (more go in several), below the
    /// router's `maxMessageBytes`.
    public var maxSubmitBytes = 16 << 20
    public var heartbeat = HeartbeatSettings()
    /// Give up when the router has not answered for this long (it keeps retrying until then).
    public var routerTimeoutMs = 30_000
    /// Report progress on stderr: a line redrawn in place on a terminal, else a line every 30 s.
    public var progress: FilterProgress.Mode = .off
    /// Connect as a CURVE client of a router started with `--curve-secret-key`.
    public var curve: CurveClientKeys?
    /// Allow plain tcp to an address other than loopback (logged as a warning).
    public var insecure = false
    public init() {}
}

/// What a filter run did; `exitCode` is what the process should return.
public struct FilterSummary: Sendable, Equatable {
    public var lines = 0
    public var aligned = 0
    public var untouched = 0
    public var invalid = 0
    public var failed = 0
    /// Why the output could not be written (a full disk, a closed pipe): the filter stopped reading.
    public var outputError: String?
    /// 0: every line aligned or passed; 1: some lines yielded error records; 2: the output could not be written.
    public var exitCode: Int32 { outputError != nil ? 2 : invalid + failed > 0 ? 1 : 0 }
}

/// The Unix filter: JSONL in, JSONL out, one output record per input line, streaming. Input is
/// read only while the output window has room and the router has credit, so memory stays bounded.
public final class Filter: @unchecked Sendable {
    private let context: ZMQContext
    private let router: RouterAddress
    private let settings: FilterSettings
    private let logger: Logger
    private let input: Int32
    private let output: Int32

    /// `endpoint` is a router's front end (ZeroMQ's tcp://, ipc://, inproc://).
    public convenience init(context: ZMQContext, endpoint: String, settings: FilterSettings, logger: Logger,
                            input: Int32 = STDIN_FILENO, output: Int32 = STDOUT_FILENO) {
        self.init(context: context, router: .endpoint(endpoint), settings: settings, logger: logger, input: input, output: output)
    }

    /// `router` is a router's front end: an endpoint, or an in-process pipeline's (`LocalPipeline.frontend`).
    public init(context: ZMQContext, router: RouterAddress, settings: FilterSettings, logger: Logger,
                input: Int32 = STDIN_FILENO, output: Int32 = STDOUT_FILENO) {
        self.context = context
        self.router = router
        self.settings = settings
        self.logger = logger
        self.input = input
        self.output = output
    }

    /// Runs until the input ends and every line has its output record. Blocks.
    public func run(onRecord: (@Sendable (InputLine?, Envelope?) -> Void)? = nil) throws -> FilterSummary {
        if case .endpoint(let endpoint) = router,
           let warning = try EndpointPolicy.check(endpoint, use: "connect to", encrypted: settings.curve != nil,
                                                  insecure: settings.insecure, remedy: CurveClientKeys.remedy) {
            logger.warning("\(warning)")
        }
        if settings.curve != nil { try Curve.requireAvailable() }
        let sink = OutputSink(fd: output, ordered: !settings.unordered, window: settings.window, explain: settings.explain,
                              logger: logger, onRecord: onRecord)
        let handoff = try Mailbox<ReaderItem>()
        let client = PipelineClient(context: context, router: router, heartbeat: settings.heartbeat,
                                    timeoutMs: settings.routerTimeoutMs, maxSubmitBytes: settings.maxSubmitBytes,
                                    curve: settings.curve, logger: logger)

        let readerDone = Atomic<Bool>(false)
        let reader = Thread { [self] in
            defer { readerDone.store(true, ordering: .releasing) }
            defer { handoff.put(.end) }  // whatever happened
            do {
                try readLines(into: sink, handoff: handoff)
            } catch {
                logger.error("reading input failed", metadata: ["error": "\(error)"])
                sink.finishInput(lines: sink.linesSeen)
            }
        }
        reader.name = "aligners-reader"
        reader.start()
        let progress = FilterProgress(mode: settings.progress) { (read: sink.linesSeen, summary: sink.summary) }
        defer { progress.stop() }
        try client.run(input: handoff, sink: sink)
        while !readerDone.load(ordering: .acquiring) { Thread.sleep(forTimeInterval: 0.001) }
        sink.waitUntilWritten()
        return sink.summary
    }

    /// Splits the input into lines (never holding more than `maxLineBytes` of one), parses them,
    /// and passes samples on; bad lines go straight to the sink as error records.
    private func readLines(into sink: OutputSink, handoff: Mailbox<ReaderItem>) throws {
        var buffer = [UInt8](repeating: 0, count: 1 << 16)
        var line: [UInt8] = []
        var lineBytes = 0
        var seq: UInt64 = 0

        func emit() throws {
            seq += 1
            sink.acquireSlot()
            if lineBytes > settings.maxLineBytes {
                let message = "line is \(lineBytes) bytes, over the \(settings.maxLineBytes)-byte limit (--max-line-bytes)"
                sink.reject(seq: seq, message: message, input: line[...], totalBytes: lineBytes)
            } else {
                switch JSONLines.parse(line[...], seq: seq) {
                case .success(let parsed):
                    sink.register(parsed)
                    handoff.put(.sample(parsed.envelope))
                case .failure(let error):
                    sink.reject(seq: seq, message: error.message, input: line[...], totalBytes: lineBytes)
                }
            }
            line.removeAll(keepingCapacity: true)
            lineBytes = 0
        }

        while !sink.outputFailed {
            let n = buffer.withUnsafeMutableBytes { read(input, $0.baseAddress, $0.count) }
            if n < 0 {
                if errno == EINTR { continue }
                throw StageError("read stdin: \(String(cString: strerror(errno)))")
            }
            if n == 0 { break }
            var start = 0
            for i in 0..<n where buffer[i] == UInt8(ascii: "\n") {
                append(buffer[start..<i], to: &line, count: &lineBytes)
                try emit()
                start = i + 1
                if sink.outputFailed { break }
            }
            if sink.outputFailed { break }
            append(buffer[start..<n], to: &line, count: &lineBytes)
        }
        // Nothing can be written any more: the rest of the input is not read (as `| head` expects).
        if lineBytes > 0 && !sink.outputFailed { try emit() }
        sink.finishInput(lines: Int(seq))
    }

    /// Keeps at most a prefix of an oversized line (for the error record); counts the rest.
    private func append(_ bytes: ArraySlice<UInt8>, to line: inout [UInt8], count: inout Int) {
        count += bytes.count
        let room = count - bytes.count > settings.maxLineBytes ? 0 : settings.maxLineBytes + 1 - line.count
        if room > 0 { line.append(contentsOf: bytes.prefix(room)) }
        if count > settings.maxLineBytes && line.count > 256 { line.removeSubrange(256...) }
    }
}

/// What the reader hands the client: a parsed sample, or the end of the input.
enum ReaderItem {
    case sample(Envelope)
    case end
}

/// Talks to the router's front end for the filter: submits within credit, collects deliveries,
/// and re-submits what is in flight if the router restarts: when it goes silent (a reconnection on
/// a fresh link), or when its messages carry a new incarnation (one restarted so fast that the
/// socket reconnected by itself, to a router that knows nothing of what the old one held).
final class PipelineClient {
    private let context: ZMQContext
    private let router: RouterAddress
    private let heartbeat: HeartbeatSettings
    private let timeoutNs: UInt64
    private let maxSubmitBytes: Int
    private let curve: CurveClientKeys?
    private let logger: Logger

    init(context: ZMQContext, router: RouterAddress, heartbeat: HeartbeatSettings, timeoutMs: Int, maxSubmitBytes: Int = 16 << 20,
         curve: CurveClientKeys? = nil, logger: Logger) {
        self.context = context
        self.router = router
        self.heartbeat = heartbeat
        self.timeoutNs = UInt64(timeoutMs) * 1_000_000
        self.maxSubmitBytes = maxSubmitBytes
        self.curve = curve
        self.logger = logger
    }

    private func connect() throws -> any PeerLink {
        let link = try router.connect(context: context, curve: curve)
        try link.send(.heartbeat(heartbeat))  // hello: the router answers with credit
        return link
    }

    func run(input: Mailbox<ReaderItem>, sink: OutputSink) throws {
        var link = try connect()
        defer { link.close() }
        var credit = 0
        var inFlight: [UInt64: Envelope] = [:]
        var resubmit: [Envelope] = []
        var inputDone = false
        var lastHeard = monotonicNanos()
        var lastSent = monotonicNanos()
        var silentSince = lastHeard
        var warnedSilent = false
        // The router's incarnation (0 until it first speaks) and how long its silence may last.
        var incarnation: UInt64 = 0
        var expiryNs = heartbeat.expiryNs

        while !(inputDone && inFlight.isEmpty && resubmit.isEmpty) {
            let wantInput = credit > 0 && resubmit.isEmpty && !inputDone
            let targets = link.pollTargets
            var poller = ZMQPoller(targets + (wantInput ? [.fd(input.wakeFD)] : []))
            let ready = try poller.poll(timeoutMs: min(heartbeat.intervalMs, 200))
            let now = monotonicNanos()
            // A refused key or a security mismatch will not mend by retrying: say so now.
            if targets.count > 1 && ready[1], let failure = try link.handshakeFailures().first {
                throw failure
            }
            if ready[0] {
                while let arrival = try link.receive() {
                    lastHeard = now
                    silentSince = now
                    warnedSilent = false
                    guard case .message(let message) = arrival else { continue }
                    if message.routerIncarnation != 0 && message.routerIncarnation != incarnation {
                        if incarnation != 0 {
                            // A new router: the old one's credit is void, and everything unanswered
                            // was sent to it (nothing goes to this one before its first grant).
                            logger.warning("router restarted; sending again what it held", metadata: [
                                "endpoint": "\(router)", "in_flight": "\(inFlight.count)"])
                            resubmit = inFlight.values.sorted { $0.seq < $1.seq }
                            credit = 0
                        }
                        incarnation = message.routerIncarnation
                    }
                    switch message.kind {
                    case .credit(let c):
                        credit += Int(c.envelopes)
                    case .heartbeat(let beat) where beat.hasTiming:
                        expiryNs = heartbeat.expiryNs(peer: HeartbeatSettings(beat.timing))
                    case .deliver(let d):
                        for envelope in d.envelopes where inFlight.removeValue(forKey: envelope.seq) != nil {
                            sink.deliver(envelope)
                        }
                    default:
                        break
                    }
                }
            }
            if !resubmit.isEmpty && credit > 0 {
                let chunk = Array(resubmit.prefix(credit))
                resubmit.removeFirst(chunk.count)
                try submit(chunk, on: link, incarnation: incarnation)
                credit -= chunk.count
                lastSent = now
            }
            if wantInput && ready[targets.count] {
                var batch: [Envelope] = []
                for item in input.takeAvailable(limit: credit) {
                    switch item {
                    case .sample(let envelope):
                        inFlight[envelope.seq] = envelope
                        batch.append(envelope)
                    case .end:
                        inputDone = true
                    }
                }
                if !batch.isEmpty {
                    try submit(batch, on: link, incarnation: incarnation)
                    credit -= batch.count
                    lastSent = now
                }
            }
            if now - silentSince > timeoutNs {
                throw RouterUnreachable(endpoint: "\(router)", seconds: Int(timeoutNs / 1_000_000_000), curve: curve != nil)
            }
            if now - lastHeard > expiryNs {
                // The router went away: reconnect and send again whatever it had not answered.
                if !warnedSilent {
                    logger.warning("router silent; reconnecting", metadata: ["endpoint": "\(router)", "in_flight": "\(inFlight.count)"])
                    warnedSilent = true
                }
                link.close()
                link = try connect()
                credit = 0
                resubmit = inFlight.values.sorted { $0.seq < $1.seq }
                lastHeard = now
                lastSent = now
            } else if now - lastSent >= heartbeat.intervalNs {
                try link.send(.heartbeat(heartbeat))
                lastSent = now
            }
        }
        _ = try? link.send(.disconnect("done"))   // best effort: the router times us out anyway
    }

    /// Sends envelopes in messages of at most `maxSubmitBytes` (one envelope per message at least),
    /// addressed to the router incarnation that granted the credit.
    private func submit(_ envelopes: [Envelope], on link: any PeerLink, incarnation: UInt64) throws {
        var part: [Envelope] = [], bytes = 0
        func flush() throws {
            guard !part.isEmpty else { return }
            var submit = Aligners_V1_Submit()
            submit.envelopes = part
            var message = WireMessage(.submit(submit))
            message.routerIncarnation = incarnation
            try link.send(message)
            part.removeAll(keepingCapacity: true)
            bytes = 0
        }
        for e in envelopes {
            // The text dominates an envelope's size; 512 bytes cover ids, scores and framing.
            let size = 512 + e.response.utf8.count + e.originalResponse.utf8.count
                + e.conversation.reduce(0) { $0 + $1.role.utf8.count + $1.content.utf8.count }
            if !part.isEmpty && bytes + size > maxSubmitBytes { try flush() }
            part.append(e)
            bytes += size
        }
        try flush()
    }
}

public struct RouterUnreachable: Error, CustomStringConvertible {
    public let endpoint: String
    public let seconds: Int
    /// We spoke CURVE: a wrong server key also looks like silence.
    public var curve = false
    public var description: String {
        "the router at \(endpoint) has not answered for \(seconds) s; is `aligners router` running there?"
            + (curve ? " Is --curve-server-key its public key?" : "")
    }
}

/// Writes output records on a thread of its own (a slow reader of stdout never stalls heartbeats),
/// in input order unless told otherwise, and frees a window slot per record written.
final class OutputSink: @unchecked Sendable {
    private struct State {
        var book: [UInt64: InputLine] = [:]
        var ready: [UInt64: [UInt8]] = [:]
        var nextSeq: UInt64 = 1
        var written = 0
        var totalLines: Int? = nil
        var linesSeen = 0
        var summary = FilterSummary()
    }
    private let fd: Int32
    private let ordered: Bool
    private let explain: Bool
    private let logger: Logger
    private let onRecord: (@Sendable (InputLine?, Envelope?) -> Void)?
    private let state = Mutex(State())
    private let wake = DispatchSemaphore(value: 0)
    private let slots: DispatchSemaphore
    private let finished = DispatchSemaphore(value: 0)

    init(fd: Int32, ordered: Bool, window: Int, explain: Bool, logger: Logger,
         onRecord: (@Sendable (InputLine?, Envelope?) -> Void)?) {
        self.fd = fd
        self.ordered = ordered
        self.explain = explain
        self.logger = logger
        self.onRecord = onRecord
        self.slots = DispatchSemaphore(value: max(1, window))
        let writer = Thread { [self] in writeLoop() }
        writer.name = "aligners-writer"
        writer.start()
    }

    var linesSeen: Int { state.withLock { $0.linesSeen } }
    var outputFailed: Bool { state.withLock { $0.summary.outputError != nil } }
    var summary: FilterSummary { state.withLock { $0.summary } }

    /// Blocks the reader until the output window has room for one more line.
    func acquireSlot() {
        slots.wait()
        state.withLock { $0.linesSeen += 1 }
    }

    func register(_ line: InputLine) {
        state.withLock { $0.book[line.seq] = line }
    }

    func reject(seq: UInt64, message: String, input: ArraySlice<UInt8>, totalBytes: Int) {
        let record = JSONLines.errorRecord(seq: seq, message: message, input: input, totalBytes: totalBytes)
        logger.warning("invalid input line", metadata: ["line": "\(seq)", "error": "\(message)"])
        PipelineMetrics.shared.count("aligners_lines_total", [("event", "invalid")])
        onRecord?(nil, nil)
        state.withLock {
            $0.summary.invalid += 1
            $0.ready[seq] = record
        }
        wake.signal()
    }

    func deliver(_ envelope: Envelope) {
        let line = state.withLock { $0.book.removeValue(forKey: envelope.seq) }
        guard let line else { return }  // a duplicate delivery
        let record = JSONLines.render(line, envelope, explain: explain)
        if envelope.hasError {
            logger.warning("sample failed", metadata: ["line": "\(envelope.seq)", "id": "\(envelope.id)",
                                                       "stage": "\(envelope.error.stage)", "error": "\(envelope.error.message)"])
        }
        onRecord?(line, envelope)
        state.withLock {
            if envelope.hasError {
                $0.summary.failed += 1
            } else if envelope.steps.contains(where: \.changed) {
                $0.summary.aligned += 1
            } else {
                $0.summary.untouched += 1
            }
            $0.ready[envelope.seq] = record
        }
        wake.signal()
    }

    func finishInput(lines: Int) {
        state.withLock { $0.totalLines = lines }
        wake.signal()
    }

    func waitUntilWritten() { finished.wait() }

    private func writeLoop() {
        while true {
            wake.wait()
            while true {
                let (records, done): ([[UInt8]], Bool) = state.withLock { s in
                    var out: [[UInt8]] = []
                    if ordered {
                        while let r = s.ready.removeValue(forKey: s.nextSeq) {
                            out.append(r)
                            s.nextSeq += 1
                        }
                    } else {
                        out = Array(s.ready.values)
                        s.ready.removeAll()
                    }
                    s.written += out.count
                    s.summary.lines = s.written
                    return (out, s.totalLines.map { s.written >= $0 } ?? false)
                }
                if records.isEmpty {
                    if done {
                        finished.signal()
                        return
                    }
                    break
                }
                var bytes: [UInt8] = []
                for r in records {
                    bytes.append(contentsOf: r)
                    bytes.append(UInt8(ascii: "\n"))
                }
                // After a failed write, records are dropped (still counted, so the run can end).
                if state.withLock({ $0.summary.outputError == nil }), let error = writeAll(bytes) {
                    state.withLock { $0.summary.outputError = error }
                    logger.critical("cannot write the output; reading no more input", metadata: ["error": "\(error)"])
                }
                PipelineMetrics.shared.count("aligners_lines_total", [("event", "written")], by: records.count)
                for _ in records { slots.signal() }
            }
        }
    }

    /// Writes everything, or returns why it could not (stdout closed by `| head`, a full disk).
    private func writeAll(_ bytes: [UInt8]) -> String? {
        var offset = 0
        return bytes.withUnsafeBytes { raw -> String? in
            while offset < raw.count {
                let n = write(fd, raw.baseAddress! + offset, raw.count - offset)
                if n < 0 {
                    if errno == EINTR { continue }
                    return errno == EPIPE ? "the output was closed (EPIPE)" : String(cString: strerror(errno))
                }
                offset += n
            }
            return nil
        }
    }
}
