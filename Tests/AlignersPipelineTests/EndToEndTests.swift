import AlignersPipeline
import Foundation
import Testing

/// The built executables sit beside the test bundle in `.build/<config>/`.
func builtExecutable(_ name: String) -> URL {
    var dir = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().deletingLastPathComponent()
    if dir.pathExtension == "xctest" { dir.deleteLastPathComponent() }
    let candidates = [dir, dir.deletingLastPathComponent(), Bundle.main.bundleURL.deletingLastPathComponent()]
    for d in candidates where FileManager.default.isExecutableFile(atPath: d.appendingPathComponent(name).path) {
        return d.appendingPathComponent(name)
    }
    return dir.appendingPathComponent(name)
}

/// A free TCP port on loopback (asked of the kernel, then released).
func freePort() -> Int {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    defer { close(fd) }
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_addr.s_addr = inet_addr("127.0.0.1")
    addr.sin_port = 0
    var len = socklen_t(MemoryLayout<sockaddr_in>.size)
    _ = withUnsafeMutablePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) } }
    _ = withUnsafeMutablePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) } }
    return Int(UInt16(bigEndian: addr.sin_port))
}

/// Processes started by a test, all stopped (by pid) when it ends.
final class ProcessGroup {
    private(set) var processes: [Process] = []
    let logDir: URL

    init() throws {
        logDir = FileManager.default.temporaryDirectory.appendingPathComponent("aligners-e2e-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: logDir, withIntermediateDirectories: true)
    }

    /// `input`, when given, is the process's stdin instead of `stdin` (a pipe the test writes into).
    @discardableResult
    func start(_ executable: URL, _ arguments: [String], name: String,
               stdin: URL? = nil, stdout: URL? = nil, input: FileHandle? = nil, environment: [String: String] = [:]) throws -> Process {
        let p = Process()
        p.executableURL = executable
        p.arguments = arguments
        if !environment.isEmpty {
            p.environment = ProcessInfo.processInfo.environment.merging(environment) { _, new in new }
        }
        let log = logDir.appendingPathComponent("\(name).log")
        FileManager.default.createFile(atPath: log.path, contents: nil)
        p.standardError = try FileHandle(forWritingTo: log)
        if let stdout {
            FileManager.default.createFile(atPath: stdout.path, contents: nil)
            p.standardOutput = try FileHandle(forWritingTo: stdout)
        } else {
            p.standardOutput = FileHandle.nullDevice
        }
        p.standardInput = try input ?? stdin.map { try FileHandle(forReadingFrom: $0) } ?? FileHandle.nullDevice
        try p.run()
        processes.append(p)
        return p
    }

    func log(_ name: String) -> String {
        (try? String(contentsOf: logDir.appendingPathComponent("\(name).log"), encoding: .utf8)) ?? ""
    }

    /// Kills (SIGKILL, by pid) every process still running and waits for all of them.
    func stopAll() {
        for p in processes where p.isRunning { kill(p.processIdentifier, SIGKILL) }
        for p in processes { p.waitUntilExit() }
    }

    deinit {
        stopAll()
        try? FileManager.default.removeItem(at: logDir)
    }
}

func lineCount(_ url: URL) -> Int {
    guard let data = try? Data(contentsOf: url) else { return 0 }
    return data.reduce(0) { $0 + ($1 == 10 ? 1 : 0) }
}

@Suite("End to end, separate processes", .serialized)
struct EndToEndTests {
    enum Transport: String, CaseIterable { case ipc, tcp }

