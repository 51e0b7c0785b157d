import MSPCore
import Testing

@Suite("N:M masks equal the stable-sort reference")
struct NMMaskTests {
    static let patterns: [(Int, Int)] = [(1, 4), (2, 4), (3, 4), (1, 8), (2, 8), (7, 8), (4, 16), (1, 32), (31, 32)]

    /// The reference keep mask of a whole matrix under `score`.
    func reference(_ t: TestMatrix, n: Int, m: Int, score: (Int) -> Float) -> [UInt8] {
        var mask = [UInt8](repeating: 0, count: t.rows * t.cols)
        for start in stride(from: 0, to: t.rows * t.cols, by: m) {
            let keep = referenceKeep((start..<(start + m)).map(score), keep: n)
            for j in 0..<m { mask[start + j] = keep[j] ? 1 : 0 }
        }
        return mask
    }

    @Test(arguments: ElementType.allCases, patterns)
    func maskOfExplicitScores(type: ElementType, pattern: (Int, Int)) throws {
        let (n, m) = pattern
        for (rows, groups) in [(1, 1), (3, 5), (17, 9)] {
            let cols = groups * m
            var t = TestMatrix(
                rows: rows, cols: cols, type: type,
                values: hardValues(rows * cols, type: type, seed: UInt64(rows * 1000 + m * 10 + n)))
            var mask = [UInt8](repeating: 9, count: rows * cols)
            let before = t.bits
            try t.withBuffer { p, shape in
                try NMMask.mask(scores: p, shape, pattern: NMPattern(n: n, m: m), keepMask: &mask)
            }
            #expect(t.bits == before)
            #expect(mask == reference(t, n: n, m: m, score: t.value))
        }
    }

    /// Prunes `values` in place, with and without scaling by `scale`, and checks weights and mask
    /// against the reference.
    func checkPrune(type: ElementType, n: Int, m: Int, rows: Int, cols: Int, values: [Float], scale: [Float]) throws {
        var scale = scale
        for scaled in [false, true] {
            var t = TestMatrix(rows: rows, cols: cols, type: type, values: values)
            let original = t
            var mask = [UInt8](repeating: 9, count: rows * cols)
            try scale.withUnsafeMutableBufferPointer { s in
                try t.withBuffer { p, shape in
                    try NMMask.prune(
                        weights: p, shape, pattern: NMPattern(n: n, m: m),
                        colScale: scaled ? UnsafeBufferPointer(s) : nil, keepMask: &mask)
                }
            }
            let expected = reference(original, n: n, m: m) { i in
                abs(original.value(i)) * (scaled ? scale[i % cols] : 1)
            }
            #expect(mask == expected)
            #expect(t.bits == zip(original.bits, expected).map { $1 == 1 ? $0 : 0 })
        }
    }

    @Test(arguments: ElementType.allCases, patterns)
    func pruneInPlace(type: ElementType, pattern: (Int, Int)) throws {
        let (n, m) = pattern
        let rows = 7, cols = 3 * m
        var rng = SplitMix64(seed: UInt64(m * 100 + n))
        try checkPrune(
            type: type, n: n, m: m, rows: rows, cols: cols,
            values: hardValues(rows * cols, type: type, seed: UInt64(m + n)).map { $0.isInfinite ? 5 : $0 },
            scale: (0..<cols).map { _ in Float(Int(rng.next() % 4)) * 0.5 })  // zeros included
    }

