#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Foundation

/// stderr and stdout through write(2). Foundation's `FileHandle.write` traps when the descriptor is
/// closed or full; a log line must never stop the process, and a failed output must be reported.
public enum StandardStreams {
    /// Writes to stderr, ignoring failures (a closed or full stderr loses the text, nothing else).
    public static func error(_ text: String) { _ = write(STDERR_FILENO, Array(text.utf8)) }

    /// Writes to stdout; when it cannot (`| head` closed it, the disk is full), says so on stderr and
    /// exits with status 2, as the filter does.
    public static func output(_ bytes: [UInt8]) {
        if let problem = write(STDOUT_FILENO, bytes) {
            error("cannot write the output (\(problem)); stopping\n")
            exit(2)
        }
    }

    /// Writes everything, or returns why it could not.
    public static func write(_ fd: Int32, _ bytes: [UInt8]) -> String? {
        var offset = 0
        return bytes.withUnsafeBytes { raw -> String? in
            while offset < raw.count {
                #if canImport(Glibc)
                let n = Glibc.write(fd, raw.baseAddress! + offset, raw.count - offset)
                #else
                let n = Darwin.write(fd, raw.baseAddress! + offset, raw.count - offset)
                #endif
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
