#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Synchronization

/// A tiny fork-join pool for the decode kernels: `run` hands the same closure to every thread
/// (the caller is thread 0) and returns when all have finished.
///
/// One decode step makes ~120 parallel sections of a few tens of microseconds each, so a dispatch
/// must cost about a microsecond: workers spin on an atomic generation counter for a while after
/// each job and only then sleep on a condition variable (GCD's `concurrentPerform` and plain
/// condition variables cost 10–100 µs per wake-up on these VMs).
public final class ComputePool: @unchecked Sendable {
    public let threads: Int
    /// Spin iterations before a worker sleeps.
    public var spinLimit = 200_000

    private let generation = Atomic<Int>(0)
    private let pending = Atomic<Int>(0)
    private let sleepers = Atomic<Int>(0)
    private nonisolated(unsafe) var job: ((Int) -> Void)?
    private let mutex: UnsafeMutablePointer<pthread_mutex_t>
    private let cond: UnsafeMutablePointer<pthread_cond_t>
    private let busy = Mutex<Void>(())

    /// A process wants one pool (its workers spin between jobs): make it through `ComputeContext`,
    /// which also fixes OpenBLAS's own thread count.
    public init(threads: Int) {
        self.threads = threads
        mutex = .allocate(capacity: 1)
        cond = .allocate(capacity: 1)
        pthread_mutex_init(mutex, nil)
        pthread_cond_init(cond, nil)
        for i in 1..<max(threads, 1) {
            let box = Unmanaged.passRetained(WorkerStart(pool: self, index: i))
            var tid = pthread_t()
            #if canImport(Glibc)
            pthread_create(&tid, nil, { arg in
                let s = Unmanaged<WorkerStart>.fromOpaque(arg!).takeRetainedValue()
                s.pool.workerLoop(s.index)
                return nil
            }, box.toOpaque())
            #else
            pthread_create(&tid, nil, { arg in
                let s = Unmanaged<WorkerStart>.fromOpaque(arg).takeRetainedValue()
                s.pool.workerLoop(s.index)
                return nil
            }, box.toOpaque())
            #endif
            pthread_detach(tid)
        }
    }

    private final class WorkerStart {
        let pool: ComputePool
        let index: Int
        init(pool: ComputePool, index: Int) { self.pool = pool; self.index = index }
    }

    private func workerLoop(_ index: Int) {
        var seen = 0
        while true {
            var spins = 0
            while generation.load(ordering: .acquiring) == seen {
                spins &+= 1
                if spins & 1023 == 0 { sched_yield() }
                if spins > spinLimit {
                    pthread_mutex_lock(mutex)
                    sleepers.add(1, ordering: .sequentiallyConsistent)
                    while generation.load(ordering: .sequentiallyConsistent) == seen { pthread_cond_wait(cond, mutex) }
                    sleepers.subtract(1, ordering: .sequentiallyConsistent)
                    pthread_mutex_unlock(mutex)
                    break
                }
            }
            seen = generation.load(ordering: .acquiring)
            job!(index)
            pending.subtract(1, ordering: .releasing)
        }
    }

    /// Runs `body(t)` for t in 0..<threads, on all threads at once; t == 0 on the caller.
    /// Calls from several threads are serialised.
    public func run(_ body: (Int) -> Void) {
        if threads == 1 { body(0); return }
        busy.withLock { _ in
            withoutActuallyEscaping(body) { body in
                job = body
                pending.store(threads - 1, ordering: .relaxed)
                generation.add(1, ordering: .sequentiallyConsistent)
                if sleepers.load(ordering: .sequentiallyConsistent) > 0 {
                    pthread_mutex_lock(mutex)
                    pthread_cond_broadcast(cond)
                    pthread_mutex_unlock(mutex)
                }
                body(0)
                // Spin, yielding now and then: when the machine is oversubscribed a worker may be
                // descheduled, and a pure spin would burn the core it needs.
                var spins = 0
                while pending.load(ordering: .acquiring) > 0 {
                    spins &+= 1
                    if spins & 1023 == 0 { sched_yield() }
                }
                job = nil
            }
        }
    }

    /// Splits `0..<count` into `threads` contiguous chunks (multiples of `granule`) and runs them.
    public func parallelFor(_ count: Int, granule: Int = 1, _ body: (Range<Int>) -> Void) {
        let n = threads
        if n == 1 || count <= granule { body(0..<count); return }
        let units = (count + granule - 1) / granule
        run { t in
            let lo = min(count, units * t / n * granule)
            let hi = min(count, units * (t + 1) / n * granule)
            if lo < hi { body(lo..<hi) }
        }
    }
}
