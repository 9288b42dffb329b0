import Foundation
import Testing
@testable import AlignersPipeline

// The pipeline across real network hosts (issue 14): Linux network namespaces, one per host, each
// joined to the router's namespace by a veth link of its own (a star, the router's namespace being
// the switch). Every process is the real `aligners` or `aligners-testworker` binary, started with
// `ip netns exec`, speaking CURVE over tcp on non-loopback addresses.
//
// Needs root and iproute2; where namespaces cannot be made the test says why and is skipped, unless
// ALIGNERS_REQUIRE_NETNS=1 (CI), where that is a failure. Waits are for events (lines written, log
// lines) under one generous deadline that only matters when something is broken.

/// Why this machine cannot build the namespaces.
struct NetnsUnavailable: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// Network namespaces in a star: `router` and one namespace per host, host number i (from 1) linked
/// to the router's namespace by a veth pair on 10.231.i.0/24 (router .1, host .2). Namespaces are
/// named `aln-<pid>-<n>-<name>` and removed by `tearDown()`; ones left by a test process that died
/// are removed when the next lab is built.
final class NetnsLab {
    let ip: String
    let hosts: [String]
    private let prefix: String
    private var created: [String] = []
    nonisolated(unsafe) private static var labs = 0

    init(hosts: [String]) throws {
        guard getuid() == 0 else {
            throw NetnsUnavailable("network namespaces need root (CAP_NET_ADMIN, CAP_SYS_ADMIN); this runs as uid \(getuid())")
        }
        guard let ip = ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"].first(where: { FileManager.default.isExecutableFile(atPath: $0) })
        else {
            throw NetnsUnavailable("no `ip` command (iproute2) in /usr/sbin, /sbin, /usr/bin or /bin")
        }
        self.ip = ip
        self.hosts = hosts
        Self.labs += 1
        prefix = "aln-\(getpid())-\(Self.labs)-"
        Self.removeStale(ip: ip)
        do {
            for name in ["router"] + hosts {
                try run(["netns", "add", namespace(name)])
                created.append(namespace(name))
                try run(["-n", namespace(name), "link", "set", "lo", "up"])
            }
            // `ip netns exec` also needs a mount namespace and sysfs: try it once.
            try run(["netns", "exec", namespace("router"), ip, "-br", "link"])
            for (i, host) in hosts.enumerated() {
                let n = i + 1
                try run(["link", "add", "name", routerSide(host), "netns", namespace("router"), "type", "veth",
                         "peer", "name", "eth0", "netns", namespace(host)])
                try run(["-n", namespace("router"), "addr", "add", "10.231.\(n).1/24", "dev", routerSide(host)])
                try run(["-n", namespace(host), "addr", "add", "10.231.\(n).2/24", "dev", "eth0"])
                try run(["-n", namespace("router"), "link", "set", routerSide(host), "up"])
                try run(["-n", namespace(host), "link", "set", "eth0", "up"])
            }
        } catch {
            tearDown()
            throw NetnsUnavailable("\(error)")
        }
    }

    func namespace(_ name: String) -> String { prefix + name }

    /// The router's address as `host` reaches it.
    func routerAddress(from host: String) -> String { "10.231.\(hosts.firstIndex(of: host)! + 1).1" }

    /// The veth end in the router's namespace that leads to `host` (its switch port).
    private func routerSide(_ host: String) -> String { "to-h\(hosts.firstIndex(of: host)! + 1)" }

    /// Pulls or plugs `host`'s cable: its link at the router's end goes down or up.
    func setLink(_ host: String, up: Bool) throws {
        try run(["-n", namespace("router"), "link", "set", routerSide(host), up ? "up" : "down"])
    }

    /// `ip netns exec` arguments that run `executable` in `host`'s namespace (it execs: the pid is the program's).
    func inside(_ host: String, _ executable: URL, _ arguments: [String]) -> [String] {
        ["netns", "exec", namespace(host), executable.path] + arguments
    }

    func tearDown() {
        for name in created.reversed() { _ = try? run(["netns", "del", name]) }
        created = []
    }

    /// Runs `ip` with `arguments`; throws with its output when it fails.
    @discardableResult
    func run(_ arguments: [String]) throws -> String { try Self.run(ip: ip, arguments) }

