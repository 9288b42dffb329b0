import Foundation
import Synchronization
import CoreMetrics
import Metrics
import Prometheus

/// The pipeline's metrics, through swift-metrics (no-ops until `MetricsEndpoint.start` bootstraps
/// Prometheus). Handles are made once per label set and cached: making one is a registry lookup.
final class PipelineMetrics: Sendable {
    static let shared = PipelineMetrics()
    private struct Handles {
        var counters: [String: CoreMetrics.Counter] = [:]
        var recorders: [String: CoreMetrics.Recorder] = [:]
        var timers: [String: CoreMetrics.Timer] = [:]
        var gauges: [String: CoreMetrics.Gauge] = [:]
    }
    private let handles = Mutex(Handles())

    private func key(_ label: String, _ dims: [(String, String)]) -> String {
        label + dims.map { "|\($0.0)=\($0.1)" }.joined()
    }

    func count(_ label: String, _ dims: [(String, String)] = [], by n: Int = 1) {
        guard n > 0 else { return }
        let k = key(label, dims)
        let c = handles.withLock { h in
            if let c = h.counters[k] { return c }
            let c = CoreMetrics.Counter(label: label, dimensions: dims)
            h.counters[k] = c
            return c
        }
        c.increment(by: n)
    }

    func record(_ label: String, _ dims: [(String, String)] = [], _ value: Double) {
        let k = key(label, dims)
        let r = handles.withLock { h in
            if let r = h.recorders[k] { return r }
            let r = CoreMetrics.Recorder(label: label, dimensions: dims, aggregate: true)
            h.recorders[k] = r
            return r
        }
        r.record(value)
    }

    func time(_ label: String, _ dims: [(String, String)] = [], nanoseconds: UInt64) {
        let k = key(label, dims)
        let t = handles.withLock { h in
            if let t = h.timers[k] { return t }
            let t = CoreMetrics.Timer(label: label, dimensions: dims)
            h.timers[k] = t
            return t
        }
        t.recordNanoseconds(Int64(nanoseconds))
    }

    func gauge(_ label: String, _ dims: [(String, String)] = [], _ value: Double) {
        let k = key(label, dims)
        let g = handles.withLock { h in
            if let g = h.gauges[k] { return g }
            let g = CoreMetrics.Gauge(label: label, dimensions: dims)
            h.gauges[k] = g
            return g
        }
        g.record(value)
    }
}
