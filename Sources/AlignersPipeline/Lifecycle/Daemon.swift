import Foundation
import Logging
import ServiceLifecycle
import UnixSignals

/// Runs a blocking loop (a router or worker) on a thread of its own as a ServiceLifecycle service:
/// SIGTERM/SIGINT call `drain`, and the service ends when the loop returns.
public struct ThreadService: Service {
    let name: String
    let body: @Sendable () throws -> Void
    let drain: @Sendable () -> Void

    public init(name: String, body: @escaping @Sendable () throws -> Void, drain: @escaping @Sendable () -> Void) {
        self.name = name
        self.body = body
        self.drain = drain
    }

    public func run() async throws {
        try await withGracefulShutdownHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, Error>) in
                let thread = Thread {
                    do {
                        try body()
                        continuation.resume()
                    } catch {
                        continuation.resume(throwing: error)
                    }
                }
                thread.name = name
                thread.start()
            }
        } onGracefulShutdown: {
            drain()
        }
    }
}

public enum Daemon {
    /// Runs the services until they end or a signal drains them. `onReload`, if given, is called on
    /// each SIGHUP (systemd's `ExecReload=`).
    public static func run(_ services: [ThreadService], onReload: (@Sendable () -> Void)? = nil, logger: Logger) async throws {
        var configurations: [ServiceGroupConfiguration.ServiceConfiguration] =
            services.map { .init(service: $0, successTerminationBehavior: .gracefullyShutdownGroup) }
        // Last, so a shutdown stops listening for SIGHUP before it drains the others.
        if let onReload { configurations.append(.init(service: ReloadOnHangup(reload: onReload), successTerminationBehavior: .ignore)) }
        let group = ServiceGroup(configuration: .init(services: configurations, gracefulShutdownSignals: [.sigterm, .sigint],
                                                      logger: logger))
        try await group.run()
    }
}

/// Calls `reload` on every SIGHUP until the group shuts down.
struct ReloadOnHangup: Service {
    let reload: @Sendable () -> Void

    func run() async throws {
        for await _ in await UnixSignalsSequence(trapping: .sighup).cancelOnGracefulShutdown() {
            reload()
        }
    }
}

/// Runs blocking work on a thread of its own and awaits it, keeping the cooperative pool free
/// (blocking ZeroMQ calls inside tasks starve it).
public func onThread<T: Sendable>(_ name: String, _ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { continuation in
        let thread = Thread {
            do { continuation.resume(returning: try body()) } catch { continuation.resume(throwing: error) }
        }
        thread.name = name
        thread.start()
    }
}