    @discardableResult
    static func run(ip: String, _ arguments: [String]) throws -> String {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: ip)
        p.arguments = arguments
        let out = Pipe()
        p.standardOutput = out
        p.standardError = out
        p.standardInput = FileHandle.nullDevice
        try p.run()
        let text = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        guard p.terminationStatus == 0 else {
            throw NetnsUnavailable("`ip \(arguments.joined(separator: " "))` failed (exit \(p.terminationStatus)): "
                                   + text.trimmingCharacters(in: .whitespacesAndNewlines))
        }
        return text
    }

    /// Deletes namespaces of earlier labs whose test process is gone (killed before its cleanup ran).
    private static func removeStale(ip: String) {
        guard let list = try? run(ip: ip, ["netns", "list"]) else { return }
        for line in list.split(separator: "\n") {
            let name = String(line.split(separator: " ").first ?? "")
            let parts = name.split(separator: "-")
            guard parts.count >= 4, parts[0] == "aln", let pid = Int32(parts[1]), pid != getpid(), kill(pid, 0) != 0, errno == ESRCH
            else { continue }
            _ = try? run(ip: ip, ["netns", "del", name])
        }
    }
}

/// Lines of a logfmt log that hold every one of `fields`, each whole (`msg="worker lost"`, `worker=aligner-1`).
func logLines(_ text: String, _ fields: String...) -> [Substring] {
    text.split(separator: "\n").filter { line in
        let padded = " \(line) "
        return fields.allSatisfy { padded.contains(" \($0) ") }
    }
}

