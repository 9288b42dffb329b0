// The systemd notify protocol (sd_notify(3)) without libsystemd: newline-separated `KEY=VALUE`
// assignments sent as one datagram to the AF_UNIX socket named by `$NOTIFY_SOCKET`.
//
// Used by the daemons (`aligners router`, `aligners worker`) run as `Type=notify` units:
//
//     let notifier = SystemdNotifier()              // from the environment; a no-op outside systemd
//     notifier.ready(status: "serving inspect")
//     var lastPing: ContinuousClock.Instant? = nil
//     while running {                               // the poll loop itself, so a stuck loop
//         poll(timeout: ...)                        // stops the heartbeat and systemd restarts us
//         notifier.watchdogIfDue(lastPing: &lastPing)
//     }
//     notifier.stopping()
//
// The poll timeout must be shorter than `watchdogInterval` (half of `WatchdogSec=`).

import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

public struct SystemdNotifier: Sendable, CustomStringConvertible {
    /// Where notifications go: a filesystem socket, or a name in Linux's abstract namespace
    /// (written `@name` in `$NOTIFY_SOCKET`).
    public enum Destination: Sendable, Equatable {
        case path(String)
        case abstract(String)
    }

    public struct Error: Swift.Error, Sendable, CustomStringConvertible {
        public let operation: String
        public let errno: Int32
        public var description: String { "sd_notify \(operation): \(String(cString: strerror(errno))) (errno \(errno))" }
    }

    /// nil: not run by systemd (or `$NOTIFY_SOCKET` unusable); every send is then a no-op.
    public let destination: Destination?
    /// How often to send `WATCHDOG=1`: half of `$WATCHDOG_USEC`, nil when no watchdog is armed
    /// for this process.
    public let watchdogInterval: Duration?
    /// Why the notifier is disabled, for a log line; nil when enabled.
    public let disabledReason: String?

    public var isEnabled: Bool { destination != nil }

    /// Reads `$NOTIFY_SOCKET`, `$WATCHDOG_USEC` and `$WATCHDOG_PID` (the watchdog applies only
    /// when `$WATCHDOG_PID` is unset or equals `pid`).
    public init(environment: [String: String] = ProcessInfo.processInfo.environment, pid: Int32 = getpid()) {
        switch environment["NOTIFY_SOCKET"] {
        case nil, "":
            (destination, disabledReason) = (nil, "NOTIFY_SOCKET is not set")
        case let value? where value.hasPrefix("/"):
            (destination, disabledReason) = (.path(value), nil)
        case let value? where value.hasPrefix("@") && value.count > 1:
            (destination, disabledReason) = (.abstract(String(value.dropFirst())), nil)
        case let value?:
            (destination, disabledReason) = (nil, "NOTIFY_SOCKET=\(value) is neither an absolute path nor @abstract")
        }
        watchdogInterval = Self.watchdogInterval(usec: environment["WATCHDOG_USEC"],
                                                 pid: environment["WATCHDOG_PID"], ownPID: pid)
    }

    public init(destination: Destination?, watchdogInterval: Duration? = nil) {
        self.destination = destination
        self.watchdogInterval = watchdogInterval
        self.disabledReason = destination == nil ? "no destination" : nil
    }

    /// Half of `WATCHDOG_USEC`, as systemd recommends; nil when unset, not a positive integer, or
    /// meant for another process.
    static func watchdogInterval(usec: String?, pid: String?, ownPID: Int32) -> Duration? {
        if let pid, !pid.isEmpty, Int32(pid) != ownPID { return nil }
        guard let usec, let micros = UInt64(usec), micros > 0 else { return nil }
        return .microseconds(Int64(clamping: micros / 2))
    }

    public var description: String {
        switch destination {
        case .path(let p)?: "systemd notify to \(p)" + watchdogDescription
        case .abstract(let n)?: "systemd notify to @\(n)" + watchdogDescription
        case nil: "systemd notify disabled: \(disabledReason ?? "")"
        }
    }

    private var watchdogDescription: String {
        watchdogInterval.map { ", watchdog every \($0)" } ?? ", no watchdog"
    }

    // MARK: Messages

    /// `READY=1`: start-up finished (models loaded, sockets bound). With `status`, one datagram
    /// carries both.
    @discardableResult
    public func ready(status: String? = nil) -> Bool {
        trySend(["READY=1"] + (status.map { ["STATUS=" + Self.oneLine($0)] } ?? []))
    }

