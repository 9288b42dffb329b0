import Foundation
import Testing
@testable import AlignersPipeline

#if canImport(Glibc)
import Glibc
#endif

/// A bound AF_UNIX datagram socket standing in for systemd's notify socket.
final class NotifySocket {
    let fd: Int32
    let environmentValue: String   // what $NOTIFY_SOCKET would hold
    private let directory: String?

    /// A socket at a path in a fresh temporary directory, or in the abstract namespace.
    init(abstract: Bool = false) throws {
        let unique = "\(getpid())-\(UInt32.random(in: 0 ... .max))"
        if abstract {
            let name = "aligners-test-" + unique
            directory = nil
            environmentValue = "@" + name
            fd = try Self.bind(name: [0] + Array(name.utf8))
        } else {
            let dir = FileManager.default.temporaryDirectory.appendingPathComponent("sdnotify-" + unique).path
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            directory = dir
            environmentValue = dir + "/notify"
            fd = try Self.bind(name: Array(environmentValue.utf8) + [0])
        }
    }

    deinit {
        close(fd)
        if let directory { try? FileManager.default.removeItem(atPath: directory) }
    }

    private static func bind(name: [UInt8]) throws -> Int32 {
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw POSIXError(.init(rawValue: errno)!) }
        var timeout = timeval(tv_sec: 5, tv_usec: 0)   // a missing datagram fails, never hangs
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: name) }
        let length = socklen_t(MemoryLayout<sockaddr_un>.offset(of: \.sun_path)! + name.count)
        let rc = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.bind(fd, $0, length) }
        }
        guard rc == 0 else {
            let code = errno
            close(fd)
            throw POSIXError(.init(rawValue: code)!)
        }
        return fd
    }

    /// The next datagram, as text; nil on timeout.
    func receive() -> String? {
        var buffer = [UInt8](repeating: 0, count: 4096)
        let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        guard n >= 0 else { return nil }
        return String(decoding: buffer[..<n], as: UTF8.self)
    }

    /// Whether a datagram is waiting (without consuming it).
    func hasPending() -> Bool {
        var byte: UInt8 = 0
        return recv(fd, &byte, 1, Int32(MSG_PEEK | MSG_DONTWAIT)) >= 0
    }

    var notifier: SystemdNotifier { SystemdNotifier(environment: ["NOTIFY_SOCKET": environmentValue]) }
}

@Suite struct SystemdNotifierTests {
    @Test func sendsExactDatagramsToFilesystemSocket() throws {
        let socket = try NotifySocket()
        let notifier = socket.notifier
        #expect(notifier.isEnabled)
        #expect(notifier.destination == .path(socket.environmentValue))

        #expect(notifier.ready())
        #expect(socket.receive() == "READY=1")
        #expect(notifier.status("loading model 2/3"))
        #expect(socket.receive() == "STATUS=loading model 2/3")
        #expect(notifier.watchdog())
        #expect(socket.receive() == "WATCHDOG=1")
        #expect(notifier.stopping())
        #expect(socket.receive() == "STOPPING=1")
    }

    @Test func sendsToAbstractNamespace() throws {
        let socket = try NotifySocket(abstract: true)
        let notifier = socket.notifier
        #expect(notifier.destination == .abstract(String(socket.environmentValue.dropFirst())))

        #expect(notifier.ready(status: "serving align.helpful"))
        #expect(socket.receive() == "READY=1\nSTATUS=serving align.helpful")
        #expect(notifier.stopping(status: "draining 3 jobs"))
        #expect(socket.receive() == "STOPPING=1\nSTATUS=draining 3 jobs")
        #expect(notifier.watchdog())
        #expect(socket.receive() == "WATCHDOG=1")
    }

    @Test func otherMessages() throws {
        let socket = try NotifySocket()
        let notifier = socket.notifier

        #expect(notifier.status("line one\nline two"))
        #expect(socket.receive() == "STATUS=line one line two")   // a newline would start a new assignment

        #expect(notifier.extendTimeout(by: .seconds(90)))
        #expect(socket.receive() == "EXTEND_TIMEOUT_USEC=90000000")

        #expect(notifier.reloading())
        let reloading = try #require(socket.receive()).split(separator: "\n")
        #expect(reloading.count == 2)
        #expect(reloading.first == "RELOADING=1")
        #expect(reloading.last?.hasPrefix("MONOTONIC_USEC=") == true)
        #expect(UInt64(reloading.last!.dropFirst("MONOTONIC_USEC=".count)) != nil)

        try notifier.send("FDSTORE=0\nCUSTOM=x")
        #expect(socket.receive() == "FDSTORE=0\nCUSTOM=x")
    }

