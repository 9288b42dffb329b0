import Foundation
import Testing
@testable import AlignersPipeline

@Suite("Mailbox")
struct MailboxTests {
    /// Whether the mailbox's descriptor is readable now (what a ZMQPoller would see).
    func readable(_ box: Mailbox<Int>) throws -> Bool {
        var poller = ZMQPoller([], fds: [box.wakeFD])
        return try poller.poll(timeoutMs: 0)[0]
    }

    @Test("values in order; the descriptor is readable exactly while items wait")
    func pollable() throws {
        let box = try Mailbox<Int>()
        #expect(try !readable(box))
        for i in 0..<5 { box.put(i) }
        #expect(try readable(box))
        #expect(box.takeAvailable(limit: 3) == [0, 1, 2])
        #expect(try readable(box), "two are left")
        #expect(box.takeAvailable() == [3, 4])
        #expect(try !readable(box))
        #expect(box.takeAvailable().isEmpty)
        // Far more puts than a pipe buffer holds bytes: nothing blocks, nothing is lost.
        for i in 0..<100_000 { box.put(i) }
        let all = box.takeAvailable()
        #expect(all.count == 100_000 && all.first == 0 && all.last == 99_999)
        #expect(try !readable(box))
    }

    @Test("take waits for a value put by another thread")
    func blockingTake() throws {
        let box = try Mailbox<Int>()
        let taken = Locked<[Int]>([])
        let done = DispatchSemaphore(value: 0)
        let thread = Thread {
            while true {
                let v = box.take()
                if v < 0 { break }
                taken.update { $0.append(v) }
            }
            done.signal()
        }
        thread.start()
        for i in 0..<1000 { box.put(i) }
        box.put(-1)
        #expect(done.wait(timeout: .now() + 120) == .success)
        #expect(taken.value == Array(0..<1000))
    }
}
