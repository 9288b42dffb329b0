import Foundation
import Logging

/// Router and workers in this process, wired by inproc endpoints: the same code as the daemons,
/// minus the sockets' trip through the kernel.
public final class LocalPipeline: @unchecked Sendable {
    public let context: ZMQContext
    public let router: Router
    public let workers: [Worker]
    private var threads: [Thread] = []
    private let finished = DispatchGroup()

    public var frontend: String { router.frontendEndpoint }

    public init(context: ZMQContext, settings: RouterSettings, handlers: [any StageHandler],
                workerSettings: WorkerSettings = WorkerSettings(), tap: String? = nil, logger: Logger) throws {
        self.context = context
        let tag = UUID().uuidString
        router = try Router(context: context, frontend: "inproc://aligners-frontend-\(tag)",
                            backend: "inproc://aligners-backend-\(tag)", tap: tap, settings: settings, logger: logger)
        workers = try handlers.map {
            try Worker(context: context, endpoint: "inproc://aligners-backend-\(tag)", handler: $0,
                   settings: workerSettings, logger: logger)
        }
    }

    /// Starts the router and every worker on threads of their own.
    public func start() {
        spawn("aligners-router") { [router] in try router.run() }
        for worker in workers { spawn("aligners-worker") { try worker.run() } }
    }

    /// Drains the router, then the workers, and waits for every thread to end.
    public func stop() {
        router.drain()
        for worker in workers { worker.drain() }
        finished.wait()
    }

    private func spawn(_ name: String, _ body: @escaping @Sendable () throws -> Void) {
        finished.enter()
        let thread = Thread { [finished] in
            defer { finished.leave() }
            do { try body() } catch {
                StandardStreams.error("level=error msg=\"\(name) stopped\" error=\"\(error)\"\n")
            }
        }
        thread.name = name
        thread.start()
        threads.append(thread)
    }
}
