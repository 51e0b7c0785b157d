// NMMask: N:M keep masks and in-place N:M pruning on raw buffers.

/// N:M masking kernels. In every group of `m` consecutive elements along a row the `n` elements
/// with the highest score are kept; ties keep the lower index. Rows are split across threads and
/// the result does not depend on the thread count.
public enum NMMask {
    /// Writes the keep mask of explicit scores.
    /// - Parameters:
    ///   - scores: `matrix.count` elements of `matrix.type`.
    ///   - matrix: the shape and element type; `cols` must be a multiple of `pattern.m`.
    ///   - keepMask: `matrix.count` bytes, written with 1 = keep, 0 = prune.
    /// - Throws: `MSPError.invalidArgument` for a shape that does not fit the pattern or a NaN
    ///   score; nothing is written then.
    public static func mask(
        scores: UnsafeRawPointer, _ matrix: Matrix, pattern: NMPattern,
        keepMask: UnsafeMutablePointer<UInt8>
    ) throws {
        try pattern.validate(cols: matrix.cols)
        try validateScores(scores, matrix, .value, name: "scores")
        try run(scores, nil, keepMask, matrix, pattern, .value)
    }

    /// Prunes weights in place: kept weights are untouched, the others become +0.
    /// - Parameters:
    ///   - weights: `matrix.count` elements of `matrix.type`, modified in place.
    ///   - colScale: `nil` for magnitude scores |w|, else `matrix.cols` finite non-negative factors
    ///     so that the score is |w[r][c]| * colScale[c].
    ///   - keepMask: `nil`, or `matrix.count` bytes written with 1 = keep, 0 = prune.
    /// - Throws: `MSPError.invalidArgument` for a bad shape, a NaN weight or score, or a bad
    ///   `colScale`; nothing is written then.
    public static func prune(
        weights: UnsafeMutableRawPointer, _ matrix: Matrix, pattern: NMPattern,
        colScale: UnsafeBufferPointer<Float>?, keepMask: UnsafeMutablePointer<UInt8>?
    ) throws {
        try pattern.validate(cols: matrix.cols)
        try validateColScale(colScale)
        let rule = ScoreRule.magnitude(colScale: colScale)
        try validateScores(weights, matrix, rule, name: "weights")
        try run(weights, weights, keepMask, matrix, pattern, rule)
    }

    private static func run(
        _ src: UnsafeRawPointer, _ dst: UnsafeMutableRawPointer?, _ mask: UnsafeMutablePointer<UInt8>?,
        _ matrix: Matrix, _ pattern: NMPattern, _ rule: ScoreRule
    ) throws {
        switch matrix.type {
        case .f32: try run(F32.self, src, dst, mask, matrix, pattern, rule)
        case .f16: try run(F16.self, src, dst, mask, matrix, pattern, rule)
        case .bf16: try run(BF16.self, src, dst, mask, matrix, pattern, rule)
        }
    }

    /// Groups handled per block: the block's scores stay in L1.
    private static let blockGroups = 128

    private static func run<E: Element>(
        _: E.Type, _ src: UnsafeRawPointer, _ dst: UnsafeMutableRawPointer?,
        _ mask: UnsafeMutablePointer<UInt8>?, _ matrix: Matrix, _ pattern: NMPattern, _ rule: ScoreRule
    ) throws {
        let kernel = Kernel<E>(
            source: src.assumingMemoryBound(to: E.Bits.self),
            target: dst?.assumingMemoryBound(to: E.Bits.self), mask: mask, cols: matrix.cols,
            n: pattern.n, score: Scorer<E>(rule))
        _ = try Threads.map(matrix.rows, minimumPerThread: max(1, 65536 / matrix.cols)) { rows in
            try withScratch(Float.self, pattern.m * blockGroups) { scores in
                try withScratch(UInt8.self, pattern.m * blockGroups) { ranks in
                    // Literal group sizes let the inlined loops unroll and vectorise.
                    switch pattern.m {
                    case 2: kernel.rows(rows, GroupSize<2>.self, scores: scores, ranks: ranks)
                    case 4: kernel.rows(rows, GroupSize<4>.self, scores: scores, ranks: ranks)
                    case 8: kernel.rows(rows, GroupSize<8>.self, scores: scores, ranks: ranks)
                    case 16: kernel.rows(rows, GroupSize<16>.self, scores: scores, ranks: ranks)
                    default: kernel.rows(rows, m: pattern.m, scores: scores, ranks: ranks)
                    }
                }
            }
        }
    }

