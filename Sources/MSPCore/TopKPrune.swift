// TopKPrune: unstructured pruning to a sparsity, per row or per layer, by counting score keys.

import CMSPHeader

/// Unstructured pruning kernels. Within a comparison group, weights are ordered by score
/// descending, then index ascending, and the first ones are kept. Selection counts order-preserving
/// score keys, in linear time: searches over vectorised counts per row, histograms per layer.
/// Results do not depend on the thread count.
public enum TopKPrune {
    /// The most columns a matrix may have, `MSP_MAX_TOPK_COLS` (2^32 - 1): a row's ties are
    /// counted in 32 bits.
    public static let maxCols = Int(MSP_MAX_TOPK_COLS)

    /// How many of `count` weights a sparsity prunes: floor(sparsity * count), in double.
    public static func prunedCount(sparsity: Double, of count: Int) -> Int {
        Int((sparsity * Double(count)).rounded(.down))
    }

    /// Prunes weights in place; pruned weights become +0.
    /// - Parameters:
    ///   - weights: `matrix.count` elements of `matrix.type`, modified in place.
    ///   - sparsity: the fraction to prune in each group, in [0, 1).
    ///   - scope: the comparison group.
    ///   - colScale: `nil` for magnitude scores |w|, else `matrix.cols` finite non-negative factors
    ///     so that the score is |w[r][c]| * colScale[c].
    ///   - keepMask: `nil`, or `matrix.count` bytes written with 1 = keep, 0 = prune.
    /// - Throws: `MSPError.invalidArgument` for a sparsity outside [0, 1), more than `maxCols`
    ///   columns, a NaN weight or score or a bad `colScale` (nothing is written then);
    ///   `MSPError.outOfMemory`.
    public static func prune(
        weights: UnsafeMutableRawPointer, _ matrix: Matrix, sparsity: Double, scope: TopKScope,
        colScale: UnsafeBufferPointer<Float>?, keepMask: UnsafeMutablePointer<UInt8>?
    ) throws {
        guard sparsity >= 0, sparsity < 1 else {
            throw MSPError.invalidArgument("sparsity (\(sparsity)) must be in [0, 1)")
        }
        guard matrix.cols <= maxCols else {
            throw MSPError.invalidArgument("cols (\(matrix.cols)) must be at most \(maxCols)")
        }
        try validateColScale(colScale)
        let rule = ScoreRule.magnitude(colScale: colScale)
        // The layer kernel screens for NaN scores in its first pass over the weights.
        if scope == .row { try validateScores(weights, matrix, rule, name: "weights") }
        switch matrix.type {
        case .f32: try prune(F32.self, weights, matrix, sparsity, scope, rule, keepMask)
        case .f16: try prune(F16.self, weights, matrix, sparsity, scope, rule, keepMask)
        case .bf16: try prune(BF16.self, weights, matrix, sparsity, scope, rule, keepMask)
        }
    }

    private static func prune<E: Element>(
        _: E.Type, _ weights: UnsafeMutableRawPointer, _ matrix: Matrix, _ sparsity: Double,
        _ scope: TopKScope, _ rule: ScoreRule, _ mask: UnsafeMutablePointer<UInt8>?
    ) throws {
        let kernel = Kernel<E>(
            data: weights.assumingMemoryBound(to: E.Bits.self), mask: mask, cols: matrix.cols,
            score: Scorer<E>(rule))
        switch scope {
        case .row:
            let keep = matrix.cols - prunedCount(sparsity: sparsity, of: matrix.cols)
            try kernel.pruneRows(matrix.rows, keep: keep)
        case .layer:
            let keep = matrix.count - prunedCount(sparsity: sparsity, of: matrix.count)
            try kernel.pruneLayer(matrix, keep: keep)
        }
    }

    /// One pruning job over a matrix of `cols` columns.
    private struct Kernel<E: Element> {
        let data: UnsafeMutablePointer<E.Bits>
        let mask: UnsafeMutablePointer<UInt8>?
        let cols: Int
        let score: Scorer<E>

