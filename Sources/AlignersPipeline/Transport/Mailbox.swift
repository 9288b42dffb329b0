import Foundation
import Glibc

/// A hop between two threads of one process: values, not encoded bytes, in order. The taking side
/// either blocks (`take()`) or polls `wakeFD` beside its ZeroMQ sockets (`ZMQPoller(fds:)`) and
/// takes what is there (`takeAvailable`). What travels says itself whether it is data or the end
/// (an enum of the caller's), so no frame means two things.
final class Mailbox<Item>: @unchecked Sendable {
    private var items: [Item] = []
    private var head = 0
    private let condition = NSCondition()
    /// Readable while items wait: the read end of a non-blocking pipe that `signal` writes a byte to.
    let wakeFD: Int32
    private let signalFD: Int32

    init() throws {
        var fds: [Int32] = [0, 0]
        guard pipe(&fds) == 0 else { throw StageError("pipe: \(String(cString: strerror(errno)))") }
        for fd in fds {
            _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
        }
        wakeFD = fds[0]
        signalFD = fds[1]
    }

    deinit {
        close(wakeFD)
        close(signalFD)
    }

    func put(_ item: Item) {
        condition.lock()
        items.append(item)
        signal()
        condition.signal()
        condition.unlock()
    }

    /// The oldest item; waits for one.
    func take() -> Item {
        condition.lock()
        defer { condition.unlock() }
        while head == items.count { condition.wait() }
        return pop()
    }

    /// Up to `limit` items that are there now, oldest first; never waits. `wakeFD` stays readable
    /// while any are left.
    func takeAvailable(limit: Int = .max) -> [Item] {
        condition.lock()
        defer { condition.unlock() }
        var drained = [UInt8](repeating: 0, count: 256)
        while read(wakeFD, &drained, drained.count) > 0 {}   // consumed; set again below if items remain
        var out: [Item] = []
        while out.count < limit && head < items.count { out.append(pop()) }
        if head < items.count { signal() }
        return out
    }

    private func pop() -> Item {
        let item = items[head]
        head += 1
        if head > 1024 && head * 2 > items.count {
            items.removeFirst(head)
            head = 0
        }
        return item
    }

    /// A full pipe is readable already, so a write that would block is not needed.
    private func signal() {
        var one: UInt8 = 1
        _ = write(signalFD, &one, 1)
    }
}