    /// One N:M masking job; `block` handles up to `blockGroups` groups of `m` of one row.
    private struct Kernel<E: Element> {
        let source: UnsafePointer<E.Bits>
        let target: UnsafeMutablePointer<E.Bits>?
        let mask: UnsafeMutablePointer<UInt8>?
        let cols: Int, n: Int
        let score: Scorer<E>

        /// Masks `rows` with the group size fixed at compile time.
        func rows<let M: Int>(
            _ rows: Range<Int>, _: GroupSize<M>.Type, scores: UnsafeMutablePointer<Float>,
            ranks: UnsafeMutablePointer<UInt8>
        ) {
            self.rows(rows, m: M, scores: scores, ranks: ranks)
        }

        /// Masks `rows` block by block; `m` is the group size.
        @inline(__always)
        func rows(
            _ rows: Range<Int>, m: Int, scores: UnsafeMutablePointer<Float>, ranks: UnsafeMutablePointer<UInt8>
        ) {
            for r in rows {
                for g0 in stride(from: 0, to: cols / m, by: blockGroups) {
                    block(row: r, firstGroup: g0, m: m, scores: scores, ranks: ranks)
                }
            }
        }

        @inline(__always)
        func block(
            row r: Int, firstGroup g0: Int, m: Int, scores s: UnsafeMutablePointer<Float>,
            ranks rank: UnsafeMutablePointer<UInt8>
        ) {
            // Index arithmetic wraps (&+, &*): every index is below rows * cols, checked at the C
            // boundary, and unchecked arithmetic lets the loops vectorise.
            let block = blockGroups
            let len = min(block, cols / m &- g0)
            let start = r &* cols &+ g0 &* m
            let row = source + start
            let firstCol = g0 &* m
            // Scores transposed to [position in group][group], so the rank loops run over groups.
            score.transposed(row, groups: len, m: m, firstCol: firstCol, into: s, dstStride: block)
            // rank[p][g]: how many members of group g are ordered before member p.
            for p in 0..<m {
                let sp = s + p &* block, rp = rank + p &* block
                for g in 0..<len { rp[g] = 0 }
                for q in 0..<p {
                    let sq = s + q &* block
                    for g in 0..<len { rp[g] &+= sq[g] >= sp[g] ? 1 : 0 }
                }
                for q in (p &+ 1)..<m {
                    let sq = s + q &* block
                    for g in 0..<len { rp[g] &+= sq[g] > sp[g] ? 1 : 0 }
                }
            }
            // Branch-free writes: the kept bit (0 or 1) becomes a mask of all ones or zeros.
            let n8 = UInt8(n)
            if let target {
                // `out` only (it is `row` when pruning in place): a second pointer to the same
                // memory would fail the vectoriser's overlap check.
                let out = target + start
                for g in 0..<len {
                    for p in 0..<m {
                        let kept: E.Bits = rank[p &* block &+ g] < n8 ? 1 : 0
                        out[g &* m &+ p] &= 0 &- kept
                    }
                }
            }
            if let mask {
                let out = mask + start
                for g in 0..<len {
                    for p in 0..<m { out[g &* m &+ p] = rank[p &* block &+ g] < n8 ? 1 : 0 }
                }
            }
        }
    }
}

/// A group size as a type, so kernels specialise for it.
private enum GroupSize<let M: Int> {}