        /// Keeps `keep` weights in every row, by the keys of `forKeys`. The high 16 bits of the
        /// `keep`-th largest key of a row are the largest value that at least `keep` high halves
        /// reach. A search finds it, each step counting the high halves at or above a value (a
        /// vectorised pass over 16-bit lanes that stay in cache): it gallops from the last row's
        /// value, which is often near, then halves the bracket (at most 15 steps from scratch).
        /// The high halves are the elements' own magnitude bits for 16-bit weights without a
        /// scale, whose keys have no low half; other keys' high halves are written to scratch,
        /// and the same search over the low halves of the keys in the threshold's bucket gives
        /// the rest of the threshold.
        func pruneRows(_ rows: Int, keep: Int) throws {
            let wide = E.Bits.bitWidth > 16 || score.scale != nil
            _ = try Threads.map(rows, minimumPerThread: max(1, 16384 / cols)) { range in
                // High halves, then the bucket's low halves.
                try withScratch(UInt16.self, wide ? 2 &* cols : 0) { scratch in
                    var guess = 0
                    for r in range {
                        let row = data + r &* cols
                        let halves: UnsafePointer<UInt16>
                        if wide {
                            forKeys(row, 0..<cols) { c, key in scratch[c] = UInt16(truncatingIfNeeded: key &>> 16) }
                            halves = UnsafePointer(scratch)
                        } else {
                            halves = UnsafeRawPointer(row).assumingMemoryBound(to: UInt16.self)
                        }
                        let (low, reaching, above) = largestReached(below: 0x8000, total: cols, rank: keep, guess: guess) {
                            countAtLeast(halves, UInt16(truncatingIfNeeded: $0))
                        }
                        guess = low
                        var threshold = UInt32(low) &<< 16, ties = keep &- above, equal = reaching &- above
                        if wide {
                            // The `ties`-th largest low half in the bucket, the same search over
                            // 32-bit lanes (low halves use all 16 bits).
                            let lows = scratch + cols
                            let count = bucketLows(row, halves, bucket: UInt16(truncatingIfNeeded: low), into: lows)
                            let last = largestReached(below: 0x1_0000, total: count, rank: ties, guess: 0) { value in
                                var below: UInt32 = 0
                                for i in 0..<count { below &+= (UInt32(lows[i]) &- UInt32(truncatingIfNeeded: value)) &>> 31 }
                                return count &- Int(below)
                            }
                            threshold |= UInt32(last.value)
                            (ties, equal) = (ties &- last.above, last.reaching &- last.above)
                        }
                        _ = keepRow(row, above: threshold, ties: ties, equal: equal, maskRow: mask.map { $0 + r &* cols })
                    }
                }
            }
        }

        /// The largest value below `below` that at least `rank` (at most `total`) of some items
        /// reach, where `count(v)` is how many reach v (`total` for v = 0, non-increasing), with
        /// the counts at that value (`reaching`) and one above it (`above`; 0 at `below`). A
        /// positive `guess`, often near, is galloped from; then the bracket is halved.
        @inline(__always)
        func largestReached(
            below: Int, total: Int, rank: Int, guess: Int, _ count: (Int) -> Int
        ) -> (value: Int, reaching: Int, above: Int) {
            var low = 0, high = below, reaching = total, above = 0
            @inline(__always) func reached(_ value: Int) -> Bool {
                let n = count(value)
                if n >= rank { (low, reaching) = (value, n) } else { (high, above) = (value, n) }
                return n >= rank
            }
            if guess > 0 {
                var step = 1
                if reached(guess) {
                    while low &+ step < high && reached(low &+ step) { step &*= 2 }
                } else {
                    while high &- step > low && !reached(high &- step) { step &*= 2 }
                }
            }
            while high &- low > 1 { _ = reached((low &+ high) &>> 1) }
            return (low, reaching, above)
        }

        /// How many of `cols` 16-bit magnitudes (the bits below the top one) from `halves` on are
        /// at least `value` (at most 2^15): 16-bit counts of runs of at most 2^16 - 1 columns,
        /// where magnitude - value wraps to a set top bit exactly when it is below.
        @inline(__always)
        func countAtLeast(_ halves: UnsafePointer<UInt16>, _ value: UInt16) -> Int {
            var below = 0
            for first in Swift.stride(from: 0, to: cols, by: 0xFFFF) {
                var count: UInt16 = 0
                for c in first..<min(cols, first &+ 0xFFFF) { count &+= ((halves[c] & 0x7FFF) &- value) &>> 15 }
                below &+= Int(count)
            }
            return cols &- below
        }

