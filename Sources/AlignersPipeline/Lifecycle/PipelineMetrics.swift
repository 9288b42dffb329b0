import Foundation
import CoreMetrics
import Metrics
import Prometheus

/// The pipeline's metrics, through swift-metrics (no-ops until `MetricsEndpoint.start` bootstraps
/// Prometheus). Handles are made once per label set and cached: making one is a registry lookup.
final class PipelineMetrics: @unchecked Sendable {
    static let shared = PipelineMetrics()
    private let lock = NSLock()
    private var counters: [String: CoreMetrics.Counter] = [:]
    private var recorders: [String: CoreMetrics.Recorder] = [:]
    private var timers: [String: CoreMetrics.Timer] = [:]
    private var gauges: [String: CoreMetrics.Gauge] = [:]

    private func key(_ label: String, _ dims: [(String, String)]) -> String {
        label + dims.map { "|\($0.0)=\($0.1)" }.joined()
    }

    func count(_ label: String, _ dims: [(String, String)] = [], by n: Int = 1) {
        guard n > 0 else { return }
        let k = key(label, dims)
        lock.lock()
        let c = counters[k] ?? CoreMetrics.Counter(label: label, dimensions: dims)
        counters[k] = c
        lock.unlock()
        c.increment(by: n)
    }

    func record(_ label: String, _ dims: [(String, String)] = [], _ value: Double) {
        let k = key(label, dims)
        lock.lock()
        let r = recorders[k] ?? CoreMetrics.Recorder(label: label, dimensions: dims, aggregate: true)
        recorders[k] = r
        lock.unlock()
        r.record(value)
    }

    func time(_ label: String, _ dims: [(String, String)] = [], nanoseconds: UInt64) {
        let k = key(label, dims)
        lock.lock()
        let t = timers[k] ?? CoreMetrics.Timer(label: label, dimensions: dims)
        timers[k] = t
        lock.unlock()
        t.recordNanoseconds(Int64(nanoseconds))
    }

    func gauge(_ label: String, _ dims: [(String, String)] = [], _ value: Double) {
        let k = key(label, dims)
        lock.lock()
        let g = gauges[k] ?? CoreMetrics.Gauge(label: label, dimensions: dims)
        gauges[k] = g
        lock.unlock()
        g.record(value)
    }
}

/// Serves `GET /metrics` in Prometheus's text format on a port of its own (a thread with a plain
/// socket: the scrape is one small request every few seconds).
public enum MetricsEndpoint {
    private static let registry = PrometheusCollectorRegistry()

    /// Bootstraps swift-metrics with Prometheus and listens on `host:port`. Call once per process.
    /// The endpoint is plain HTTP: a host other than loopback needs `insecure`, and the returned
    /// warning (nil on loopback) should be logged.
    @discardableResult
    public static func start(port: Int, host: String = "127.0.0.1", insecure: Bool = false) throws -> String? {
        let warning = try EndpointPolicy.check("tcp://\(host):\(port)", use: "serve metrics on", encrypted: false, insecure: insecure,
                                               risk: "read the pipeline's metrics",
                                               remedy: "Serve them on loopback (--metrics-host 127.0.0.1) and scrape through a tunnel or a local agent")
        var factory = PrometheusMetricsFactory(registry: registry)
        factory.defaultValueHistogramBuckets = [0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1]
        MetricsSystem.bootstrap(factory)

        // The host by name or address (IPv4 or IPv6), as getaddrinfo resolves it: "localhost" is
        // loopback, not inet_addr's error value 255.255.255.255.
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        hints.ai_flags = AI_PASSIVE
        var found: UnsafeMutablePointer<addrinfo>?
        let status = getaddrinfo(host, String(port), &hints, &found)
        guard status == 0, let first = found else {
            throw StageError("metrics: cannot resolve --metrics-host \(host): \(String(cString: gai_strerror(status)))")
        }
        defer { freeaddrinfo(found) }
        // IPv4 first when the name has both (what scrapers of "localhost" mostly dial).
        var info = first
        var candidate: UnsafeMutablePointer<addrinfo>? = first
        while let c = candidate {
            if c.pointee.ai_family == AF_INET { info = c; break }
            candidate = c.pointee.ai_next
        }
        let fd = socket(info.pointee.ai_family, info.pointee.ai_socktype, info.pointee.ai_protocol)
        guard fd >= 0 else { throw StageError("metrics: socket: \(String(cString: strerror(errno)))") }
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        guard bind(fd, info.pointee.ai_addr, info.pointee.ai_addrlen) == 0, listen(fd, 16) == 0 else {
            let message = String(cString: strerror(errno))
            close(fd)
            throw StageError("metrics: cannot listen on \(host):\(port): \(message)")
        }
        let thread = Thread { serve(fd) }
        thread.name = "aligners-metrics"
        thread.start()
        return warning
    }

    /// Connections served at once; more wait in the listen backlog.
    static let maxConnections = 8

    /// Each connection on a thread of its own (up to `maxConnections`), so an idle client cannot
    /// hold up a scrape.
    private static func serve(_ listener: Int32) {
        let slots = DispatchSemaphore(value: maxConnections)
        while true {
            slots.wait()
            let client = accept(listener, nil, nil)
            if client < 0 {
                slots.signal()
                if errno == EINTR || errno == ECONNABORTED { continue } else { return }
            }
            let thread = Thread {
                respond(client)
                slots.signal()
            }
            thread.name = "aligners-metrics-conn"
            thread.start()
        }
    }

    private static func respond(_ client: Int32) {
        do {
            var timeout = timeval(tv_sec: 2, tv_usec: 0)
            setsockopt(client, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
            var request = [UInt8](repeating: 0, count: 2048)
            let n = read(client, &request, request.count)
            let line = n > 0 ? String(decoding: request[0..<n], as: UTF8.self).prefix { $0 != "\r" && $0 != "\n" } : ""
            let response: [UInt8]
            if line.hasPrefix("GET /metrics") {
                let body = registry.emitToBuffer()
                response = Array("HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: \(body.count)\r\nConnection: close\r\n\r\n".utf8) + body
            } else {
                response = Array("HTTP/1.1 404 Not Found\r\nContent-Length: 22\r\nConnection: close\r\n\r\ntry GET /metrics here\n".utf8)
            }
            response.withUnsafeBytes { _ = write(client, $0.baseAddress, $0.count) }
            close(client)
        }
    }
}