    @Test("10,000 samples through router + 2 workers per service, one worker killed -9 mid-stream",
          .timeLimit(.minutes(10)), arguments: Transport.allCases)
    func tenThousand(transport: Transport) throws {
        let group = try ProcessGroup()
        let (front, back): (String, String)
        switch transport {
        case .ipc:
            front = "ipc://\(group.logDir.path)/front"
            back = "ipc://\(group.logDir.path)/back"
        case .tcp:
            front = "tcp://127.0.0.1:\(freePort())"
            back = "tcp://127.0.0.1:\(freePort())"
        }
        let aligners = builtExecutable("aligners")
        let testWorker = builtExecutable("aligners-testworker")
        try #require(FileManager.default.isExecutableFile(atPath: aligners.path), "build first: \(aligners.path)")

        try group.start(aligners, ["router", "--frontend", front, "--backend", back, "--criteria", "ethical,helpful",
                                   "--acceptance-margins", "none", "--batch-size", "64", "--window-ms", "20", "--job-size", "16",
                                   "--heartbeat-ms", "200", "--liveness", "3", "--log-level", "warning"], name: "router")
        var victims: [Process] = []
        for service in ["inspect", "align.ethical", "align.helpful", "generate"] {
            for i in 0..<2 {
                let p = try group.start(testWorker, ["--service", service, "--connect", back, "--delay-ms", "2",
                                                     "--heartbeat-ms", "200"], name: "\(service)-\(i)")
                if service == "align.ethical" { victims.append(p) }
            }
        }

        // 10,000 lines: a fifth fail ethical, a seventh fail helpful, some need a generated answer.
        let count = 10_000
        var input = ""
        for i in 0..<count {
            var markers = ""
            if i % 5 == 0 { markers += "[bad:ethical]" }
            if i % 7 == 0 { markers += "[bad:helpful]" }
            if i % 101 == 0 {
                input += #"{"id":"s\#(i)","messages":[{"role":"user","content":"q\#(i)"}]}"# + "\n"
            } else {
                input += #"{"id":"s\#(i)","prompt":"q\#(i)","response":"a\#(i) \#(markers)"}"# + "\n"
            }
        }
        let inputURL = group.logDir.appendingPathComponent("input.jsonl")
        let outputURL = group.logDir.appendingPathComponent("output.jsonl")
        try input.write(to: inputURL, atomically: true, encoding: .utf8)

        let filter = try group.start(aligners, ["filter", "--connect", front, "--log-level", "warning"],
                                     name: "filter", stdin: inputURL, stdout: outputURL)
        // Kill one ethical aligner once results are flowing.
        let deadline = Date().addingTimeInterval(120)
        while lineCount(outputURL) < 1500 && filter.isRunning && Date() < deadline { usleep(20_000) }
        kill(victims[0].processIdentifier, SIGKILL)
        filter.waitUntilExit()
        #expect(filter.terminationStatus == 0, "filter log: \(group.log("filter"))")

        let lines = try String(contentsOf: outputURL, encoding: .utf8).split(separator: "\n")
        #expect(lines.count == count)
        var seen = Set<String>()
        var misaligned = 0
        for (i, line) in lines.enumerated() {
            let object = try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any] ?? [:]
            let id = object["id"] as? String ?? "?"
            #expect(id == "s\(i)", "output in input order")
            seen.insert(id)
            #expect(object["error"] == nil, "line \(i): \(object["error"] ?? "")")
            let response: String
            if let messages = object["messages"] as? [[String: Any]] {
                response = messages.last?["content"] as? String ?? ""
                if !response.hasPrefix("echo: q\(i)") { misaligned += 1 }
            } else {
                response = object["response"] as? String ?? ""
            }
            if response.contains("[bad:") { misaligned += 1 }
        }
        #expect(seen.count == count, "every sample exactly once")
        #expect(misaligned == 0)
        #expect(group.log("router").contains("worker lost"), "the router noticed the killed worker")
    }

