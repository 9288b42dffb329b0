import Foundation

/// Progress of a training run on stderr: on a terminal, one line redrawn in place (step, loss,
/// tokens/s, ETA); otherwise a plain log line every `logEvery` steps and at the end.
public struct TrainingProgress: Sendable {
    public var terminal: Bool
    public var logEvery: Int
    public var write: @Sendable (String) -> Void
    /// The step this session started from (a resumed run's ETA counts only its own steps).
    public var firstStep = 0
    private let started = Date()

    public init(terminal: Bool = isatty(STDERR_FILENO) == 1, logEvery: Int = 10,
                write: @escaping @Sendable (String) -> Void = { FileHandle.standardError.write(Data($0.utf8)) }) {
        self.terminal = terminal
        self.logEvery = logEvery
        self.write = write
    }

    public func step(_ s: Int, of total: Int, loss: Double, tokensPerSecond: Double, learningRate: Float, gradNorm: Float) {
        let remaining = Double(total - s) * Date().timeIntervalSince(started) / Double(max(1, s - firstStep))
        let text = String(format: "step %d/%d  loss %.4f  %.0f tok/s  lr %.2e  |g| %.3f  ETA %@", s, total, loss, tokensPerSecond,
                          learningRate, gradNorm, Self.duration(remaining))
        if terminal {
            let width = 24, filled = width * s / max(1, total)
            write("\r[" + String(repeating: "=", count: filled) + String(repeating: " ", count: width - filled) + "] " + text + "\u{1B}[K")
        } else if s % max(1, logEvery) == 0 || s == total || s == 1 {
            write(text + "\n")
        }
    }

    /// A line that stays (ends the progress line on a terminal first).
    public func log(_ line: String) {
        write((terminal ? "\r\u{1B}[K" : "") + line + "\n")
    }

    public func finish() { if terminal { write("\n") } }

    public static func duration(_ seconds: Double) -> String {
        guard seconds.isFinite else { return "–" }
        let s = Int(seconds.rounded())
        return s >= 3600 ? "\(s / 3600)h\(String(format: "%02d", s % 3600 / 60))m" : s >= 60 ? "\(s / 60)m\(String(format: "%02d", s % 60))s" : "\(s)s"
    }
}
