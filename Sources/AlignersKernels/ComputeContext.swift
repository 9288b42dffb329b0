import Foundation

/// Where and how the engine computes: the thread pool, the kernel plan, OpenBLAS's thread count.
/// Made once at the composition root (a CLI command, a benchmark, a test) and passed down to the
/// models: nothing under it reads the environment or keeps a mutable global.
public struct ComputeContext: Sendable {
    /// The fork-join pool every parallel section runs on.
    public let pool: ComputePool
    /// Which kernel each product takes.
    public var plan: KernelPlan

    /// OpenBLAS's own thread count, fixed for the process when the first context is made. One:
    /// every product we split runs on `pool` (each thread calls OpenBLAS on its slice; the encoder
    /// measured as fast as with OpenBLAS's threads, fc2661f), OpenBLAS's count is process-wide (the
    /// decoder and the encoder in one `aligners filter` would fight over any other setting), and its
    /// threads would compete with the pool's spinning workers.
    public static let blasThreads = 1
    private static let blasThreadsFixed: Void = BLAS.setThreads(blasThreads)

    public init(pool: ComputePool, plan: KernelPlan = KernelPlan()) {
        _ = Self.blasThreadsFixed
        self.pool = pool
        self.plan = plan
    }

    /// A context with a pool of `threads` threads (clamped to 1...64).
    public init(threads: Int, plan: KernelPlan = KernelPlan()) {
        self.init(pool: ComputePool(threads: max(1, min(threads, 64))), plan: plan)
    }

    /// The context the environment asks for; the environment variables are read here and nowhere else:
    /// - `ALIGNERS_THREADS`: the pool's size (default: the online CPUs; `threads` wins when given);
    /// - `ALIGNERS_VNNI=0`: batched products on sgemm even where the CPU has VNNI (for comparisons);
    /// - `ALIGNERS_BATCH_THRESHOLD`: the row count from which products take the batched path.
    public static func fromEnvironment(_ environment: [String: String], threads: Int? = nil) -> ComputeContext {
        func positive(_ name: String) -> Int? { environment[name].flatMap { Int($0) }.flatMap { $0 > 0 ? $0 : nil } }
        let n = threads ?? positive("ALIGNERS_THREADS") ?? Int(sysconf(Int32(_SC_NPROCESSORS_ONLN)))
        let plan = KernelPlan(vnni: environment["ALIGNERS_VNNI"] != "0", batchThreshold: positive("ALIGNERS_BATCH_THRESHOLD"))
        return ComputeContext(threads: n, plan: plan)
    }
}
