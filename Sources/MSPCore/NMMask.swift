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

    /// Writes the keep mask of magnitude scores |w[r][c]| * colScale[c] without changing the
    /// weights, for callers that checked the shape, the scale and the weights already (no check
    /// here: a NaN score gives an unspecified mask).
    static func magnitudeMask(
        weights: UnsafeRawPointer, _ matrix: Matrix, pattern: NMPattern, colScale: UnsafeBufferPointer<Float>?,
        keepMask: UnsafeMutablePointer<UInt8>
    ) throws {
        try run(weights, nil, keepMask, matrix, pattern, .magnitude(colScale: colScale))
    }

    private static func run(
        _ src: UnsafeRawPointer, _ dst: UnsafeMutableRawPointer?, _ mask: UnsafeMutablePointer<UInt8>?,
        _ matrix: Matrix, _ pattern: NMPattern, _ rule: ScoreRule
    ) throws {
        // Scaled scores are float products, ranked as 32-bit keys; 16-bit elements are otherwise
        // ranked on their own 16-bit patterns, twice the lanes per instruction.
        let scaled: Bool
        if case .magnitude(let colScale) = rule, colScale != nil { scaled = true } else { scaled = false }
        switch (matrix.type, scaled) {
        case (.f32, _): try run(F32.self, Lanes32.self, src, dst, mask, matrix, pattern, rule)
        case (.f16, false): try run(F16.self, Lanes16.self, src, dst, mask, matrix, pattern, rule)
        case (.f16, true): try run(F16.self, Lanes32.self, src, dst, mask, matrix, pattern, rule)
        case (.bf16, false): try run(BF16.self, Lanes16.self, src, dst, mask, matrix, pattern, rule)
        case (.bf16, true): try run(BF16.self, Lanes32.self, src, dst, mask, matrix, pattern, rule)
        }
    }

    private static func run<E: Element, L: RankLanes>(
        _: E.Type, _: L.Type, _ src: UnsafeRawPointer, _ dst: UnsafeMutableRawPointer?,
        _ mask: UnsafeMutablePointer<UInt8>?, _ matrix: Matrix, _ pattern: NMPattern, _ rule: ScoreRule
    ) throws {
        let kernel = Kernel<E, L>(
            source: src.assumingMemoryBound(to: E.Bits.self),
            target: dst?.assumingMemoryBound(to: E.Bits.self), mask: mask, cols: matrix.cols,
            pattern: pattern, score: Scorer<E>(rule))
        _ = try Threads.map(matrix.rows, minimumPerThread: max(1, 65536 / matrix.cols)) { rows in
            try withScratch(L.Key.self, Kernel<E, L>.scratchCount) { scratch in
                // Literal group sizes make the lane rotations constant shuffles.
                switch pattern.m {
                case 2: kernel.rows(rows, GroupSize<2>.self, scratch: scratch)
                case 4: kernel.rows(rows, GroupSize<4>.self, scratch: scratch)
                case 8: kernel.rows(rows, GroupSize<8>.self, scratch: scratch)
                case 16: kernel.rows(rows, GroupSize<16>.self, scratch: scratch)
                default: kernel.rows(rows, m: pattern.m, scratch: scratch)
                }
            }
        }
    }

    /// One N:M masking job on 32-lane vectors of order keys.
    ///
    /// Member p of a group is ranked against member (p + d) mod m, for d in 1..<m, all lanes at
    /// once: a partner ahead beats on a greater key, a partner that wrapped around (at a lower
    /// index) on an equal key too. Group sizes 2, 4, 8 and 16 take the partners from constant lane
    /// rotations of the vector itself, and unscaled scores as wide as the elements are keyed and
    /// ranked in registers straight from the loaded elements. Other cases write a row's keys to
    /// scratch block by block and load each partner at offset d or d - m; a vector then covers
    /// whole groups only, so it advances by the largest multiple of m within 32 lanes.
    private struct Kernel<E: Element, L: RankLanes> {
        typealias Lanes = L.Lanes
        let source: UnsafePointer<E.Bits>
        let target: UnsafeMutablePointer<E.Bits>?
        let mask: UnsafeMutablePointer<UInt8>?
        let cols: Int
        let pattern: NMPattern
        let score: Scorer<E>

        /// Lanes per vector.
        static var width: Int { Lanes.scalarCount }
        /// Elements per block at most. Small, so that loading one block's elements overlaps
        /// ranking the last one's (512 measured 5-20% faster than 2048 on scaled scores).
        static var block: Int { 512 }
        /// Scratch keys before and after a block's, read by the first and last vectors.
        static var margin: Int { width + NMPattern.maxM }
        /// Keys and keep flags of one block.
        static var scratchCount: Int { 2 * (block + 2 * margin) }

        /// Masks `rows` with a group size that divides the vector width, fixed at compile time:
        /// each vector's keys are ranked against lane rotations of themselves.
        func rows<let M: Int>(_ rows: Range<Int>, _: GroupSize<M>.Type, scratch: UnsafeMutablePointer<L.Key>) {
            if score.scale == nil, MemoryLayout<E.Bits>.size == MemoryLayout<L.Key>.size {
                return elementRows(rows, GroupSize<M>.self, flags: scratch)
            }
            blocks(rows, scratch: scratch, step: Self.width) { rotationKeep(load($0), GroupSize<M>.self) }
        }

        /// Masks `rows` by unscaled scores with keys as wide as the elements: a vector's keys come
        /// from its elements in registers (`keys(of:magnitude:)`), so each vector is loaded,
        /// ranked and written back without scratch. Rows hold whole groups, so the rows are one
        /// run of groups; it goes in blocks whose flags collect in scratch when there is a keep
        /// mask to write.
        func elementRows<let M: Int>(_ rows: Range<Int>, _: GroupSize<M>.Type, flags: UnsafeMutablePointer<L.Key>) {
            let magnitude = Lanes(repeating: L.Key(truncatingIfNeeded: ~E.sign))
            let end = rows.upperBound &* cols
            for first in Swift.stride(from: rows.lowerBound &* cols, to: end, by: Self.block) {
                let count = min(Self.block, end &- first)
                Prefetch.lines(source + first, offset: Prefetch.distance, bytes: count &* MemoryLayout<E.Bits>.stride)
                var i = 0
                while i < count {
                    // A short last vector (whole groups) is padded with zeros.
                    let lanes = min(Self.width, count &- i)
                    var bits = Lanes()
                    if lanes == Self.width {
                        bits = UnsafeRawPointer(source + (first &+ i)).loadUnaligned(as: Lanes.self)
                    } else {
                        for j in 0..<lanes { bits[j] = L.Key(truncatingIfNeeded: source[first &+ i &+ j]) }
                    }
                    let keep = rotationKeep(keys(of: bits, magnitude: magnitude), GroupSize<M>.self)
                    if let target {
                        let kept = L.and(bits, keep)
                        if lanes == Self.width {
                            UnsafeMutableRawPointer(target + (first &+ i)).storeBytes(of: kept, as: Lanes.self)
                        } else {
                            for j in 0..<lanes { target[first &+ i &+ j] = E.Bits(truncatingIfNeeded: kept[j]) }
                        }
                    }
                    if mask != nil { UnsafeMutableRawPointer(flags + i).storeBytes(of: keep, as: Lanes.self) }
                    i &+= Self.width
                }
                writeMask(flags, count: count, at: first)
            }
        }

        /// The order keys of a vector of elements, as `writeKeys` writes them: the magnitude bits
        /// (`bits & magnitude`), or for signed values their negation where the sign bit is set.
        @inline(__always)
        func keys(of bits: Lanes, magnitude: Lanes) -> Lanes {
            let m = L.and(bits, magnitude)
            if score.absolute { return m }
            // m - 2m in the lanes whose sign bit makes them negative.
            return L.multiplyAdd(m, L.and(L.greater(Lanes(), bits), m), Lanes(repeating: -2))
        }

        /// All ones in each lane of `key` that is kept in its group of `M`, else zero. A lane's
        /// rank (the partners that beat it) is c + wins - beaten with the negated counts of
        /// `RankLanes.rotationStep` and c = (M - 1) / 2 distances below M / 2; the lane is kept
        /// when that is below n, that is when beaten > wins + c - n.
        @inline(__always)
        func rotationKeep<let M: Int>(_ key: Lanes, _: GroupSize<M>.Type) -> Lanes {
            let next = L.multiplyAdd(key, Lanes(repeating: 1), Lanes(repeating: 1))
            var beaten = Lanes(), wins = Lanes(repeating: L.Key(truncatingIfNeeded: (M &- 1) / 2 &- pattern.n))
            L.rotationStep(beaten: &beaten, wins: &wins, key: key, next: next, m: M, d: 1)
            L.rotationStep(beaten: &beaten, wins: &wins, key: key, next: next, m: M, d: 2)
            L.rotationStep(beaten: &beaten, wins: &wins, key: key, next: next, m: M, d: 3)
            L.rotationStep(beaten: &beaten, wins: &wins, key: key, next: next, m: M, d: 4)
            L.rotationStep(beaten: &beaten, wins: &wins, key: key, next: next, m: M, d: 5)
            L.rotationStep(beaten: &beaten, wins: &wins, key: key, next: next, m: M, d: 6)
            L.rotationStep(beaten: &beaten, wins: &wins, key: key, next: next, m: M, d: 7)
            L.rotationStep(beaten: &beaten, wins: &wins, key: key, next: next, m: M, d: 8)
            return L.greater(beaten, wins)
        }

        /// Masks `rows` for any group size `m`: member p of a group is ranked against member
        /// (p + d) mod m by loads at offsets d and d - m, as the type's description says.
        @inline(__always)
        func rows(_ rows: Range<Int>, m: Int, scratch: UnsafeMutablePointer<L.Key>) {
            // Each lane's position in its group.
            var position = Lanes()
            for lane in 0..<Self.width { position[lane] = L.Key(truncatingIfNeeded: lane % m) }
            let minusN = Lanes(repeating: L.Key(-pattern.n))
            blocks(rows, scratch: scratch, step: Self.width / m * m) { keys in
                let key = load(keys)
                var rank = Lanes()
                for d in 1..<m {
                    // Index arithmetic wraps (&+): every index is within the block and its margins.
                    let ahead: Lanes = load(keys + d)
                    let behind: Lanes = load(keys + (d &- m))
                    let limit = Lanes(repeating: L.Key(truncatingIfNeeded: m &- d))
                    rank = L.step(rank, key: key, ahead: ahead, behind: behind, position: position, limit: limit)
                }
                return L.greater(rank, minusN)
            }
        }

        /// Masks `rows` block by block: writes a block's keys to scratch, then the keep flags of
        /// each vector of `step` lanes (whole groups), `keep(keys)`, and applies them.
        @inline(__always)
        func blocks(
            _ rows: Range<Int>, scratch: UnsafeMutablePointer<L.Key>, step: Int,
            keep: (UnsafePointer<L.Key>) -> Lanes
        ) {
            let stride = Self.block + 2 * Self.margin
            scratch.initialize(repeating: 0, count: Self.scratchCount)
            let keys = scratch + Self.margin, flags = keys + stride
            let block = Self.block / step * step
            for r in rows {
                for first in Swift.stride(from: 0, to: cols, by: block) {
                    let count = min(block, cols &- first)
                    let start = r &* cols &+ first
                    Prefetch.lines(source + start, offset: Prefetch.distance, bytes: count &* MemoryLayout<E.Bits>.stride)
                    writeKeys(source + start, count: count, firstCol: first, keys: keys)
                    var i = 0
                    while i < count {
                        UnsafeMutableRawPointer(flags + i).storeBytes(of: keep(keys + i), as: Lanes.self)
                        i &+= step
                    }
                    apply(flags, count: count, at: start)
                }
            }
        }

        /// The 32 keys from `p` on.
        @inline(__always) func load(_ p: UnsafePointer<L.Key>) -> Lanes {
            UnsafeRawPointer(p).loadUnaligned(as: Lanes.self)
        }

        /// Writes the order keys of `count` elements from column `firstCol` on to `keys`: 16-bit
        /// elements without a scale give their own magnitude or signed value, others the bits of
        /// the float score (never NaN here).
        @inline(__always)
        func writeKeys(
            _ src: UnsafePointer<E.Bits>, count: Int, firstCol: Int, keys: UnsafeMutablePointer<L.Key>
        ) {
            if let scale = score.scale {
                let s = scale + firstCol
                // A scale of -0 gives a score of -0: the sign bit is cleared, so it ties with +0.
                for i in 0..<count {
                    keys[i] = L.Key(truncatingIfNeeded: (abs(E.widen(src[i])) * s[i]).bitPattern & 0x7FFF_FFFF)
                }
            } else if score.absolute {
                for i in 0..<count { keys[i] = L.Key(truncatingIfNeeded: src[i] & ~E.sign) }
            } else {
                // -|x| for negative x: -0 and +0 share key 0.
                for i in 0..<count {
                    let magnitude = L.Key(truncatingIfNeeded: src[i] & ~E.sign)
                    keys[i] = src[i] & E.sign == 0 ? magnitude : 0 &- magnitude
                }
            }
        }

        /// Applies the keep flags (all ones or zero) of `count` elements at element `start`.
        @inline(__always)
        func apply(_ flags: UnsafePointer<L.Key>, count: Int, at start: Int) {
            if let target {
                // `out` only (it is the source when pruning in place): a second pointer to the same
                // memory would fail the vectoriser's overlap check.
                let out = target + start
                for i in 0..<count { out[i] &= E.Bits(truncatingIfNeeded: flags[i]) }
            }
            writeMask(flags, count: count, at: start)
        }

        /// Writes the keep flags (all ones or zero) of `count` elements at element `start` to
        /// the keep mask, if there is one.
        @inline(__always)
        func writeMask(_ flags: UnsafePointer<L.Key>, count: Int, at start: Int) {
            guard let mask else { return }
            let out = mask + start
            for i in 0..<count { out[i] = UInt8(truncatingIfNeeded: flags[i]) & 1 }
        }
    }
}

/// A group size as a type, so kernels specialise for it.
private enum GroupSize<let M: Int> {}