        /// Writes to `lows` the low halves of the keys of `row` whose high half (in `halves`) is
        /// `bucket`, in column order, and returns their count. Blocks of 64 columns are tested
        /// vectorised first; only those holding a member are searched.
        @inline(__always)
        func bucketLows(
            _ row: UnsafePointer<E.Bits>, _ halves: UnsafePointer<UInt16>, bucket: UInt16, into lows: UnsafeMutablePointer<UInt16>
        ) -> Int {
            var count = 0
            for first in Swift.stride(from: 0, to: cols, by: 64) {
                let end = min(cols, first &+ 64)
                // Halves are below 2^15, so half ^ bucket - 1 has its top bit set only for 0.
                var hits: UInt16 = 0
                for c in first..<end { hits |= ((halves[c] ^ bucket) &- 1) &>> 15 }
                guard hits != 0 else { continue }
                for c in first..<end where halves[c] == bucket {
                    forKeys(row, c..<(c &+ 1)) { _, key in lows[count] = UInt16(truncatingIfNeeded: key) }
                    count &+= 1
                }
            }
            return count
        }

        /// Keeps `keep` weights in the whole matrix, by the 31-bit keys of `forKeys`: a histogram of
        /// their high 15 bits (which also screens for NaN scores before anything is written), one
        /// of the low 16 bits of the threshold bucket's keys (16-bit weights without a scale have
        /// none), then one pass that keeps the keys above the threshold and its first ties.
        func pruneLayer(_ matrix: Matrix, keep: Int) throws {
            let chunks = Threads.chunks(matrix.rows, minimumPerThread: max(1, 65536 / cols))
            let highBins = 1 << 15
            let high = try Threads.map(chunks) { _, range in try highHistogram(range) }
            var total = [Int](repeating: 0, count: highBins)
            for h in high { for b in 0..<highBins { total[b] += h[b] } }
            if total[infinityDigit...].contains(where: { $0 > 0 }) {
                // An infinite or NaN score: the exact check names the first NaN one, if any.
                try validateScores(UnsafeRawPointer(data), matrix, score, name: "weights")
            }
            var select = RadixSelect(rank: keep)
            select.refine({ $0 < highBins ? total[$0] : 0 }, bits: 16)
            let bucket = Int(select.threshold >> 16)
            var tiesPerChunk = high.map { $0[bucket] }
            if E.Bits.bitWidth == 16 && score.scale == nil {
                select.refine({ $0 == 0 ? total[bucket] : 0 }, bits: 16)
            } else {
                let current = select
                let low = try Threads.map(chunks) { _, range in
                    var histogram = [Int](repeating: 0, count: 1 << 16)
                    for r in range {
                        forKeys(data + r &* cols, 0..<cols) { _, key in
                            if current.matches(key) { histogram[current.digit(key, bits: 16)] &+= 1 }
                        }
                    }
                    return histogram
                }
                select.refine({ d in low.reduce(0) { $0 + $1[d] } }, bits: 16)
                tiesPerChunk = low.map { $0[Int(select.threshold & 0xFFFF)] }
            }
            // Chunk t keeps the ties left after the chunks before it, in index order.
            var quotas: [Int] = []
            var left = select.ties
            for t in tiesPerChunk {
                quotas.append(min(left, t))
                left -= min(left, t)
            }
            let threshold = select.threshold
            _ = try Threads.map(chunks) { t, range in
                var ties = quotas[t]
                for r in range {
                    ties = keepRow(data + r &* cols, above: threshold, ties: ties, equal: nil, maskRow: mask.map { $0 + r &* cols })
                }
            }
        }

