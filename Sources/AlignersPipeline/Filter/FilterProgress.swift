import Foundation
import Synchronization

/// What a long filter run shows on stderr while it works, so that minutes of model time are not
/// silence: lines read, lines written (rewritten / untouched / errors) and the rate. On a terminal,
/// one line redrawn every second; otherwise a plain line every 30 s. Stops with a last update.
public final class FilterProgress: Sendable {
    public enum Mode: Sendable, Equatable {
        case off
        case terminal
        case log(seconds: Double)
    }

    private let mode: Mode
    private let sample: @Sendable () -> (read: Int, summary: FilterSummary)
    private let write: @Sendable (String) -> Void
    private let running = Atomic<Bool>(true)
    private let done = DispatchSemaphore(value: 0)
    private let started = Date()

    public init(mode: Mode, write: @escaping @Sendable (String) -> Void = { StandardStreams.error($0) },
                sample: @escaping @Sendable () -> (read: Int, summary: FilterSummary)) {
        self.mode = mode
        self.sample = sample
        self.write = write
        guard mode != .off else { done.signal(); return }
        let interval: Double = if case .log(let s) = mode { s } else { 1 }
        let t = Thread { [self] in
            var next = Date().addingTimeInterval(interval)
            while running.load(ordering: .acquiring) {
                Thread.sleep(forTimeInterval: 0.1)
                if Date() >= next { report(final: false); next = Date().addingTimeInterval(interval) }
            }
            done.signal()
        }
        t.name = "aligners-progress"
        t.start()
    }

    /// The status line for these counts.
    public static func line(read: Int, summary s: FilterSummary, seconds: Double) -> String {
        let rate = seconds > 0 ? Double(s.lines) / seconds : 0
        return "aligners filter: \(read) lines read, \(s.lines) written (\(s.aligned) rewritten, \(s.untouched) untouched, "
            + "\(s.invalid + s.failed) errors), " + String(format: "%.2f lines/s, %.0f s", rate, seconds)
    }

    private func report(final: Bool) {
        let (read, summary) = sample()
        let text = Self.line(read: read, summary: summary, seconds: Date().timeIntervalSince(started))
        switch mode {
        case .off: return
        case .terminal: write("\r" + text + "\u{1B}[K" + (final ? "\n" : ""))
        case .log: write(text + "\n")
        }
    }

    /// Ends the reports (with a last one on a terminal, so the line shows the end state).
    public func stop() {
        guard running.exchange(false, ordering: .acquiringAndReleasing) else { return }
        done.wait()
        if mode == .terminal { report(final: true) }
    }
}

/// Time left of a long job, at the rate measured since its first progress: set-up before the first
/// item (loading models, a first slow batch) must not make the first estimate wildly long.
public struct RemainingTime: Sendable {
    private var first: (done: Int, at: Double)?
    public init() {}

    /// Seconds left at `now` (seconds on any clock) with `done` of `total` finished; nil until there
    /// is a rate to go by (the first progress only starts the measurement).
    public mutating func seconds(done: Int, total: Int, now: Double) -> Double? {
        if done >= total { return 0 }
        guard let first else {
            if done > 0 { self.first = (done, now) }
            return nil
        }
        guard done > first.done, now > first.at else { return nil }
        return Double(total - done) * (now - first.at) / Double(done - first.done)
    }
}