    /// `STATUS=...`: free text shown by `systemctl status`. Newlines become spaces.
    @discardableResult
    public func status(_ text: String) -> Bool { trySend(["STATUS=" + Self.oneLine(text)]) }

    /// `STOPPING=1`: graceful shutdown (draining) has begun.
    @discardableResult
    public func stopping(status: String? = nil) -> Bool {
        trySend(["STOPPING=1"] + (status.map { ["STATUS=" + Self.oneLine($0)] } ?? []))
    }

    /// `RELOADING=1` with `MONOTONIC_USEC=` (what `Type=notify-reload` expects); follow with
    /// `ready()` when done.
    @discardableResult
    public func reloading() -> Bool {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        let usec = UInt64(now.tv_sec) * 1_000_000 + UInt64(now.tv_nsec) / 1_000
        return trySend(["RELOADING=1", "MONOTONIC_USEC=\(usec)"])
    }

    /// `WATCHDOG=1`: the keep-alive ping. Send it from the loop that does the work.
    @discardableResult
    public func watchdog() -> Bool { trySend(["WATCHDOG=1"]) }

    /// `EXTEND_TIMEOUT_USEC=`: ask for more time to start or stop (e.g. while loading a model).
    @discardableResult
    public func extendTimeout(by duration: Duration) -> Bool {
        let (seconds, attoseconds) = duration.components
        let usec = max(0, seconds) * 1_000_000 + max(0, attoseconds) / 1_000_000_000_000
        return trySend(["EXTEND_TIMEOUT_USEC=\(usec)"])
    }

    // MARK: Watchdog pacing

    /// Whether a loop that last pinged at `lastPing` (nil: never) should ping at `now`. Always
    /// false without a watchdog.
    public func watchdogDue(lastPing: ContinuousClock.Instant?, now: ContinuousClock.Instant = .now) -> Bool {
        guard isEnabled, let interval = watchdogInterval else { return false }
        guard let lastPing else { return true }
        return now - lastPing >= interval
    }

    /// Sends `WATCHDOG=1` if due and records the time in `lastPing`. Returns whether it sent.
    @discardableResult
    public func watchdogIfDue(lastPing: inout ContinuousClock.Instant?, now: ContinuousClock.Instant = .now) -> Bool {
        guard watchdogDue(lastPing: lastPing, now: now) else { return false }
        lastPing = now
        return watchdog()
    }

    // MARK: Sending

    private func trySend(_ assignments: [String]) -> Bool {
        guard isEnabled else { return false }
        do {
            try send(assignments.joined(separator: "\n"))
            return true
        } catch {
            return false
        }
    }

    /// Sends `message` (newline-separated `KEY=VALUE` lines) as one datagram. A no-op when disabled.
    public func send(_ message: String) throws(SystemdNotifier.Error) {
        guard let destination else { return }
        #if os(Linux)
        let fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        #else
        let fd = socket(AF_UNIX, SOCK_DGRAM, 0)
        #endif
        guard fd >= 0 else { throw Error(operation: "socket", errno: errno) }
        defer { close(fd) }

        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let name: [UInt8]
        switch destination {
        case .path(let path): name = Array(path.utf8) + [0]
        case .abstract(let abstractName): name = [0] + Array(abstractName.utf8)   // leading NUL, no terminator
        }
        let capacity = MemoryLayout.size(ofValue: address.sun_path)
        guard name.count <= capacity else { throw Error(operation: "address", errno: ENAMETOOLONG) }
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: name) }
        let length = socklen_t(MemoryLayout<sockaddr_un>.offset(of: \.sun_path)! + name.count)

        let bytes = Array(message.utf8)
        let sent = withUnsafePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { sockaddrPointer in
                bytes.withUnsafeBytes { buffer in
                    sendto(fd, buffer.baseAddress, buffer.count, 0, sockaddrPointer, length)
                }
            }
        }
        guard sent >= 0 else { throw Error(operation: "sendto", errno: errno) }
        guard sent == bytes.count else { throw Error(operation: "sendto (short)", errno: EMSGSIZE) }
    }

    private static func oneLine(_ text: String) -> String {
        String(text.map { $0.isNewline ? " " : $0 })
    }
}
