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
