import Foundation

/// Rotary position embedding: adjacent pairs (x[2i], x[2i+1]) of each head rotated by
/// pos·base^(-2i/d). (GGUF converters permute the Q and K rows of Hugging Face Llama checkpoints
/// so that this "normal" rotation is the right one.)
struct Rotary: Sendable {
    let headDim: Int
    /// base^(-2i/d) for i < d/2.
    let inverseFrequencies: [Float]

    init(headDim: Int, base: Float) {
        self.headDim = headDim
        inverseFrequencies = (0..<headDim / 2).map { i in Float(pow(Double(base), -2.0 * Double(i) / Double(headDim))) }
    }

    /// Rotates `rows` rows of `heads` heads each (row r at position positions[r]), in place.
    func apply(_ x: UnsafeMutablePointer<Float>, heads: Int, rows: Int, positions: UnsafePointer<Int>) {
        let hd = headDim, half = hd / 2, width = heads * hd
        withUnsafeTemporaryAllocation(of: Float.self, capacity: hd) { cs in
            let cosv = cs.baseAddress!, sinv = cs.baseAddress! + half
            for r in 0..<rows {
                let p = Float(positions[r])
                for i in 0..<half {
                    let a = p * inverseFrequencies[i]
                    cosv[i] = cos(a); sinv[i] = sin(a)
                }
                let row = x + r * width
                for hh in 0..<heads {
                    let v = row + hh * hd
                    for i in 0..<half {
                        let a = v[2 * i], b = v[2 * i + 1]
                        v[2 * i] = a * cosv[i] - b * sinv[i]
                        v[2 * i + 1] = a * sinv[i] + b * cosv[i]
                    }
                }
            }
        }
    }
}