@Suite("Multi-host, network namespaces", .serialized)
struct MultiHostTests {
    /// The issue's run across real hosts: a router, two aligner hosts, an inspector host, the
    /// filter's host and an intruder's host, CURVE on every link. Mid-stream one aligner host's link
    /// is cut (its jobs go to the other; it rejoins once the link is back), then the router is
    /// killed -9 and started again at once. Every line comes out exactly once, and the intruder,
    /// trying as a worker (an unknown key, no CURVE, a client's key), as a client and on the tap,
    /// is refused and gets nothing.
    @Test("across network namespaces: link cut, router killed -9 and back, every line once, the intruder refused",
          .timeLimit(.minutes(10)))
    func acrossHosts() throws {
        let started = Date()
        let deadline = started.addingTimeInterval(180)   // only reached when something is broken
        let lab: NetnsLab
        do {
            lab = try NetnsLab(hosts: ["aligner-1", "aligner-2", "inspector", "filter", "intruder"])
        } catch {
            let reason = "multi-host test skipped: \(error)"
            if ProcessInfo.processInfo.environment["ALIGNERS_REQUIRE_NETNS"] == "1" {
                Issue.record("ALIGNERS_REQUIRE_NETNS=1 but \(reason)")
                return
            }
            print(reason)
            try Test.cancel(Comment(rawValue: reason))
        }
        let group = try ProcessGroup()
        defer {
            group.stopAll()
            lab.tearDown()
        }
        let aligners = builtExecutable("aligners"), testWorker = builtExecutable("aligners-testworker")
        for binary in [aligners, testWorker] {
            try #require(FileManager.default.isExecutableFile(atPath: binary.path), "build first (swift build --build-tests): \(binary.path)")
        }
        let ip = URL(fileURLWithPath: lab.ip)
        func start(_ host: String, _ binary: URL, _ arguments: [String], name: String, stdin: URL? = nil, stdout: URL? = nil,
                   input: FileHandle? = nil) throws -> Process {
            try group.start(ip, lab.inside(host, binary, arguments), name: name, stdin: stdin, stdout: stdout, input: input)
        }
        /// Waits for `condition` until the test's deadline; false if it never held.
        func eventually(_ condition: () -> Bool) -> Bool {
            while !condition() {
                if Date() > deadline { return false }
                usleep(20_000)
            }
            return true
        }
        func logs(_ names: String...) -> String { names.map { "--- \($0):\n\(group.log($0).suffix(3000))" }.joined(separator: "\n") }

        // Keys: the router's, one for the workers, one for the filter, and the intruder's own.
        let keyDir = group.logDir.appendingPathComponent("keys").path
        for name in ["router", "worker", "client", "intruder"] { _ = try CurveKeyPair.generate().write(to: keyDir, name: name) }
        let key = { (name: String) in "\(keyDir)/\(name).key" }
        let routerPub = "\(keyDir)/router.pub"
        let publicKey = { (name: String) in try Curve.readPublicKey(from: "\(keyDir)/\(name).pub") }
        let workersAllow = group.logDir.appendingPathComponent("workers.allow").path
        let clientsAllow = group.logDir.appendingPathComponent("clients.allow").path
        try "\(publicKey("worker")) # workers\n".write(toFile: workersAllow, atomically: true, encoding: .utf8)
        try "\(publicKey("client")) # the filter\n".write(toFile: clientsAllow, atomically: true, encoding: .utf8)
        let curve = { (name: String) in ["--curve-server-key", routerPub, "--curve-key", key(name)] }

        // The router, on every address of its namespace; the same command again after the kill.
        let routerArgs = ["router", "--frontend", "tcp://0.0.0.0:5555", "--backend", "tcp://0.0.0.0:5556", "--tap", "tcp://0.0.0.0:5557",
                          "--criteria", "ethical", "--batch-size", "16", "--window-ms", "10", "--job-size", "4",
                          "--heartbeat-ms", "250", "--liveness", "4", "--max-attempts", "10",
                          "--curve-secret-key", key("router"), "--allow-clients", clientsAllow, "--allow-workers", workersAllow,
                          "--log-level", "info"]
        var router = try start("router", aligners, routerArgs, name: "router-1")
        let endpoint = { (host: String, port: Int) in "tcp://\(lab.routerAddress(from: host)):\(port)" }

        // The honest hosts: two aligners, an inspector.
        let beat = ["--heartbeat-ms", "250", "--liveness", "4"]
        for (host, service, delay) in [("aligner-1", "align.ethical", "30"), ("aligner-2", "align.ethical", "30"), ("inspector", "inspect", "5")] {
            _ = try start(host, testWorker, ["--service", service, "--connect", endpoint(host, 5556), "--name", host, "--delay-ms", delay,
                                             "--record", group.logDir.appendingPathComponent("\(host).ids").path] + beat + curve("worker"),
                          name: host)
        }
        let registered = { (worker: String) in logLines(group.log("router-1"), #"msg="worker ready""#, "worker=\(worker)").count }
        try #require(eventually { ["aligner-1", "aligner-2", "inspector"].allSatisfy { registered($0) >= 1 } || !router.isRunning },
                     "the workers never registered: \(logs("router-1", "aligner-1", "inspector"))")
        try #require(router.isRunning, "the router exited: \(logs("router-1"))")

        // The intruder: as workers (its own key, no CURVE, the filter's key on the back end), on the
        // tap (its key, no CURVE), and as clients (its key, no CURVE).
        let intruderRecords = ["intruder-worker", "intruder-plain-worker", "intruder-client-key-worker", "intruder-tap", "intruder-plain-tap"]
        let record = { (name: String) in ["--record", group.logDir.appendingPathComponent("\(name).ids").path] }
        let backend = endpoint("intruder", 5556), tap = endpoint("intruder", 5557)
        _ = try start("intruder", testWorker, ["--service", "inspect", "--connect", backend, "--name", "intruder"]
                      + record("intruder-worker") + beat + curve("intruder"), name: "intruder-worker")
        _ = try start("intruder", testWorker, ["--service", "align.ethical", "--connect", backend, "--name", "intruder-plain", "--insecure"]
                      + record("intruder-plain-worker") + beat, name: "intruder-plain-worker")
        _ = try start("intruder", testWorker, ["--service", "align.ethical", "--connect", backend, "--name", "intruder-client-key"]
                      + record("intruder-client-key-worker") + beat + curve("client"), name: "intruder-client-key-worker")
        _ = try start("intruder", testWorker, ["--tap", tap] + record("intruder-tap") + curve("intruder"), name: "intruder-tap")
        _ = try start("intruder", testWorker, ["--tap", tap] + record("intruder-plain-tap"), name: "intruder-plain-tap")
        let probe = group.logDir.appendingPathComponent("probe.jsonl")
        try #"{"id":"intruder-line","prompt":"q","response":"a [bad:ethical]"}"#.appending("\n").write(to: probe, atomically: true, encoding: .utf8)
        let intruderClients = [
            ("intruder-client", try start("intruder", aligners, ["filter", "--connect", endpoint("intruder", 5555)] + curve("intruder"),
                                          name: "intruder-client", stdin: probe, stdout: group.logDir.appendingPathComponent("intruder-client.out"))),
            ("intruder-plain-client", try start("intruder", aligners, ["filter", "--connect", endpoint("intruder", 5555), "--insecure"],
                                                name: "intruder-plain-client", stdin: probe,
                                                stdout: group.logDir.appendingPathComponent("intruder-plain-client.out"))),
        ]
        // The router logs each refusal, by key and door.
        let refused = { (log: String, key: String, door: String) in
            !logLines(log, #"msg="peer refused""#, "key=\(LogfmtHandler.quote(key))", "domain=aligners.\(door)").isEmpty
        }
        let intruderKey = try publicKey("intruder"), clientKey = try publicKey("client")
        for (key, door) in [(intruderKey, "worker"), (intruderKey, "client"), (intruderKey, "tap"), (clientKey, "worker")] {
            try #require(eventually { refused(group.log("router-1"), key, door) },
                         "the router did not log refusing \(key == intruderKey ? "the intruder's key" : "the filter's key") at the \(door)s' door: \(logs("router-1"))")
        }
        for (name, client) in intruderClients {
            try #require(eventually { !client.isRunning }, "\(name) never gave up: \(logs(name))")
            #expect(client.terminationStatus == 2, "\(name): \(logs(name))")
            #expect(lineCount(group.logDir.appendingPathComponent("\(name).out")) == 0, "\(name) got output")
        }
        #expect(group.log("intruder-client").contains("refused our CURVE key"), "\(logs("intruder-client"))")
        #expect(group.log("intruder-plain-client").contains("disagree on security"), "\(logs("intruder-plain-client"))")
        try #require(eventually { group.log("intruder-tap").contains("tap handshake refused") }, "\(logs("intruder-tap"))")
        try #require(eventually { group.log("intruder-plain-tap").contains("tap handshake failed") }, "\(logs("intruder-plain-tap"))")

        // An allowlisted tap reader on the filter's host: it must hear what the intruder may not.
        _ = try start("filter", testWorker, ["--tap", endpoint("filter", 5557)] + record("tap") + curve("client"), name: "tap")
        try #require(eventually { group.log("tap").contains("tap handshake succeeded") }, "the allowlisted tap reader got no handshake: \(logs("tap"))")

        // The filter, fed through a pipe so each event happens mid-stream whatever the machine's speed.
        let count = 400
        let lines = (0..<count).map { #"{"id":"s\#($0)","prompt":"q\#($0)","response":"a\#($0) [bad:ethical]"}"# + "\n" }
        let input = Pipe()
        // Only this process may hold the writing end, or the filter never sees the end of its input.
        _ = fcntl(input.fileHandleForWriting.fileDescriptor, F_SETFD, FD_CLOEXEC)
        signal(SIGPIPE, SIG_IGN)   // a filter that died must fail the test, not end the test process
        let output = group.logDir.appendingPathComponent("out.jsonl")
        let filter = try start("filter", aligners, ["filter", "--connect", endpoint("filter", 5555), "--no-progress", "--log-level", "warning"]
                               + curve("client"), name: "filter", stdout: output, input: input.fileHandleForReading)
        var written = 0
        func feed(upTo n: Int) throws {
            try input.fileHandleForWriting.write(contentsOf: Data(lines[written..<n].joined().utf8))
            written = n
        }
        let out = { lineCount(output) }

        try feed(upTo: 100)
        try #require(eventually { out() >= 50 || !filter.isRunning }, "no results over the network: \(logs("filter", "router-1"))")

        // Cut aligner-1's cable: the router loses it and its jobs go to aligner-2.
        let lost = { logLines(group.log("router-1"), #"msg="worker lost""#, "worker=aligner-1").count }
        let (lostBefore, registeredBefore) = (lost(), registered("aligner-1"))
        try lab.setLink("aligner-1", up: false)
        try feed(upTo: 200)
        try #require(eventually { lost() > lostBefore }, "the router never noticed aligner-1's link was down: \(logs("router-1"))")
        try #require(eventually { out() >= 150 || !filter.isRunning }, "the stream stalled while aligner-1 was cut off: \(logs("filter", "router-1"))")
        // Plug it back: aligner-1 registers again and takes work.
        try lab.setLink("aligner-1", up: true)
        try feed(upTo: 300)
        try #require(eventually { registered("aligner-1") > registeredBefore }, "aligner-1 never came back: \(logs("router-1", "aligner-1"))")
        try #require(eventually { out() >= 250 || !filter.isRunning }, "\(logs("filter", "router-1"))")

        // Kill the router mid-batch and start it again at once, on the same endpoints and keys.
        try feed(upTo: 350)
        try #require(eventually { out() >= 310 || !filter.isRunning }, "\(logs("filter", "router-1"))")
        kill(router.processIdentifier, SIGKILL)
        router.waitUntilExit()
        try feed(upTo: count)   // these go to the dead router's socket, or wait for the new one
        router = try start("router", aligners, routerArgs, name: "router-2")
        try input.fileHandleForWriting.close()

        try #require(eventually { !filter.isRunning }, "the filter never finished: \(logs("filter", "router-1", "router-2"))")
        #expect(filter.terminationStatus == 0, "\(logs("filter", "router-1", "router-2"))")

        // Every line exactly once, in order, aligned.
        let records = try String(contentsOf: output, encoding: .utf8).split(separator: "\n").map {
            (try JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]) ?? [:]
        }
        let ids = records.map { $0["id"] as? String ?? "?" }
        let expected = (0..<count).map { "s\($0)" }
        #expect(ids.count == count && Set(ids).count == count, "\(ids.count) lines, \(Set(ids).count) distinct, \(count) sent")
        #expect(Set(expected).subtracting(ids).isEmpty, "lost: \(Set(expected).subtracting(ids).sorted().prefix(20))")
        #expect(ids == expected, "every line once, in input order")
        let unaligned = records.filter { $0["error"] != nil || ($0["response"] as? String)?.contains("[fixed:ethical]") != true }
        #expect(unaligned.isEmpty, "not aligned: \(unaligned.prefix(3))")
        let filterLog = group.log("filter")
        #expect(filterLog.contains("router restarted; sending again what it held"), "the filter never saw the new router: \(logs("filter"))")

        // The cut host worked before and after its cut; what it held was run again elsewhere, once.
        let recorded = { (name: String) in
            ((try? String(contentsOfFile: group.logDir.appendingPathComponent("\(name).ids").path, encoding: .utf8)) ?? "")
                .split(separator: "\n").map(String.init)
        }
        let a1 = recorded("aligner-1"), a2 = recorded("aligner-2")
        #expect(!a1.isEmpty && !a2.isEmpty, "both aligner hosts worked: \(a1.count), \(a2.count)")
        #expect(Set(a1 + a2) == Set(expected), "every line went through an aligner host")

        // The intruder: nothing received on any door, never registered, refused again by the new router.
        for name in intruderRecords {
            #expect(recorded(name).isEmpty, "\(name) received samples: \(recorded(name).prefix(5))")
        }
        let routerLogs = group.log("router-1") + group.log("router-2")
        let registeredNames = Set(logLines(routerLogs, #"msg="worker ready""#).compactMap { line in
            line.split(separator: " ").first { $0.hasPrefix("worker=") }.map { String($0.dropFirst(7)) }
        })
        #expect(registeredNames == ["aligner-1", "aligner-2", "inspector"], "workers registered: \(registeredNames.sorted())")
        // The new router refuses the intruder too.
        let again = try start("intruder", aligners, ["filter", "--connect", endpoint("intruder", 5555)] + curve("intruder"),
                              name: "intruder-client-again", stdin: probe)
        #expect(eventually { !again.isRunning } && again.terminationStatus == 2, "\(logs("intruder-client-again"))")
        #expect(eventually { refused(group.log("router-2"), intruderKey, "client") }, "\(logs("router-2"))")
        let tapped = recorded("tap")
        #expect(!tapped.isEmpty && Set(tapped).isSubset(of: expected), "the allowlisted tap reader heard \(tapped.count) envelopes")

        let resent = filterLog.split(separator: "\n").first { $0.contains("router restarted") }?
            .split(separator: " ").first { $0.hasPrefix("in_flight=") } ?? "in_flight=?"
        print("multi-host: \(count) lines in \(String(format: "%.1f", Date().timeIntervalSince(started))) s; "
              + "aligner-1 \(a1.count), aligner-2 \(a2.count) envelopes (\(Set(a1).intersection(a2).count) run on both); "
              + "tap heard \(tapped.count); the filter sent again what the killed router held (\(resent))")
    }
}