    /// Rows longer than a kernel block, with group sizes that leave lanes of a vector unused.
    @Test(arguments: ElementType.allCases, [(2, 3), (3, 7), (5, 12), (9, 17), (2, 8), (4, 16), (17, 32)])
    func longRowsAndUnevenGroupSizes(type: ElementType, pattern: (Int, Int)) throws {
        let (n, m) = pattern
        let rows = 3, cols = 731 * m
        let values = hardValues(rows * cols, type: type, seed: UInt64(m * 31 + n)).map { $0.isInfinite ? -7 : $0 }
        var rng = SplitMix64(seed: UInt64(m))
        try checkPrune(
            type: type, n: n, m: m, rows: rows, cols: cols, values: values,
            scale: (0..<cols).map { _ in rng.next() % 5 == 0 ? -0.0 : Float(Int(rng.next() % 5)) * 0.25 })  // -0 ties +0
        var explicit = [UInt8](repeating: 9, count: rows * cols)
        let scores = TestMatrix(rows: rows, cols: cols, type: type, values: values)
        var copy = scores
        try copy.withBuffer { p, shape in
            try NMMask.mask(scores: p, shape, pattern: NMPattern(n: n, m: m), keepMask: &explicit)
        }
        #expect(explicit == reference(scores, n: n, m: m, score: scores.value))
    }

    /// An infinite weight is the largest score, and an error (its score is NaN) only in a column
    /// scaled by zero, even when another column of its row is scaled by zero.
    @Test(arguments: ElementType.allCases)
    func infiniteWeightIsAnErrorOnlyUnderAZeroScale(type: ElementType) throws {
        var values = (0..<16).map { Float($0 % 5) - 2 }
        values[9] = -.infinity  // row 1, column 1
        var scale: [Float] = [1, 3, 0, 1, 2, 0.5, 0, 1]
        try checkPrune(type: type, n: 2, m: 4, rows: 2, cols: 8, values: values, scale: scale)
        scale[1] = 0
        var t = TestMatrix(rows: 2, cols: 8, type: type, values: values)
        let before = t.bits
        #expect(throws: MSPError.invalidArgument("score of weights[1][1] is NaN (weight -inf times col_scale[1] = 0)")) {
            try scale.withUnsafeBufferPointer { s in
                try t.withBuffer { p, shape in
                    try NMMask.prune(weights: p, shape, pattern: NMPattern(n: 2, m: 4), colScale: s, keepMask: nil)
                }
            }
        }
        #expect(t.bits == before)
    }

    @Test func sameResultForEveryThreadCount() throws {
        let rows = 301, cols = 512
        let values = hardValues(rows * cols, type: .bf16, seed: 7)
        var results: [[UInt8]] = []
        for threads in [1, 2, 3, 0] {
            try Threads.set(threads)
            var t = TestMatrix(rows: rows, cols: cols, type: .bf16, values: values)
            var mask = [UInt8](repeating: 0, count: rows * cols)
            try t.withBuffer { p, shape in
                try NMMask.prune(weights: p, shape, pattern: NMPattern(n: 2, m: 8), colScale: nil, keepMask: &mask)
            }
            results.append(mask)
        }
        try Threads.set(0)
        #expect(Set(results).count == 1)
    }

    @Test func badPatternsAndNaNLeaveBuffersUnchanged() throws {
        #expect(throws: MSPError.self) { try NMPattern(n: 4, m: 4) }
        #expect(throws: MSPError.self) { try NMPattern(n: 0, m: 4) }
        #expect(throws: MSPError.self) { try NMPattern(n: 1, m: 33) }
        var values = [Float](repeating: 1, count: 16)
        values[13] = .nan
        var t = TestMatrix(rows: 2, cols: 8, type: .f32, values: values)
        let before = t.bits
        var mask = [UInt8](repeating: 7, count: 16)
        #expect(throws: MSPError.invalidArgument("weights[1][5] is NaN")) {
            try t.withBuffer { p, shape in
                try NMMask.prune(weights: p, shape, pattern: NMPattern(n: 2, m: 4), colScale: nil, keepMask: &mask)
            }
        }
        #expect(t.bits == before)
        #expect(mask == [UInt8](repeating: 7, count: 16))
        #expect(throws: MSPError.self) {
            try t.withBuffer { p, shape in
                try NMMask.prune(weights: p, shape, pattern: NMPattern(n: 2, m: 3), colScale: nil, keepMask: nil)
            }
        }
    }
}