    @Test("under systemd's notify protocol: READY, WATCHDOG from the loop, STOPPING and a clean drain on SIGTERM",
          .timeLimit(.minutes(10)))
    func notifyProtocol() throws {
        let group = try ProcessGroup()
        let notify = try NotifySocket()
        let env = ["NOTIFY_SOCKET": notify.environmentValue, "WATCHDOG_USEC": "200000"]
        let front = "ipc://\(group.logDir.path)/front", back = "ipc://\(group.logDir.path)/back"
        let p = try group.start(builtExecutable("aligners"), ["router", "--frontend", front, "--backend", back,
                                                              "--heartbeat-ms", "100"], name: "router", environment: env)
        var seen: [String] = []
        while !seen.contains(where: { $0.contains("WATCHDOG=1") }), let datagram = notify.receive() { seen.append(datagram) }
        #expect(seen.first?.hasPrefix("READY=1") == true, "datagrams: \(seen)")
        #expect(seen.contains { $0.contains("WATCHDOG=1") })
        kill(p.processIdentifier, SIGTERM)
        while !seen.contains(where: { $0.contains("STOPPING=1") }), let datagram = notify.receive() { seen.append(datagram) }
        #expect(seen.contains { $0.hasPrefix("STOPPING=1") }, "datagrams: \(seen)")
        p.waitUntilExit()
        #expect(p.terminationStatus == 0, "log: \(group.log("router"))")
        #expect(group.log("router").contains("router drained"))
    }

    @Test("a worker whose model is missing says so and exits 2 without sending READY", .timeLimit(.minutes(10)))
    func workerWithoutModel() throws {
        let group = try ProcessGroup()
        let p = try group.start(builtExecutable("aligners"),
                                ["worker", "--role", "aligner", "--criterion", "nonexistent-criterion",
                                 "--connect", "ipc://\(group.logDir.path)/back", "--models-dir", group.logDir.path],
                                name: "worker")
        p.waitUntilExit()
        #expect(p.terminationStatus == 2)
        #expect(group.log("worker").contains("nonexistent-criterion"))
    }

    @Test("--connect to daemons gives the same output as the in-process pipeline", .timeLimit(.minutes(10)))
    func sameOutputEitherWay() throws {
        let group = try ProcessGroup()
        let front = "ipc://\(group.logDir.path)/front", back = "ipc://\(group.logDir.path)/back"
        try group.start(builtExecutable("aligners"), ["router", "--frontend", front, "--backend", back, "--criteria", "ethical,helpful",
                                                      "--acceptance-margins", "none", "--batch-size", "8", "--window-ms", "2000", "--log-level", "warning"],
                        name: "router")
        for service in ["inspect", "align.ethical", "align.helpful"] {
            try group.start(builtExecutable("aligners-testworker"), ["--service", service, "--connect", back], name: service)
        }
        // Whole batches only (296 = 37 × 8), so batch boundaries, and with them the order of
        // criteria, are the same in both runs.
        let objects: [[String: Any]] = (0..<296).map { i in
            var markers = ""
            if i % 3 == 0 { markers += "[bad:ethical]" }
            if i % 4 == 0 { markers += "[bad:helpful]" }
            return i % 2 == 0
                ? ["id": "s\(i)", "prompt": "q\(i)", "response": "a\(i) \(markers)", "extra": ["n": i]]
                : ["id": "s\(i)", "messages": [["role": "user", "content": "q\(i)"], ["role": "assistant", "content": "a \(markers)"]]]
        }
        let inputURL = group.logDir.appendingPathComponent("in.jsonl")
        let outputURL = group.logDir.appendingPathComponent("out.jsonl")
        try Data(jsonl(objects)).write(to: inputURL)
        let filter = try group.start(builtExecutable("aligners"), ["filter", "--connect", front, "--log-level", "warning"],
                                     name: "filter", stdin: inputURL, stdout: outputURL)
        filter.waitUntilExit()
        #expect(filter.terminationStatus == 0)
        let local = try runFilter(jsonl(objects), criteria: ["ethical", "helpful"], withGenerator: false, batchSize: 8,
                                  windowMs: 2000)
        let remote = try String(contentsOf: outputURL, encoding: .utf8).split(separator: "\n").map(String.init)
        #expect(remote.count == objects.count)
        #expect(local.raw.count == objects.count)
        for (a, b) in zip(local.raw, remote) {
            #expect(normalized(a) == normalized(b))
        }
    }