        /// Keeps the weights of `row` whose key (of `forKeys`) is above `threshold` and the first
        /// `ties` whose key equals it, zeroes the others, and writes the keep mask when asked.
        /// `equal` is the row's count of keys equal to the threshold, when the caller knows it.
        /// - Returns: the ties still to keep after this row.
        @inline(__always)
        func keepRow(
            _ row: UnsafeMutablePointer<E.Bits>, above threshold: UInt32, ties: Int, equal: Int?,
            maskRow: UnsafeMutablePointer<UInt8>?
        ) -> Int {
            // The row's kept ties are those up to column `lastTie`: all of them while the quota
            // lasts (a count that vectorises), then the first ones by a search.
            var ties = ties, lastTie = -1
            if ties > 0 {
                // Keys are below 2^31, so key ^ threshold - 1 has its top bit set only for 0.
                let count = equal ?? {
                    var count: UInt32 = 0
                    forKeys(row, 0..<cols) { _, key in count &+= ((key ^ threshold) &- 1) &>> 31 }
                    return Int(count)
                }()
                if count <= ties {
                    lastTie = cols &- 1
                    ties &-= count
                } else {
                    // Blocks of 64 columns counted (vectorised) up to the one holding the last
                    // kept tie, which is searched.
                    var first = 0
                    while true {
                        var inBlock: UInt32 = 0
                        forKeys(row, first..<min(cols, first &+ 64)) { _, key in inBlock &+= ((key ^ threshold) &- 1) &>> 31 }
                        if Int(inBlock) >= ties { break }
                        ties &-= Int(inBlock)
                        first &+= 64
                    }
                    forKeys(row, first..<min(cols, first &+ 64)) { c, key in
                        if ties > 0 && key == threshold {
                            lastTie = c
                            ties &-= 1
                        }
                    }
                }
            }
            keepKeys(row, 0..<(lastTie &+ 1), atLeast: threshold, maskRow: maskRow)
            keepKeys(row, (lastTie &+ 1)..<cols, atLeast: threshold &+ 1, maskRow: maskRow)
            return ties
        }

        /// A histogram of the high 15 bits of the keys of rows `range`, counted in four
        /// interleaved 32-bit histograms (so that runs of equal digits do not wait on each other's
        /// increments) that are added up at least every 2^32 - 1 keys.
        func highHistogram(_ range: Range<Int>) throws -> [Int] {
            let bins = 1 << 15
            var total = [Int](repeating: 0, count: bins)
            try withScratch(UInt32.self, 4 * bins) { h in
                let rowsPerFold = max(1, Int(UInt32.max) / cols)
                for first in stride(from: range.lowerBound, to: range.upperBound, by: rowsPerFold) {
                    h.update(repeating: 0, count: 4 * bins)
                    for r in first..<min(range.upperBound, first + rowsPerFold) {
                        forKeys(data + r &* cols, 0..<cols) { c, key in
                            h[(c & 3) &* bins &+ Int(key &>> 16)] &+= 1
                        }
                    }
                    for b in 0..<bins { total[b] += Int(h[b]) + Int(h[bins + b]) + Int(h[2 * bins + b]) + Int(h[3 * bins + b]) }
                }
            }
            return total
        }

        /// Keeps the weights of `row` in columns `range` whose key is at least `bound`,
        /// zeroes the others, and writes the keep mask first when asked.
        @inline(__always)
        func keepKeys(
            _ row: UnsafeMutablePointer<E.Bits>, _ range: Range<Int>, atLeast bound: UInt32,
            maskRow: UnsafeMutablePointer<UInt8>?
        ) {
            if let maskRow { forKeys(row, range) { c, key in maskRow[c] = key >= bound ? 1 : 0 } }
            forKeys(row, range) { c, key in row[c] &= key >= bound ? ~0 : 0 }
        }

        /// Calls `body(c, key)` with the layer key of every column `c` in `range` of `row`: the
        /// score's float bits without the sign for a scaled score, else the element's magnitude
        /// bits in the high bits. Keys are below 2^31; a NaN score's key exceeds infinity's.
        /// The scale test stays outside the loops.
        @inline(__always)
        func forKeys(_ row: UnsafePointer<E.Bits>, _ range: Range<Int>, _ body: (Int, UInt32) -> Void) {
            if let scale = score.scale {
                for c in range { body(c, (abs(E.widen(row[c])) * scale[c]).bitPattern & 0x7FFF_FFFF) }
            } else {
                let shift = UInt32(32 &- E.Bits.bitWidth)
                for c in range { body(c, UInt32(truncatingIfNeeded: row[c] & ~E.sign) &<< shift) }
            }
        }

        /// The high-histogram digit of an infinite score's key: digits from it on may hold
        /// NaN scores.
        var infinityDigit: Int {
            score.scale != nil ? Int(F32.infinity >> 16) : Int((UInt32(E.infinity) &<< UInt32(32 &- E.Bits.bitWidth)) >> 16)
        }
    }
}
