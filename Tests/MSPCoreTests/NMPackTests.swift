import MSPCore
import Testing

@Suite("Compressed N:M weights pack and unpack exactly")
struct NMPackTests {
    static let patterns: [(Int, Int)] = [
        (1, 2), (1, 4), (2, 4), (3, 4), (1, 8), (2, 8), (4, 8), (7, 8), (3, 16), (8, 32), (31, 32), (2, 3), (3, 7),
        (5, 12), (9, 17),
    ]

    /// Packs `t` with the library into fresh buffers; returns values, index and the unpacked matrix.
    func pack(
        _ t: TestMatrix, n: Int, m: Int, scale: [Float]? = nil
    ) throws -> (values: [UInt32], index: [UInt8], dense: [UInt32]) {
        let layout = try NMPackedLayout(rows: t.rows, cols: t.cols, pattern: NMPattern(n: n, m: m), type: t.type)
        var values = [UInt32](repeating: 0xDEAD, count: t.rows * layout.valuesPerRow)
        var index = [UInt8](repeating: 0xA5, count: layout.indexBytes)
        var dense = [UInt32](repeating: 0xBEEF, count: t.rows * t.cols)
        var weights = t
        try withElements(&values, t.type) { v in
            try weights.withBuffer { w, _ in
                if let scale {
                    try scale.withUnsafeBufferPointer { s in
                        try NMPack.pack(weights: w, layout, colScale: s, values: v, index: &index)
                    }
                } else {
                    try NMPack.pack(weights: w, layout, colScale: nil, values: v, index: &index)
                }
            }
            try withElements(&dense, t.type) { d in try NMPack.unpack(values: v, index: index, layout, weights: d) }
        }
        #expect(weights.bits == t.bits, "pack changed the weights")
        return (values, index, dense)
    }

    @Test(arguments: ElementType.allCases, patterns)
    func packEqualsTheReferenceAndUnpacksToTheMaskedMatrix(type: ElementType, pattern: (Int, Int)) throws {
        let (n, m) = pattern
        for (rows, groups) in [(1, 1), (3, 5), (7, 37)] {
            let cols = groups * m
            let values = hardValues(rows * cols, type: type, seed: UInt64(rows * 100 + m * 7 + n)).map { $0.isNaN ? 1 : $0 }
            let t = TestMatrix(rows: rows, cols: cols, type: type, values: values)
            var rng = SplitMix64(seed: UInt64(cols))
            let scale = (0..<cols).map { _ in Float(Int(rng.next() % 5)) * 0.5 + (rng.next() % 3 == 0 ? 0 : 0.25) }
            for s in [nil, scale] {
                let reference = referencePack(t, n: n, m: m, scale: s)
                // An infinite weight times a zero scale scores NaN: an error, checked elsewhere.
                if s != nil, (0..<(rows * cols)).contains(where: { t.value($0).isInfinite && scale[$0 % cols] == 0 }) {
                    continue
                }
                let got = try pack(t, n: n, m: m, scale: s)
                #expect(got.values == reference.values)
                #expect(got.index == reference.index)
                #expect(got.dense == reference.dense.bits)
            }
        }
    }

    /// A matrix pruned to the level packs exactly its nonzeros and unpacks to itself, bit for bit
    /// (signed zeros and groups with fewer than n nonzeros included).
    @Test(arguments: ElementType.allCases, [(2, 8), (1, 4), (3, 16), (2, 3)])
    func prunedMatrixRoundTrips(type: ElementType, pattern: (Int, Int)) throws {
        let (n, m) = pattern
        let rows = 9, cols = 11 * m
        let values = hardValues(rows * cols, type: type, seed: 5).map { $0.isNaN ? 2 : $0 }
        var t = TestMatrix(rows: rows, cols: cols, type: type, values: values)
        try t.withBuffer { p, shape in
            try NMMask.prune(weights: p, shape, pattern: NMPattern(n: n, m: m), colScale: nil, keepMask: nil)
        }
        // Some groups with fewer than n nonzeros: zero a kept weight here and there.
        for i in stride(from: 3, to: rows * cols, by: 17) { t.bits[i] = 0 }
        let got = try pack(t, n: n, m: m)
        #expect(got.dense == t.bits)
        let nonzero = t.bits.filter { $0 & (t.type == .f32 ? 0x7FFF_FFFF : 0x7FFF) != 0 }
        #expect(got.values.filter { $0 & (t.type == .f32 ? 0x7FFF_FFFF : 0x7FFF) != 0 } == nonzero)
    }

    @Test func formatOfASmallCase() throws {
        // 2 x 40 f32 at 1:4, scores |w|: columns 3, 5, 10, ... kept; index words of 32 columns.
        let cols = 40
        let values = (0..<(2 * cols)).map { i in Float((i * 7) % 11) - 5 }
        let t = TestMatrix(rows: 2, cols: cols, type: .f32, values: values)
        let got = try pack(t, n: 1, m: 4)
        #expect(got.index.count == 2 * 8)
        var expected = [UInt8](repeating: 0, count: 16)
        var kept: [UInt32] = []
        for r in 0..<2 {
            for g in 0..<10 {
                let group = (0..<4).map { abs(values[r * cols + 4 * g + $0]) }
                let best = group.indices.first { group[$0] == group.max()! }!
                expected[r * 8 + (4 * g + best) / 8] |= 1 << ((4 * g + best) % 8)
                kept.append(values[r * cols + 4 * g + best].bitPattern)
            }
        }
        #expect(got.index == expected)
        #expect(got.values == kept)
    }

