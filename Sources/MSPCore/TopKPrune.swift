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
    /// - Throws: `MSPError.invalidArgument` for a sparsity outside [0, 1), a NaN weight or score or
    ///   a bad `colScale` (nothing is written then); `MSPError.outOfMemory`.
    public static func prune(
        weights: UnsafeMutableRawPointer, _ matrix: Matrix, sparsity: Double, scope: TopKScope,
        colScale: UnsafeBufferPointer<Float>?, keepMask: UnsafeMutablePointer<UInt8>?
    ) throws {
        guard sparsity >= 0, sparsity < 1 else {
            throw MSPError.invalidArgument("sparsity (\(sparsity)) must be in [0, 1)")
        }
        try validateColScale(colScale)
        let rule = ScoreRule.magnitude(colScale: colScale)
        try validateScores(weights, matrix, rule, name: "weights")
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
            try kernel.pruneLayer(matrix.rows, keep: keep)
        }
    }

    /// One pruning job over a matrix of `cols` columns.
    private struct Kernel<E: Element> {
        let data: UnsafeMutablePointer<E.Bits>
        let mask: UnsafeMutablePointer<UInt8>?
        let cols: Int
        let score: Scorer<E>

        @inline(__always) func key(_ i: Int) -> UInt32 { scoreKey(score(data[i], i % cols)) }

        /// Keeps `keep` weights in every row.
        func pruneRows(_ rows: Int, keep: Int) throws {
            _ = try Threads.map(rows, minimumPerThread: max(1, 16384 / cols)) { range in
                try withScratch(UInt32.self, cols) { keys in
                    try withScratch(Int.self, 256) { histogram in
                        for r in range {
                            let start = r * cols
                            for c in 0..<cols { keys[c] = scoreKey(score(data[start + c], c)) }
                            var select = RadixSelect(rank: keep)
                            while !select.isDone {
                                histogram.initialize(repeating: 0, count: 256)
                                for c in 0..<cols where select.matches(keys[c]) {
                                    histogram[select.digit(keys[c], bits: 8)] += 1
                                }
                                select.refine({ histogram[$0] }, bits: 8)
                            }
                            var ties = select.ties
                            apply(start..<(start + cols), threshold: select.threshold, ties: &ties) {
                                keys[$0 - start]
                            }
                        }
                    }
                }
            }
        }

        /// Keeps `keep` weights in the whole matrix of `rows` rows.
        func pruneLayer(_ rows: Int, keep: Int) throws {
            let chunks = Threads.chunks(rows, minimumPerThread: max(1, 65536 / cols))
            let digits = [11, 11, 10]
            var select = RadixSelect(rank: keep)
            var tiesPerChunk: [Int] = []
            for bits in digits {
                let bins = 1 << bits
                let current = select
                let last = bits == digits.last
                let histograms = try Threads.map(chunks) { _, range in
                    var histogram = [Int](repeating: 0, count: bins)
                    histogram.withUnsafeMutableBufferPointer { h in
                        for i in (range.lowerBound * cols)..<(range.upperBound * cols) {
                            let k = key(i)
                            if current.matches(k) { h[current.digit(k, bits: bits)] += 1 }
                        }
                    }
                    return histogram
                }
                var total = [Int](repeating: 0, count: bins)
                for h in histograms { for b in 0..<bins { total[b] += h[b] } }
                select.refine({ total[$0] }, bits: bits)
                if last {
                    let d = select.threshold & UInt32(bins - 1)
                    tiesPerChunk = histograms.map { $0[Int(d)] }
                }
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
                apply((range.lowerBound * cols)..<(range.upperBound * cols), threshold: threshold, ties: &ties) {
                    key($0)
                }
            }
        }

        /// Prunes the elements of `range` whose key is below `threshold`, and those equal to it after
        /// the first `ties`; writes the keep mask.
        @inline(__always)
        func apply(_ range: Range<Int>, threshold: UInt32, ties: inout Int, key: (Int) -> UInt32) {
            for i in range {
                let k = key(i)
                var kept = k > threshold
                if k == threshold && ties > 0 {
                    kept = true
                    ties -= 1
                }
                if !kept { data[i] = 0 }
                mask?[i] = kept ? 1 : 0
            }
        }
    }
}
