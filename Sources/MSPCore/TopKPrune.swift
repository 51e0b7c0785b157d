// TopKPrune: unstructured pruning to a sparsity, per row or per layer, by radix selection.

/// The comparison group of unstructured pruning.
public enum TopKScope: Int32, Sendable {
    /// floor(sparsity * cols) weights pruned in every row (Wanda's comparison group).
    case row = 0
    /// floor(sparsity * rows * cols) weights pruned in the whole matrix (magnitude pruning).
    case layer = 1
}

/// Unstructured pruning kernels. Within a comparison group, weights are ordered by score
/// descending, then index ascending, and the first ones are kept. Selection is by histograms of
/// order-preserving score keys (linear time, no sort); results do not depend on the thread count.
public enum TopKPrune {
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
    /// - Throws: `MSPError.invalidArgument` for a sparsity outside [0, 1), more than 2^32 - 1
    ///   columns, a NaN weight or score or a bad `colScale` (nothing is written then);
    ///   `MSPError.outOfMemory`.
    public static func prune(
        weights: UnsafeMutableRawPointer, _ matrix: Matrix, sparsity: Double, scope: TopKScope,
        colScale: UnsafeBufferPointer<Float>?, keepMask: UnsafeMutablePointer<UInt8>?
    ) throws {
        guard sparsity >= 0, sparsity < 1 else {
            throw MSPError.invalidArgument("sparsity (\(sparsity)) must be in [0, 1)")
        }
        // Selection orders (key, column) pairs in 64 bits and counts a row in 32-bit histograms.
        guard matrix.cols <= Int(UInt32.max) else {
            throw MSPError.invalidArgument("cols (\(matrix.cols)) must be at most \(UInt32.max)")
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

        /// Bits of a row key below its histogram digit: keys are non-negative float bits, so the
        /// digit has 10 bits.
        static var digitShift: UInt32 { 21 }
        /// Histogram bins.
        static var bins: Int { 1 << (31 - Int(digitShift)) }

        /// Keeps `keep` weights in every row. A histogram of each row's high key bits finds the
        /// bucket holding the `keep`-th largest key; sorting that bucket's few members by (key
        /// descending, column ascending) gives the last kept weight, and one comparison per weight
        /// of (key, column) order against it applies the selection.
        func pruneRows(_ rows: Int, keep: Int) throws {
            if E.Bits.bitWidth == 16 && score.scale == nil { return try searchRows(rows, keep: keep) }
            let bins = Self.bins
            _ = try Threads.map(rows, minimumPerThread: max(1, 16384 / cols)) { range in
                // A row's keys, the columns of its threshold bucket, and histograms.
                try withScratch(UInt32.self, 2 * cols + 4 * bins) { scratch in
                    try withScratch(UInt64.self, cols) { candidates in
                        let keys = scratch, members = scratch + cols, histograms = scratch + 2 * cols
                        for r in range {
                            let row = data + r &* cols
                            writeKeys(row, keys)
                            let (bucket, above) = thresholdBucket(keys, keep: keep, histograms: histograms)
                            // Branch-free: a bucket can hold a large share of the row. Only the
                            // column is stored per weight; the members' orders are built after.
                            var count = 0
                            for c in 0..<cols {
                                members[count] = UInt32(truncatingIfNeeded: c)
                                count &+= Self.equal(Int(keys[c] &>> Self.digitShift), bucket)
                            }
                            for i in 0..<count {
                                let c = Int(members[i])
                                candidates[i] = order(keys[c], c)
                            }
                            let last = Self.select(candidates, count: count, rank: keep &- above, histogram: histograms)
                            applyRow(row, keys: keys, last: last, maskRow: mask.map { $0 + r &* cols })
                        }
                    }
                }
            }
        }

        /// Keeps `keep` weights in every row of 16-bit weights without a scale, whose keys are their
        /// 15 magnitude bits: the `keep`-th largest key of a row is the largest value that at least
        /// `keep` keys reach. A search finds it, each step counting the keys at or above a value
        /// (a vectorised pass over a row that stays in cache): it gallops from the last row's
        /// threshold, which is often near, then halves the bracket (at most 15 steps from scratch).
        func searchRows(_ rows: Int, keep: Int) throws {
            _ = try Threads.map(rows, minimumPerThread: max(1, 16384 / cols)) { range in
                var guess = 0
                for r in range {
                    let row = data + r &* cols
                    // At least `keep` keys reach `low`, fewer (`above`) reach `high`.
                    var low = 0, high = Int(E.sign), above = 0
                    @inline(__always) func reached(_ value: Int) -> Bool {
                        let count = countAtLeast(row, E.Bits(truncatingIfNeeded: value))
                        if count >= keep { low = value } else { (high, above) = (value, count) }
                        return count >= keep
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
                    guess = low
                    _ = keepRow(row, above: UInt32(low) &<< 16, ties: keep &- above, maskRow: mask.map { $0 + r &* cols })
                }
            }
        }

        /// How many of the 16-bit magnitudes of `row` are at least `value` (at most 2^15): 16-bit
        /// counts of runs of at most 2^16 - 1 columns, where magnitude - value wraps to a set top
        /// bit exactly when it is below.
        @inline(__always)
        func countAtLeast(_ row: UnsafePointer<E.Bits>, _ value: E.Bits) -> Int {
            var below = 0
            for first in Swift.stride(from: 0, to: cols, by: 0xFFFF) {
                var count: E.Bits = 0
                for c in first..<min(cols, first &+ 0xFFFF) {
                    count &+= ((row[c] & ~E.sign) &- value) &>> (E.Bits.bitWidth &- 1)
                }
                below &+= Int(count)
            }
            return cols &- below
        }

        /// The histogram bin (digit) holding the `keep`-th largest of a row's keys, and how many keys
        /// lie in higher bins. `histograms` is scratch for four interleaved histograms, so that
        /// runs of equal digits do not wait on each other's increments.
        @inline(__always)
        func thresholdBucket(
            _ keys: UnsafePointer<UInt32>, keep: Int, histograms h: UnsafeMutablePointer<UInt32>
        ) -> (bucket: Int, above: Int) {
            let bins = Self.bins
            @inline(__always) func digit(_ c: Int) -> Int { Int(keys[c] &>> Self.digitShift) }
            h.update(repeating: 0, count: 4 &* bins)
            var c = 0
            while c &+ 4 <= cols {
                h[digit(c)] &+= 1
                h[bins &+ digit(c &+ 1)] &+= 1
                h[2 &* bins &+ digit(c &+ 2)] &+= 1
                h[3 &* bins &+ digit(c &+ 3)] &+= 1
                c &+= 4
            }
            while c < cols {
                h[digit(c)] &+= 1
                c &+= 1
            }
            for b in 0..<bins { h[b] = h[b] &+ h[bins &+ b] &+ h[2 &* bins &+ b] &+ h[3 &* bins &+ b] }
            // From the top, 16 bins at a time, then bin by bin.
            var above = 0, top = bins
            while true {
                var sum: UInt32 = 0
                for b in (top &- 16)..<top { sum &+= h[b] }
                if above &+ Int(sum) >= keep { break }
                above &+= Int(sum)
                top &-= 16
            }
            var bucket = top &- 1
            while above &+ Int(h[bucket]) < keep {
                above &+= Int(h[bucket])
                bucket &-= 1
            }
            return (bucket, above)
        }

        /// The `rank`-th largest (1 = largest) of `count` distinct orders whose keys share the bits
        /// above `digitShift`: 8-bit digit histograms narrow the candidates down while many remain,
        /// then a sort. `histogram` is scratch for 256 counts; `orders` is reordered.
        static func select(
            _ orders: UnsafeMutablePointer<UInt64>, count: Int, rank: Int, histogram h: UnsafeMutablePointer<UInt32>
        ) -> UInt64 {
            var count = count, rank = rank, shift = digitShift
            while count > 64 && shift > 0 {
                let bits = min(8, shift)
                shift -= bits
                let mask = UInt64(1) &<< UInt64(bits) &- 1
                @inline(__always) func digit(_ i: Int) -> Int { Int((orders[i] &>> UInt64(32 &+ shift)) & mask) }
                h.update(repeating: 0, count: 256)
                for i in 0..<count { h[digit(i)] &+= 1 }
                var bucket = Int(mask)
                while rank > Int(h[bucket]) {
                    rank &-= Int(h[bucket])
                    bucket &-= 1
                }
                var kept = 0
                for i in 0..<count {
                    orders[kept] = orders[i]
                    kept &+= equal(digit(i), bucket)
                }
                count = kept
            }
            var members = UnsafeMutableBufferPointer(start: orders, count: count)
            members.sort(by: >)
            return members[rank &- 1]
        }

        /// 1 when the non-negative `a` and `b` are equal, else 0, computed without a comparison,
        /// which in the compaction loops compiles to a branch that rows of mixed digits mispredict.
        @inline(__always) static func equal(_ a: Int, _ b: Int) -> Int {
            Int(bitPattern: UInt(bitPattern: (a ^ b) &- 1) &>> 63)
        }

        /// Writes the magnitude score keys of a row (the bits of non-NaN floats >= 0). The scale
        /// test stays outside the loops: inside, it becomes a masked load of a null pointer.
        @inline(__always) func writeKeys(_ row: UnsafePointer<E.Bits>, _ keys: UnsafeMutablePointer<UInt32>) {
            if let scale = score.scale {
                // A scale of -0 gives a score of -0: the sign bit is cleared, so it ties with +0.
                for c in 0..<cols { keys[c] = (abs(E.widen(row[c])) * scale[c]).bitPattern & 0x7FFF_FFFF }
            } else {
                for c in 0..<cols { keys[c] = abs(E.widen(row[c])).bitPattern }
            }
        }

        /// The selection order of a row's weight: key descending, then column ascending.
        @inline(__always) func order(_ key: UInt32, _ c: Int) -> UInt64 {
            UInt64(key) &<< 32 | UInt64(UInt32.max &- UInt32(truncatingIfNeeded: c))
        }

        /// Keeps the weights of `row` ordered at or before `last`, zeroes the others.
        @inline(__always)
        func applyRow(
            _ row: UnsafeMutablePointer<E.Bits>, keys: UnsafePointer<UInt32>, last: UInt64,
            maskRow: UnsafeMutablePointer<UInt8>?
        ) {
            for c in 0..<cols {
                let kept: E.Bits = order(keys[c], c) >= last ? 1 : 0
                row[c] &= 0 &- kept
            }
            if let maskRow {
                for c in 0..<cols { maskRow[c] = order(keys[c], c) >= last ? 1 : 0 }
            }
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
                    ties = keepRow(data + r &* cols, above: threshold, ties: ties, maskRow: mask.map { $0 + r &* cols })
                }
            }
        }

        /// Keeps the weights of `row` whose key (of `forKeys`) is above `threshold` and the first
        /// `ties` whose key equals it, zeroes the others, and writes the keep mask when asked.
        /// - Returns: the ties still to keep after this row.
        @inline(__always)
        func keepRow(
            _ row: UnsafeMutablePointer<E.Bits>, above threshold: UInt32, ties: Int, maskRow: UnsafeMutablePointer<UInt8>?
        ) -> Int {
            // The row's kept ties are those up to column `lastTie`: all of them while the quota
            // lasts (a count that vectorises), then the first ones by a search.
            var ties = ties, lastTie = -1
            if ties > 0 {
                // Keys are below 2^31, so key ^ threshold - 1 has its top bit set only for 0.
                var count: UInt32 = 0
                forKeys(row, 0..<cols) { _, key in count &+= ((key ^ threshold) &- 1) &>> 31 }
                if Int(count) <= ties {
                    lastTie = cols &- 1
                    ties &-= Int(count)
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
