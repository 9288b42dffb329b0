import Foundation
import Synchronization
import Testing
@testable import AlignersPipeline

@Suite("Filter progress")
struct FilterProgressTests {
    final class Lines: Sendable {
        let lines = Mutex<[String]>([])
        func add(_ s: String) { lines.withLock { $0.append(s) } }
        var all: [String] { lines.withLock { $0 } }
    }

    /// A first item that took 60 s (model loading) then 1 item a second: the estimate follows the
    /// later rate, not 60 s an item.
    @Test("time left is measured from the first progress, not from the start")
    func remainingTime() {
        var r = RemainingTime()
        #expect(r.seconds(done: 0, total: 100, now: 10) == nil)
        #expect(r.seconds(done: 1, total: 100, now: 60) == nil)        // the first progress starts the clock
        #expect(r.seconds(done: 11, total: 100, now: 70) == 89)        // 10 items in 10 s: 89 left
        #expect(r.seconds(done: 100, total: 100, now: 159) == 0)
    }

    @Test("the status line says what was read, written and how")
    func statusLine() {
        var s = FilterSummary()
        s.lines = 7; s.aligned = 3; s.untouched = 3; s.invalid = 1
        #expect(FilterProgress.line(read: 10, summary: s, seconds: 2)
                == "aligners filter: 10 lines read, 7 written (3 rewritten, 3 untouched, 1 errors), 3.50 lines/s, 2 s")
    }

    /// Bounded by events (reports seen), not by time: the test waits as long as the reports take.
    @Test("logs a line per interval while running, redraws one on a terminal, and nothing when off")
    func reports() {
        let log = Lines()
        let p = FilterProgress(mode: .log(seconds: 0.05), write: { log.add($0) }) { (read: 2, summary: FilterSummary()) }
        while log.all.count < 2 { Thread.sleep(forTimeInterval: 0.01) }
        p.stop()
        #expect(log.all.allSatisfy { $0.hasPrefix("aligners filter: 2 lines read") && $0.hasSuffix("\n") })

        let term = Lines()
        let t = FilterProgress(mode: .terminal, write: { term.add($0) }) { (read: 1, summary: FilterSummary()) }
        t.stop()
        #expect(term.all.last?.hasPrefix("\r") == true && term.all.last?.hasSuffix("\n") == true)

        let none = Lines()
        FilterProgress(mode: .off, write: { none.add($0) }) { (read: 0, summary: FilterSummary()) }.stop()
        #expect(none.all.isEmpty)
    }
}