    @Test func disabledWithoutNotifySocket() throws {
        let notifier = SystemdNotifier(environment: [:])
        #expect(!notifier.isEnabled)
        #expect(notifier.disabledReason != nil)
        #expect(notifier.description.contains("disabled"))
        #expect(!notifier.ready())
        #expect(!notifier.watchdog())
        try notifier.send("READY=1")   // a no-op, not an error
        #expect(!notifier.watchdogDue(lastPing: nil))

        #expect(!SystemdNotifier(environment: ["NOTIFY_SOCKET": ""]).isEnabled)
        #expect(!SystemdNotifier(environment: ["NOTIFY_SOCKET": "relative/path"]).isEnabled)
        #expect(!SystemdNotifier(environment: ["NOTIFY_SOCKET": "@"]).isEnabled)
    }

    @Test func reportsSendFailures() throws {
        let missing = SystemdNotifier(destination: .path("/nonexistent-\(getpid())/notify"))
        #expect(missing.isEnabled)
        #expect(!missing.ready())
        #expect(throws: SystemdNotifier.Error.self) { try missing.send("READY=1") }

        let tooLong = SystemdNotifier(destination: .path("/" + String(repeating: "x", count: 200)))
        #expect(throws: SystemdNotifier.Error.self) { try tooLong.send("READY=1") }
    }

    @Test(arguments: [
        // WATCHDOG_USEC, WATCHDOG_PID ("self" = our pid), expected interval
        ("30000000", nil, Duration.seconds(15)),
        ("30000000", "self", Duration.seconds(15)),
        ("30000000", "", Duration.seconds(15)),
        ("1000001", nil, Duration.microseconds(500_000)),
        ("30000000", "1", nil),          // meant for another process
        ("30000000", "garbage", nil),
        ("0", nil, nil),
        ("-5", nil, nil),
        ("abc", nil, nil),
        ("", nil, nil),
        (nil, nil, nil),
    ] as [(String?, String?, Duration?)])
    func watchdogInterval(usec: String?, pid: String?, expected: Duration?) {
        let ownPID = getpid() == 1 ? 2 : getpid()
        var environment = ["NOTIFY_SOCKET": "@x"]
        environment["WATCHDOG_USEC"] = usec
        environment["WATCHDOG_PID"] = pid == "self" ? String(ownPID) : pid
        #expect(SystemdNotifier(environment: environment, pid: ownPID).watchdogInterval == expected)
    }

    @Test func watchdogPacing() throws {
        let socket = try NotifySocket()
        let notifier = SystemdNotifier(environment: ["NOTIFY_SOCKET": socket.environmentValue,
                                                     "WATCHDOG_USEC": "20000000"])
        #expect(notifier.watchdogInterval == .seconds(10))

        let start = ContinuousClock.now
        var lastPing: ContinuousClock.Instant? = nil
        #expect(notifier.watchdogIfDue(lastPing: &lastPing, now: start))      // first ping at once
        #expect(lastPing == start)
        #expect(socket.receive() == "WATCHDOG=1")
        #expect(!notifier.watchdogIfDue(lastPing: &lastPing, now: start + .seconds(9)))
        #expect(lastPing == start)
        #expect(!socket.hasPending())
        #expect(notifier.watchdogIfDue(lastPing: &lastPing, now: start + .seconds(10)))
        #expect(lastPing == start + .seconds(10))
        #expect(socket.receive() == "WATCHDOG=1")

        // No watchdog armed: never due.
        #expect(!socket.notifier.watchdogDue(lastPing: nil, now: start))
    }
}

@Suite struct WorkerWatchdogTests {
    @Test("the watchdog tick: idle, within the job timeout, past it, and a job stamped after the clock was read")
    func responsive() {
        #expect(Worker.responsive(now: 5_000_000_000, busySince: 0, jobTimeoutMs: 1000))
        #expect(Worker.responsive(now: 5_000_000_000, busySince: 4_500_000_000, jobTimeoutMs: 1000))
        #expect(!Worker.responsive(now: 5_000_000_000, busySince: 3_000_000_000, jobTimeoutMs: 1000))
        // The compute thread started its job after this thread read `now` (crashed with an underflow before 0412147).
        #expect(Worker.responsive(now: 5_000_000_000, busySince: 5_000_000_001, jobTimeoutMs: 1000))
    }
}
