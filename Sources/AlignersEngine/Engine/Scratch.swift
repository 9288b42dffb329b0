/// A growable buffer reused across forward calls: fresh large allocations are fresh pages, and
/// zeroing them showed up in profiles.
final class Scratch: @unchecked Sendable {
    private var buffer: UnsafeMutablePointer<Float>?
    private var capacity = 0
    deinit { buffer?.deallocate() }
    func reserve(_ n: Int) -> UnsafeMutablePointer<Float> {
        if n > capacity || buffer == nil {
            buffer?.deallocate()
            capacity = max(n, capacity * 3 / 2)
            buffer = .allocate(capacity: capacity)
        }
        return buffer!
    }

    /// Consecutive slices of `sizes` floats, each starting on a 16-float boundary.
    func slices(_ sizes: [Int]) -> [UnsafeMutablePointer<Float>] {
        let arena = reserve(sizes.reduce(0) { $0 + ($1 + 15) / 16 * 16 })
        var out: [UnsafeMutablePointer<Float>] = []
        var off = 0
        for n in sizes { out.append(arena + off); off += (n + 15) / 16 * 16 }
        return out
    }
}
