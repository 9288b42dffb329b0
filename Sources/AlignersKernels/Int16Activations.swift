/// Activation rows quantized to int16 per 32-element block for the integer kernels
/// (`QuantKernels.matvec(_:_:…)`, `matmulSmall`, the VNNI `gemm`): per block, the values scaled by 32767/max|x|,
/// the scale max|x|/32767 (relative error ~1e-5) and the block's float sum (for Q4_1's minimum).
///
/// A matrix product quantizes its input once, before the threads split the weight rows: the
/// quantizer used to run inside every thread's kernel call, once per matrix, and took a sixth of
/// decode time.
public final class Int16Activations: @unchecked Sendable {
    public private(set) var m = 0
    public private(set) var k = 0
    private var capacity = 0
    private(set) var values: UnsafeMutablePointer<Int16>
    private(set) var scales: UnsafeMutablePointer<Float>
    private(set) var sums: UnsafeMutablePointer<Float>

    public init() {
        values = .allocate(capacity: 1); scales = .allocate(capacity: 1); sums = .allocate(capacity: 1)
    }
    deinit { values.deallocate(); scales.deallocate(); sums.deallocate() }

    /// Sizes the buffers for m rows of k elements (k a multiple of 32); contents are undefined.
    public func reset(m: Int, k: Int) {
        precondition(k % 32 == 0, "Int16Activations: k must be a multiple of 32")
        self.m = m; self.k = k
        let need = m * k
        if need > capacity {
            values.deallocate(); scales.deallocate(); sums.deallocate()
            capacity = max(need, capacity * 3 / 2)
            values = .allocate(capacity: capacity)
            scales = .allocate(capacity: capacity / 32)
            sums = .allocate(capacity: capacity / 32)
        }
    }

    /// Quantizes rows `rows` of x (m × k floats); disjoint row ranges may run on different threads.
    public func quantize(_ x: UnsafePointer<Float>, rows: Range<Int>) {
        let nb = k / 32
        for i in rows {
            for b in 0..<nb {
                let j = i * nb + b
                (scales[j], sums[j]) = Self.quantizeBlock(x + j * 32, into: values + j * 32)
            }
        }
    }

    /// Row i's blocks: values (nb·32), scales (nb), sums (nb).
    @inline(__always)
    func row(_ i: Int) -> (UnsafePointer<Int16>, UnsafePointer<Float>, UnsafePointer<Float>) {
        let nb = k / 32
        return (UnsafePointer(values + i * k), UnsafePointer(scales + i * nb), UnsafePointer(sums + i * nb))
    }

    /// One 32-element block: returns (scale, sum). Written lane by lane where the standard
    /// library's generic SIMD operations (`pointwiseMax`, conversions) are not inlined.
    @inline(__always)
    static func quantizeBlock(_ x: UnsafePointer<Float>, into q: UnsafeMutablePointer<Int16>) -> (Float, Float) {
        let p = UnsafeRawPointer(x)
        let v0 = p.loadUnaligned(as: SIMD16<Float>.self), v1 = p.loadUnaligned(fromByteOffset: 64, as: SIMD16<Float>.self)
        let sum = QuantKernels.hsum(v0 + v1)
        // |v| by clearing the sign bit; non-negative floats order like their bit patterns.
        let mask = SIMD16<UInt32>(repeating: 0x7fff_ffff)
        let a = (unsafeBitCast(v0, to: SIMD16<UInt32>.self) & mask), b = (unsafeBitCast(v1, to: SIMD16<UInt32>.self) & mask)
        let mx = Float(bitPattern: maxLane(max16(a, b)))
        guard mx > 0 else {
            (q).update(repeating: 0, count: 32)
            return (0, sum)
        }
        let inv = SIMD16<Float>(repeating: 32767 / mx)
        let out = UnsafeMutableRawPointer(q)
        out.storeBytes(of: toInt16((v0 * inv).rounded(.toNearestOrEven)), as: SIMD16<Int16>.self)
        out.storeBytes(of: toInt16((v1 * inv).rounded(.toNearestOrEven)), toByteOffset: 32, as: SIMD16<Int16>.self)
        return (mx / 32767, sum)
    }

    @inline(__always)
    static func max16(_ a: SIMD16<UInt32>, _ b: SIMD16<UInt32>) -> SIMD16<UInt32> {
        SIMD16(Swift.max(a[0], b[0]), Swift.max(a[1], b[1]), Swift.max(a[2], b[2]), Swift.max(a[3], b[3]),
               Swift.max(a[4], b[4]), Swift.max(a[5], b[5]), Swift.max(a[6], b[6]), Swift.max(a[7], b[7]),
               Swift.max(a[8], b[8]), Swift.max(a[9], b[9]), Swift.max(a[10], b[10]), Swift.max(a[11], b[11]),
               Swift.max(a[12], b[12]), Swift.max(a[13], b[13]), Swift.max(a[14], b[14]), Swift.max(a[15], b[15]))
    }

    @inline(__always)
    static func maxLane(_ v: SIMD16<UInt32>) -> UInt32 {
        let a = SIMD8(Swift.max(v[0], v[8]), Swift.max(v[1], v[9]), Swift.max(v[2], v[10]), Swift.max(v[3], v[11]),
                      Swift.max(v[4], v[12]), Swift.max(v[5], v[13]), Swift.max(v[6], v[14]), Swift.max(v[7], v[15]))
        let b = SIMD4(Swift.max(a[0], a[4]), Swift.max(a[1], a[5]), Swift.max(a[2], a[6]), Swift.max(a[3], a[7]))
        return Swift.max(Swift.max(b[0], b[2]), Swift.max(b[1], b[3]))
    }

    /// Already-rounded values within ±32767.
    @inline(__always)
    static func toInt16(_ v: SIMD16<Float>) -> SIMD16<Int16> {
        SIMD16(Int16(v[0]), Int16(v[1]), Int16(v[2]), Int16(v[3]), Int16(v[4]), Int16(v[5]), Int16(v[6]), Int16(v[7]),
               Int16(v[8]), Int16(v[9]), Int16(v[10]), Int16(v[11]), Int16(v[12]), Int16(v[13]), Int16(v[14]), Int16(v[15]))
    }
}
