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
    /// Readable while items wait: the read end of a non-blocking pipe holding one byte exactly while
    /// the queue is not empty (written when it stops being empty, read when it empties), so a busy
    /// mailbox costs no system call per item.
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
        if head == items.count { signal() }
        items.append(item)
        condition.signal()
        condition.unlock()
    }

    /// The oldest item; waits for one.
    func take() -> Item {
        condition.lock()
        defer { condition.unlock() }
        while head == items.count { condition.wait() }
        let item = pop()
        if head == items.count { unsignal() }
        return item
    }

    /// Up to `limit` items that are there now, oldest first; never waits. `wakeFD` stays readable
    /// while any are left.
    func takeAvailable(limit: Int = .max) -> [Item] {
        condition.lock()
        defer { condition.unlock() }
        guard head < items.count else { return [] }
        var out: [Item] = []
        while out.count < limit && head < items.count { out.append(pop()) }
        if head == items.count { unsignal() }
        return out
    }

    private func pop() -> Item {
        let item = items[head]
        head += 1
        if head == items.count {
            items.removeAll(keepingCapacity: true)
            head = 0
        } else if head > 1024 && head * 2 > items.count {
            items.removeFirst(head)
            head = 0
        }
        return item
    }

    /// The queue stopped being empty.
    private func signal() {
        var one: UInt8 = 1
        _ = write(signalFD, &one, 1)
    }

    /// The queue emptied.
    private func unsignal() {
        var byte: UInt8 = 0
        _ = read(wakeFD, &byte, 1)
    }
}