    @Test func sameResultForEveryThreadCount() throws {
        let values = hardValues(301 * 512, type: .bf16, seed: 3).map { $0.isNaN ? 0 : $0 }
        let t = TestMatrix(rows: 301, cols: 512, type: .bf16, values: values)
        var results: [[UInt32]] = []
        defer { try? Threads.set(0) }
        for threads in [1, 2, 3] {
            try Threads.set(threads)
            let got = try pack(t, n: 2, m: 8)
            results.append(got.values + got.index.map(UInt32.init))
        }
        #expect(Set(results).count == 1)
    }

    @Test func nanWeightsAndBadScalesLeaveTheOutputsUnchanged() throws {
        let layout = try NMPackedLayout(rows: 2, cols: 8, pattern: NMPattern(n: 2, m: 4), type: .f32)
        var w = [Float](repeating: 1, count: 16)
        w[13] = .nan
        var values = [Float](repeating: 7, count: 8), index = [UInt8](repeating: 9, count: 8)
        #expect(throws: MSPError.invalidArgument("weights[1][5] is NaN")) {
            try NMPack.pack(weights: w, layout, colScale: nil, values: &values, index: &index)
        }
        w[13] = 1
        let scale: [Float] = [1, 1, -1, 1, 1, 1, 1, 1]
        #expect(throws: MSPError.invalidArgument("col_scale[2] (-1.0) must be finite and >= 0")) {
            try scale.withUnsafeBufferPointer {
                try NMPack.pack(weights: w, layout, colScale: $0, values: &values, index: &index)
            }
        }
        #expect(values == [Float](repeating: 7, count: 8) && index == [UInt8](repeating: 9, count: 8))
    }

    /// Every way an index can break the format is an error naming the row, and unpack writes nothing.
    @Test(arguments: [(2, 8, 64), (1, 4, 36), (8, 32, 64), (1, 2, 10), (3, 16, 48), (2, 3, 33), (5, 12, 36)])
    func badIndexIsRejected(n: Int, m: Int, cols: Int) throws {
        let rows = 3
        let layout = try NMPackedLayout(rows: rows, cols: cols, pattern: NMPattern(n: n, m: m), type: .bf16)
        let t = TestMatrix(rows: rows, cols: cols, type: .bf16, values: (0..<(rows * cols)).map { Float($0 % 13) })
        let good = try pack(t, n: n, m: m)
        var cases: [(index: [UInt8], message: String)] = []
        // Row 1, group 1 (columns m..<2m) gains one kept column or loses one.
        let row1 = layout.indexStride
        let firstKept = (m..<(2 * m)).first { good.index[row1 + $0 / 8] >> ($0 % 8) & 1 == 1 }!
        let firstPruned = (m..<(2 * m)).first { good.index[row1 + $0 / 8] >> ($0 % 8) & 1 == 0 }!
        var more = good.index, fewer = good.index
        more[row1 + firstPruned / 8] |= 1 << (firstPruned % 8)
        fewer[row1 + firstKept / 8] &= ~(1 << (firstKept % 8))
        cases.append((more, "index row 1: group 1 (columns \(m)..<\(2 * m)) marks \(n + 1) kept columns, not n = \(n)"))
        cases.append((fewer, "index row 1: group 1 (columns \(m)..<\(2 * m)) marks \(n - 1) kept columns, not n = \(n)"))
        if cols % 32 != 0 {
            var padding = good.index
            padding[2 * layout.indexStride + layout.indexStride - 1] |= 0x80  // the last bit of row 2
            cases.append((padding, "index row 2 marks column \(layout.chunks * 32 - 1), past cols (\(cols))"))
        }
        for (index, message) in cases {
            var values = good.values
            var out = [UInt32](repeating: 0xCAFE, count: rows * cols)
            #expect(throws: MSPError.invalidArgument(message)) {
                try withElements(&values, .bf16) { v in
                    try withElements(&out, .bf16) { d in try NMPack.unpack(values: v, index: index, layout, weights: d) }
                }
            }
            #expect(out == [UInt32](repeating: 0xCAFE, count: rows * cols))
            #expect(throws: MSPError.invalidArgument(message)) {
                try index.withUnsafeBytes { try layout.checkIndex($0.baseAddress!, rows: 0..<rows) }
            }
        }
    }

    @Test func layoutSizes() throws {
        let layout = try NMPackedLayout(rows: 3, cols: 40, pattern: NMPattern(n: 2, m: 8), type: .bf16)
        #expect(layout.valuesPerRow == 10 && layout.valuesBytes == 60 && layout.indexStride == 8 && layout.indexBytes == 24)
        #expect(throws: MSPError.invalidArgument("cols (12) must be a multiple of m (8)")) {
            try NMPackedLayout(rows: 1, cols: 12, pattern: NMPattern(n: 2, m: 8), type: .f32)
        }
        #expect(throws: MSPError.self) {
            try NMPackedLayout(rows: Int.max / 2, cols: 64, pattern: NMPattern(n: 2, m: 8), type: .f32)
        }
        #expect(throws: MSPError.self) { try NMPackedLayout(rows: 0, cols: 8, pattern: NMPattern(n: 2, m: 8), type: .f32) }
    }
}
