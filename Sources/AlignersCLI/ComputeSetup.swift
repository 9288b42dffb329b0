import AlignersKernels
import Foundation

extension ComputeContext {
    /// The process's compute context: each command makes it once, from the environment
    /// (`ALIGNERS_THREADS`, `ALIGNERS_VNNI`, `ALIGNERS_BATCH_THRESHOLD`) and its own `--threads`.
    static func forCommand(threads: Int? = nil) -> ComputeContext {
        .fromEnvironment(ProcessInfo.processInfo.environment, threads: threads)
    }
}