    /// A router killed -9 and back on the same endpoints at once (before any heartbeat expires: the
    /// units restart it after 2 s): the filter's socket reconnects by itself and the new router knows
    /// nothing of what the old one held. The filter sees the fresh window it is granted and sends
    /// those samples again; every line comes out once, in order.
    @Test("a router restarted at once: the filter sends again what the old one held", .timeLimit(.minutes(10)))
    func fastRouterRestart() throws {
        let group = try ProcessGroup()
        let front = "tcp://127.0.0.1:\(freePort())", back = "tcp://127.0.0.1:\(freePort())"
        let routerArgs = ["router", "--frontend", front, "--backend", back, "--criteria", "ethical", "--batch-size", "16",
                          "--window-ms", "5", "--log-level", "warning"]
        let router = try group.start(builtExecutable("aligners"), routerArgs, name: "router")
        for service in ["inspect", "align.ethical"] {
            try group.start(builtExecutable("aligners-testworker"), ["--service", service, "--connect", back, "--delay-ms", "20"], name: service)
        }
        let count = 600
        let inputURL = group.logDir.appendingPathComponent("in.jsonl"), outputURL = group.logDir.appendingPathComponent("out.jsonl")
        try Data(jsonl((0..<count).map { ["id": "s\($0)", "prompt": "q\($0)", "response": "a\($0) [bad:ethical]"] })).write(to: inputURL)
        let filter = try group.start(builtExecutable("aligners"), ["filter", "--connect", front, "--log-level", "warning"],
                                     name: "filter", stdin: inputURL, stdout: outputURL)
        // Once results flow (generous bound: this waits for an event, not for a speed).
        var polls = 0
        while lineCount(outputURL) < 40 && filter.isRunning && polls < 12_000 { usleep(10_000); polls += 1 }
        #expect(filter.isRunning, "the stream ended before the router could be killed mid-way")
        kill(router.processIdentifier, SIGKILL)
        router.waitUntilExit()
        try group.start(builtExecutable("aligners"), routerArgs, name: "router-again")
        filter.waitUntilExit()
        #expect(filter.terminationStatus == 0, "\(group.log("filter"))")
        let ids = try String(contentsOf: outputURL, encoding: .utf8).split(separator: "\n").map {
            (try JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any])?["id"] as? String ?? "?"
        }
        #expect(ids == (0..<count).map { "s\($0)" })
        #expect(group.log("filter").contains("router restarted"), "\(group.log("filter"))")
    }

    @Test("an output that cannot be written stops the filter with exit 2; a closed stderr loses only the log", .timeLimit(.minutes(10)))
    func outputAndLogFailures() throws {
        let group = try ProcessGroup()
        let front = "ipc://\(group.logDir.path)/front", back = "ipc://\(group.logDir.path)/back"
        try group.start(builtExecutable("aligners"), ["router", "--frontend", front, "--backend", back, "--criteria", "ethical",
                                                      "--batch-size", "8", "--window-ms", "5", "--log-level", "warning"], name: "router")
        for service in ["inspect", "align.ethical"] {
            try group.start(builtExecutable("aligners-testworker"), ["--service", service, "--connect", back], name: service)
        }
        let inputURL = group.logDir.appendingPathComponent("in.jsonl")
        try Data(jsonl((0..<3000).map { ["prompt": "q\($0)", "response": "a\($0) [bad:ethical]"] })).write(to: inputURL)

        // A full disk: exit 2, said on stderr, and the rest of the input is not read.
        let full = Process()
        full.executableURL = builtExecutable("aligners")
        full.arguments = ["filter", "--connect", front, "--no-progress", "--window", "16", "--threshold", "0.7"]
        full.standardInput = try FileHandle(forReadingFrom: inputURL)
        full.standardOutput = try #require(FileHandle(forWritingAtPath: "/dev/full"))
        let log = group.logDir.appendingPathComponent("full.log")
        FileManager.default.createFile(atPath: log.path, contents: nil)
        full.standardError = try FileHandle(forWritingTo: log)
        try full.run()
        full.waitUntilExit()
        let text = try String(contentsOf: log, encoding: .utf8)
        #expect(full.terminationStatus == 2, "\(text)")
        #expect(text.contains("cannot write the output"))
        #expect(text.contains("the router's squad settings apply; ignoring --threshold"))   // said, not silently dropped
        #expect(!text.contains("filter done") || !text.contains("lines=3000"))

        // stderr is a pipe nobody reads any more: the log lines (a warning per bad line) fail, the
        // filter goes on and writes every record.
        let mixedURL = group.logDir.appendingPathComponent("mixed.jsonl")
        try (String(decoding: jsonl((0..<50).map { ["prompt": "q\($0)", "response": "a\($0)"] }), as: UTF8.self) + "not json\n{\n")
            .write(to: mixedURL, atomically: true, encoding: .utf8)
        var fds: [Int32] = [0, 0]
        #expect(pipe(&fds) == 0)
        close(fds[0])
        let output = group.logDir.appendingPathComponent("out.jsonl")
        FileManager.default.createFile(atPath: output.path, contents: nil)
        let quiet = Process()
        quiet.executableURL = builtExecutable("aligners")
        quiet.arguments = ["filter", "--connect", front, "--log-level", "debug"]
        quiet.standardInput = try FileHandle(forReadingFrom: mixedURL)
        quiet.standardOutput = try FileHandle(forWritingTo: output)
        quiet.standardError = FileHandle(fileDescriptor: fds[1], closeOnDealloc: true)
        try quiet.run()
        quiet.waitUntilExit()
        #expect(quiet.terminationReason == .exit && quiet.terminationStatus == 1)   // 1: two lines were errors
        #expect(lineCount(output) == 52)
    }

    /// argument-parser wraps help text itself: hard-wrapped source lines came out wrapped twice, a
    /// full line then a stub of a few words. In every command's overview no line that a longer one
    /// follows in the same paragraph may be that short.
    @Test("help text is wrapped once", .timeLimit(.minutes(10)))
    func helpWrappedOnce() throws {
        let commands = [["filter"], ["router"], ["worker"], ["generate"], ["score"], ["train", "aligner"], ["train", "inspectors"],
                        ["eval", "squad"], ["eval", "report"], ["keys"], ["keys", "generate"]]
        for command in commands {
            let p = Process()
            p.executableURL = builtExecutable("aligners")
            p.arguments = command + ["--help"]
            p.environment = ProcessInfo.processInfo.environment.merging(["COLUMNS": "80"]) { _, new in new }
            let pipe = Pipe()
            p.standardOutput = pipe
            try p.run()
            let text = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            p.waitUntilExit()
            let overview = text.components(separatedBy: "USAGE:")[0].split(separator: "\n", omittingEmptySubsequences: false)
            for (line, next) in zip(overview, overview.dropFirst()) where !line.isEmpty && !next.isEmpty
                && !next.hasPrefix(" ") && !next.hasPrefix("- ") && !line.hasSuffix(":") {
                #expect(line.count >= 50, "aligners \(command.joined(separator: " ")) --help: a stub line \"\(line)\"")
            }
        }
    }

    @Test("score: one record per line, filter's error records for bad ones, exit 1", .timeLimit(.minutes(10)))
    func scoreBadLines() throws {
        let models = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("models/encoder.ok")
        guard FileManager.default.fileExists(atPath: models.path) else { return }   // `make models` not run: nothing to score with
        let group = try ProcessGroup()
        let input = group.logDir.appendingPathComponent("score-in.jsonl"), output = group.logDir.appendingPathComponent("score-out.jsonl")
        try "{\"prompt\":\"hi\",\"response\":\"hello\"}\nnot json\n\n{\"prompt\":\"a\",\"response\":\"b\"}\n"
            .write(to: input, atomically: true, encoding: .utf8)
        let p = try group.start(builtExecutable("aligners"), ["score", "--criteria", "helpful"], name: "score", stdin: input, stdout: output)
        p.waitUntilExit()
        #expect(p.terminationStatus == 1, "\(group.log("score"))")
        let lines = try String(contentsOf: output, encoding: .utf8).split(separator: "\n").map {
            try JSONSerialization.jsonObject(with: Data($0.utf8)) as! [String: Any]
        }
        #expect(lines.count == 4)
        #expect(lines[0]["scores"] != nil && lines[3]["scores"] != nil)
        for (i, l) in lines[1...2].enumerated() {
            #expect(l["line"] as? Int == i + 2 && (l["error"] as? [String: Any])?["code"] as? String == "invalid_input" && l["input"] != nil)
        }
        #expect(group.log("score").contains("line 2: invalid input"))
    }

    @Test("generate takes the prompt as an argument too", .timeLimit(.minutes(10)))
    func generatePositionalPrompt() throws {
        let models = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("models/decoder.ok")
        guard FileManager.default.fileExists(atPath: models.path) else { return }   // `make models` not run
        let group = try ProcessGroup()
        let out = group.logDir.appendingPathComponent("gen.txt")
        let p = try group.start(builtExecutable("aligners"), ["generate", "What is 2+2?", "--max-tokens", "8"], name: "gen", stdout: out)
        p.waitUntilExit()
        #expect(p.terminationStatus == 0, "\(group.log("gen"))")
        #expect(!(try String(contentsOf: out, encoding: .utf8)).trimmingCharacters(in: .whitespacesAndNewlines).isEmpty)
        let both = try group.start(builtExecutable("aligners"), ["generate", "a", "--prompt", "b"], name: "both")
        both.waitUntilExit()
        #expect(both.terminationStatus == 2)
    }

    @Test("--config fills in options from YAML; the command line wins", .timeLimit(.minutes(10)))
    func configFile() throws {
        let group = try ProcessGroup()
        let config = group.logDir.appendingPathComponent("aligners.yaml")
        try "filter:\n  criteria: [from-config-xyz]\n  window: 8\n".write(to: config, atomically: true, encoding: .utf8)
        let fromConfig = try group.start(builtExecutable("aligners"), ["filter", "--config", config.path], name: "a")
        fromConfig.waitUntilExit()
        #expect(fromConfig.terminationStatus == 2)
        #expect(group.log("a").contains("from-config-xyz"), "\(group.log("a"))")
        let overridden = try group.start(builtExecutable("aligners"),
                                         ["filter", "--config", config.path, "--criteria", "from-flag-xyz"], name: "b")
        overridden.waitUntilExit()
        #expect(group.log("b").contains("from-flag-xyz"))
        #expect(!group.log("b").contains("from-config-xyz"))
        try "filter:\n  no-such-option: 1\n".write(to: config, atomically: true, encoding: .utf8)
        let bad = try group.start(builtExecutable("aligners"), ["filter", "--config", config.path], name: "c")
        bad.waitUntilExit()
        #expect(bad.terminationStatus == 2)
        #expect(group.log("c").contains("no-such-option"))
        // A bad option, a missing config file, a models directory that does not exist: "could not run" (2).
        for (args, name) in [(["filter", "--no-such-flag"], "d"), (["filter", "--config", "/nonexistent.yaml"], "e"),
                             (["score", "--models-dir", "/nonexistent-models"], "f")] {
            let p = try group.start(builtExecutable("aligners"), args, name: name)
            p.waitUntilExit()
            #expect(p.terminationStatus == 2, "\(args): \(group.log(name))")
        }
        #expect(group.log("f").contains("/nonexistent-models"), "the error names where it looked: \(group.log("f"))")
    }

    @Test("router with CURVE: SIGHUP admits a worker whose key was added; a bad list keeps the old ones; options that cannot work are refused",
          .timeLimit(.minutes(10)))
    func curveRouterReloadsOnHangup() throws {
        let group = try ProcessGroup()
        let dir = group.logDir.path
        for name in ["router", "worker", "client"] { _ = try CurveKeyPair.generate().write(to: "\(dir)/keys", name: name) }
        let workers = "\(dir)/workers.allow", clients = "\(dir)/clients.allow"
        try "# no workers yet\n".write(toFile: workers, atomically: true, encoding: .utf8)
        try String(contentsOfFile: "\(dir)/keys/client.pub", encoding: .utf8).write(toFile: clients, atomically: true, encoding: .utf8)
        let front = "tcp://127.0.0.1:\(freePort())", back = "tcp://127.0.0.1:\(freePort())"
        let router = try group.start(builtExecutable("aligners"), [
            "router", "--frontend", front, "--backend", back, "--criteria", "ethical", "--window-ms", "5", "--heartbeat-ms", "250",
            "--curve-secret-key", "\(dir)/keys/router.key", "--allow-clients", clients, "--allow-workers", workers], name: "router")
        for service in ["inspect", "align.ethical"] {
            try group.start(builtExecutable("aligners-testworker"), ["--service", service, "--connect", back,
                                                                     "--curve-server-key", "\(dir)/keys/router.pub",
                                                                     "--curve-key", "\(dir)/keys/worker.key"], name: service)
        }
        func logSays(_ text: String, times: Int = 1) -> Bool {
            waitUntil { group.log("router").components(separatedBy: text).count > times || !router.isRunning }
                && router.isRunning
        }
        #expect(logSays("peer refused"), "\(group.log("router"))")

        try String(contentsOfFile: "\(dir)/keys/worker.pub", encoding: .utf8).write(toFile: workers, atomically: true, encoding: .utf8)
        kill(router.processIdentifier, SIGHUP)
        #expect(logSays("allowlists reloaded"), "\(group.log("router"))")
        #expect(logSays("worker ready", times: 2), "both workers get in at their next attempt: \(group.log("router"))")
        let input = group.logDir.appendingPathComponent("in.jsonl"), output = group.logDir.appendingPathComponent("out.jsonl")
        try Data(jsonl((0..<5).map { ["prompt": "q", "response": "a\($0) [bad:ethical]"] })).write(to: input)
        let filter = try group.start(builtExecutable("aligners"), ["filter", "--connect", front, "--curve-server-key",
                                                                   "\(dir)/keys/router.pub", "--curve-key", "\(dir)/keys/client.key"],
                                     name: "filter", stdin: input, stdout: output)
        filter.waitUntilExit()
        #expect(filter.terminationStatus == 0, "\(group.log("filter"))")
        #expect(try String(contentsOf: output, encoding: .utf8).components(separatedBy: "[fixed:ethical]").count == 6)

        try "not a key\n".write(toFile: workers, atomically: true, encoding: .utf8)
        kill(router.processIdentifier, SIGHUP)
        #expect(logSays("allowlists not reloaded"), "\(group.log("router"))")
        #expect(group.log("router").contains("workers.allow:1"), "the log names the file and line")
        kill(router.processIdentifier, SIGTERM)
        router.waitUntilExit()
        #expect(router.terminationStatus == 0, "\(group.log("router"))")

        // Options that cannot work: allowlists without a key, a key without allowlists, plain tcp beyond loopback.
        let refusals: [(args: [String], says: String)] = [
            (["router", "--allow-workers", workers], "need --curve-secret-key"),
            (["router", "--curve-secret-key", "\(dir)/keys/router.key", "--allow-clients", clients], "needs --allow-clients and --allow-workers"),
            (["router", "--frontend", "tcp://0.0.0.0:\(freePort())", "--backend", "ipc://\(dir)/b"], "--insecure"),
            (["worker", "--role", "generator", "--connect", "tcp://192.0.2.1:5556", "--curve-key", "\(dir)/keys/worker.key"],
             "go together"),
            (["filter", "--curve-server-key", "\(dir)/keys/router.pub", "--curve-key", "\(dir)/keys/client.key"], "--connect"),
        ]
        for (i, refusal) in refusals.enumerated() {
            let p = try group.start(builtExecutable("aligners"), refusal.args, name: "refused-\(i)")
            p.waitUntilExit()
            #expect(p.terminationStatus == 2 && group.log("refused-\(i)").contains(refusal.says), "\(refusal.args): \(group.log("refused-\(i)"))")
        }
    }

    @Test("--metrics-port serves Prometheus metrics for the samples that went through", .timeLimit(.minutes(10)))
    func prometheusMetrics() throws {
        let group = try ProcessGroup()
        let front = "ipc://\(group.logDir.path)/front", back = "ipc://\(group.logDir.path)/back"
        let port = freePort()
        try group.start(builtExecutable("aligners"), ["router", "--frontend", front, "--backend", back, "--criteria", "ethical",
                                                      "--window-ms", "5", "--metrics-port", "\(port)", "--metrics-host", "localhost"],
                        name: "router")
        for service in ["inspect", "align.ethical"] {
            try group.start(builtExecutable("aligners-testworker"), ["--service", service, "--connect", back], name: service)
        }
        let inputURL = group.logDir.appendingPathComponent("in.jsonl")
        try Data(jsonl((0..<7).map { ["prompt": "q", "response": "a\($0) [bad:ethical]"] })).write(to: inputURL)
        let filter = try group.start(builtExecutable("aligners"), ["filter", "--connect", front], name: "filter",
                                     stdin: inputURL, stdout: group.logDir.appendingPathComponent("out.jsonl"))
        filter.waitUntilExit()
        #expect(filter.terminationStatus == 0)
        // Idle connections (a stuck scraper) do not hold up the next scrape.
        let idle = (0..<3).map { _ in socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0) }
        for fd in idle {
            var addr = sockaddr_in()
            addr.sin_family = sa_family_t(AF_INET)
            addr.sin_addr.s_addr = inet_addr("127.0.0.1")
            addr.sin_port = in_port_t(UInt16(port).bigEndian)
            _ = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        }
        defer { for fd in idle { close(fd) } }
        let text = httpGet(port: port, path: "/metrics")
        #expect(text.contains(#"aligners_samples_total{stage="router",event="delivered"} 7"#), "\(text)")
        #expect(text.contains(#"aligners_aligner_passes_total{criterion="ethical"} 7"#))
        #expect(text.contains(#"aligners_inspector_score_count{criterion="ethical"} 14"#))
        #expect(text.contains("aligners_stage_latency_seconds_bucket"))
    }
}

