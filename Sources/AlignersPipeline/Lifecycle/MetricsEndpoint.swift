import Foundation
import Synchronization
import Hummingbird
import Metrics
import NIOCore
import Prometheus

/// Serves `GET /metrics` in Prometheus's text format on a port of its own, with Hummingbird (its
/// own event loop: concurrent scrapes, idle connections and slow clients never hold one another up).
public enum MetricsEndpoint {
    private static let registry = PrometheusCollectorRegistry()

    /// Bootstraps swift-metrics with Prometheus and listens on `host:port` (a name such as
    /// "localhost" is resolved; port 0 picks a free one). Call once per process. Returns the bound
    /// address and, for plain HTTP on a host other than loopback (which needs `insecure`), a
    /// warning to log.
    @discardableResult
    public static func start(port: Int, host: String = "127.0.0.1", insecure: Bool = false) throws -> (address: String, warning: String?) {
        let warning = try EndpointPolicy.check("tcp://\(host):\(port)", use: "serve metrics on", encrypted: false, insecure: insecure,
                                               risk: "read the pipeline's metrics",
                                               remedy: "Serve them on loopback (--metrics-host 127.0.0.1) and scrape through a tunnel or a local agent")
        var factory = PrometheusMetricsFactory(registry: registry)
        factory.defaultValueHistogramBuckets = [0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1]
        MetricsSystem.bootstrap(factory)

        let router = Hummingbird.Router()
        router.get("metrics") { _, _ -> Response in
            Response(status: .ok, headers: [.contentType: "text/plain; version=0.0.4"],
                     body: ResponseBody(byteBuffer: ByteBuffer(bytes: registry.emitToBuffer())))
        }
        // Started on its own task; the caller learns the bound address or the bind error before going on.
        let started = Started()
        let app = Application(router: router, configuration: .init(address: .hostname(host, port: port), serverName: nil),
                              onServerRunning: { channel in started.finish(.success(channel.localAddress?.description ?? "\(host):\(port)")) })
        Task.detached {
            do { try await app.run() } catch { started.finish(.failure(error)) }
        }
        switch started.wait() {
        case .success(let address): return (address, warning)
        case .failure(let error): throw StageError("metrics: cannot listen on \(host):\(port): \(error)")
        }
    }

    /// The first outcome of the server's start, handed to a thread that waits for it.
    private final class Started: @unchecked Sendable {
        private let done = DispatchSemaphore(value: 0)
        private let outcome = Mutex<Result<String, any Error>?>(nil)

        func finish(_ result: Result<String, any Error>) {
            let first = outcome.withLock { o in
                guard o == nil else { return false }
                o = result
                return true
            }
            if first { done.signal() }
        }

        func wait() -> Result<String, any Error> {
            done.wait()
            return outcome.withLock { $0! }
        }
    }
}
