import Foundation
import Logging

/// Router and workers in this process: the same code as the daemons, minus the sockets. By
/// default they pass messages as values through hubs of mailboxes (no protobuf on any hop); with
/// `.inprocSockets` they talk ZeroMQ over inproc:// endpoints, for tests that speak to the router
/// through raw sockets.
public final class LocalPipeline: @unchecked Sendable {
    public enum Transport: Sendable {
        /// `LocalHub`s: values, no encoding.
        case values
        /// ROUTER and DEALER sockets on inproc:// endpoints, every message encoded.
        case inprocSockets
    }

    public let context: ZMQContext
    public let router: Router
    public let workers: [Worker]
    /// Where a client (`Filter(context:router:…)`) reaches the router.
    public let frontend: RouterAddress
    /// Where a worker (`Worker(context:router:…)`) reaches the router: the workers made here, or one more.
    public let backend: RouterAddress
    private var threads: [Thread] = []
    private let finished = DispatchGroup()

    public init(context: ZMQContext, settings: RouterSettings, handlers: [any StageHandler],
                workerSettings: WorkerSettings = WorkerSettings(), tap: String? = nil, transport: Transport = .values,
                logger: Logger) throws {
        self.context = context
        switch transport {
        case .values:
            let frontHub = try LocalHub(name: "frontend"), backHub = try LocalHub(name: "backend")
            router = try Router(context: context, frontend: frontHub, backend: backHub, tap: tap, settings: settings, logger: logger)
            frontend = .inProcess(frontHub)
            backend = .inProcess(backHub)
        case .inprocSockets:
            let tag = UUID().uuidString
            router = try Router(context: context, frontend: "inproc://aligners-frontend-\(tag)",
                                backend: "inproc://aligners-backend-\(tag)", tap: tap, settings: settings, logger: logger)
            frontend = .endpoint(router.frontendEndpoint)
            backend = .endpoint(router.backendEndpoint)
        }
        let backendAddress = backend   // not self.backend: the closure may not capture self yet
        workers = try handlers.map {
            try Worker(context: context, router: backendAddress, handler: $0, settings: workerSettings, logger: logger)
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