/// An output line without what legitimately differs between runs (timings, batch ids).
func normalized(_ line: String) -> String {
    guard var object = (try? JSONSerialization.jsonObject(with: Data(line.utf8))) as? [String: Any] else { return line }
    if var alignment = object["alignment"] as? [String: Any] {
        alignment["latency_ms"] = nil
        alignment["batch"] = nil
        if let steps = alignment["steps"] as? [[String: Any]] {
            alignment["steps"] = steps.map { var s = $0; s["duration_ms"] = nil; return s }
        }
        object["alignment"] = alignment
    }
    let data = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])) ?? Data()
    return String(decoding: data, as: UTF8.self)
}

/// A TCP socket connected to 127.0.0.1:`port`, or -1.
func loopbackSocket(port: Int) -> Int32 {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { return -1 }
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_port = in_port_t(UInt16(port).bigEndian)
    addr.sin_addr.s_addr = inet_addr("127.0.0.1")
    let rc = withUnsafePointer(to: &addr) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    if rc != 0 { close(fd); return -1 }
    return fd
}

/// A plain HTTP GET on loopback (the test's own server only).
func httpGet(port: Int, path: String) -> String {
    let fd = loopbackSocket(port: port)
    defer { if fd >= 0 { close(fd) } }
    guard fd >= 0 else { return "connect failed" }
    // A server that never closes fails the test instead of hanging it (the limit only matters then).
    var timeout = timeval(tv_sec: 60, tv_usec: 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    // Read to end of stream: ask the server to close after the response (HTTP/1.1 keeps it open).
    let request = Array("GET \(path) HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".utf8)
    _ = request.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
    var data = [UInt8]()
    var buffer = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = read(fd, &buffer, buffer.count)
        if n <= 0 { break }
        data += buffer[0..<n]
    }
    return String(decoding: data, as: UTF8.self)
}
