import AlignersKernels

/// A ragged batch of decoder segments as the engine computes it: the segments checked against the
/// model, one row per new token (its id and position), where each segment's rows start, the runs
/// of rows served through one LoRA adapter, and the rows whose logits are wanted. Any decoder
/// architecture's `forward` starts here.
struct DecoderBatch {
    let segments: [DecoderSegment]
    let config: DecoderConfig
    /// New tokens in all segments: the activation rows.
    let rows: Int
    let tokens: [Int]
    let positions: [Int]
    /// The first row of each segment.
    let segStart: [Int]
    /// Rows served through a LoRA adapter, as runs of consecutive segments with the same one.
    let adapted: [(adapter: LoRAAdapter, rows: Range<Int>)]
    /// The last row of each segment that wants logits, in segment order.
    let logitRows: [Int]

    init(_ segments: [DecoderSegment], config c: DecoderConfig) throws {
        var seen = Set<ObjectIdentifier>()
        for s in segments {
            guard s.cache.kvDim == c.kvDim, s.cache.layers == c.layers else { throw DecoderError.shape("KV cache made for another model") }
            guard seen.insert(ObjectIdentifier(s.cache)).inserted else { throw DecoderError.shape("two segments share one KV cache") }
            guard s.cache.count + s.tokens.count <= s.cache.capacity else {
                throw DecoderError.contextFull(capacity: s.cache.capacity, have: s.cache.count, adding: s.tokens.count)
            }
            guard s.cache.count + s.tokens.count <= c.contextLength else {
                throw DecoderError.beyondModelContext(positions: s.cache.count + s.tokens.count, contextLength: c.contextLength)
            }
            for t in s.tokens where t < 0 || t >= c.vocabulary { throw DecoderError.tokenOutOfRange(t, vocabulary: c.vocabulary) }
        }
        // Each adapter once per call, not once per segment (64 segments may share one).
        var checked = Set<ObjectIdentifier>()
        for a in segments.compactMap(\.adapter) where checked.insert(ObjectIdentifier(a)).inserted { try a.check(against: c) }

        var tokens: [Int] = [], positions: [Int] = [], segStart: [Int] = [], logitRows: [Int] = []
        var adapted: [(adapter: LoRAAdapter, rows: Range<Int>)] = []
        for s in segments {
            let start = tokens.count
            segStart.append(start)
            for (i, t) in s.tokens.enumerated() { positions.append(s.cache.count + i); tokens.append(t) }
            if s.tokens.isEmpty { continue }
            if s.wantsLogits { logitRows.append(tokens.count - 1) }
            guard let a = s.adapter else { continue }
            if let last = adapted.last, last.adapter === a, last.rows.upperBound == start {
                adapted[adapted.count - 1].rows = last.rows.lowerBound..<tokens.count
            } else {
                adapted.append((a, start..<tokens.count))
            }
        }
        self.segments = segments
        config = c
        rows = tokens.count
        self.tokens = tokens; self.positions = positions; self.segStart = segStart
        self.adapted = adapted; self.logitRows = logitRows
    }

    /// x[i] = the embedding of row i's token.
    func embed(_ table: QuantTensor, into x: UnsafeMutablePointer<Float>, pool: ComputePool) {
        let d = table.cols
        tokens.withUnsafeBufferPointer { tk in
            pool.parallelFor(rows) { rs in for i in rs { QuantKernels.dequantizeRow(table, tk[i], into: x + i * d) } }
        }
    }

    /// Adds each adapter's delta for `target` of `layer` to its rows of `out` (x: the target's input rows).
    func addLoRA(_ layer: Int, _ target: LoRATarget, x: UnsafeMutablePointer<Float>, into out: UnsafeMutablePointer<Float>,
                 pool: ComputePool) {
        let (inputs, outputs) = target.shape(config)
        for (a, rows) in adapted {
            a.add(layer: layer, target, x: x + rows.lowerBound * inputs, rows: rows.count, out: out + rows.lowerBound * outputs,
                  ldOut: outputs, pool: pool)
        }
    }

    /// Counts the new tokens into their caches (after every layer has stored its keys and values).
    func advanceCaches() {
        for s in segments { s.cache.count += s.tokens.count }
    }
}
