import Foundation
import MSPCore
import Testing

@Suite("The compressed N:M product equals the masked dense product")
struct NMLinearTests {
    /// A packed random matrix and its masked dense form.
    struct Packed {
        let layout: NMPackedLayout
        var values: [UInt32]
        var index: [UInt8]
        let dense: TestMatrix

        init(rows: Int, cols: Int, n: Int, m: Int, type: ElementType, seed: UInt64) throws {
            var rng = SplitMix64(seed: seed)
            let floats = (0..<(rows * cols)).map { _ in Float.random(in: -2...2, using: &rng) }
            let t = TestMatrix(rows: rows, cols: cols, type: type, values: floats)
            layout = try NMPackedLayout(rows: rows, cols: cols, pattern: NMPattern(n: n, m: m), type: type)
            (values, index, dense) = referencePack(t, n: n, m: m)
        }

        /// y (batch x rows, float32 bits) from the library.
        mutating func multiply(
            _ x: TestMatrix, batch: Int, yType: ElementType = .f32, isa: KernelISA = .selected
        ) throws -> [UInt32] {
            var y = [UInt32](repeating: 0x7FC0_1234, count: batch * layout.rows)
            var x = x
            let layout = layout, index = index, xType = x.type
            try withElements(&values, layout.type) { v in
                try x.withBuffer { xp, _ in
                    try withElements(&y, yType) { yp in
                        try NMLinear.apply(
                            values: v, index: index, layout, x: xp, xType: xType, batch: batch, y: yp, yType: yType,
                            isa: isa)
                    }
                }
            }
            return y
        }
    }

    /// Tokens with a few exactly representable values in every x type.
    func tokens(batch: Int, cols: Int, type: ElementType, seed: UInt64) -> TestMatrix {
        var rng = SplitMix64(seed: seed)
        let values = (0..<(batch * cols)).map { _ in Float(Int(rng.next() % 512) - 256) / 64 }
        return TestMatrix(rows: batch, cols: cols, type: type, values: values)
    }

    /// Checks y against the float64 product: |y - y64| <= (ceil(cols / 64) + 6) * 2^-24 * Σ|w x|, the
    /// bound of recursive summation for the chains of ceil(cols / 64) fused multiply-adds per partial
    /// sum and the 6 additions that fold the partial sums.
    func expectWithinBound(
        _ y: [Float], _ p: Packed, _ x: TestMatrix, batch: Int, sourceLocation: SourceLocation = #_sourceLocation
    ) {
        let rows = p.layout.rows, cols = p.layout.cols
        let factor = (Double((cols + 63) / 64) + 6) * 0x1p-24
        for t in 0..<batch {
            for r in 0..<rows {
                var exact = 0.0, magnitude = 0.0
                for c in 0..<cols {
                    let term = Double(p.dense.value(r * cols + c)) * Double(x.value(t * cols + c))
                    exact += term
                    magnitude += abs(term)
                }
                #expect(
                    abs(Double(y[t * rows + r]) - exact) <= factor * magnitude, "row \(r) token \(t)",
                    sourceLocation: sourceLocation)
            }
        }
    }

    static let patterns: [(Int, Int)] = [
        (1, 2), (2, 4), (1, 8), (2, 8), (4, 8), (7, 8), (3, 16), (8, 32), (31, 32), (2, 3), (5, 12),
    ]

    @Test(arguments: ElementType.allCases, patterns)
    func everyInstructionSetGivesTheReferenceBits(type: ElementType, pattern: (Int, Int)) throws {
        let (n, m) = pattern
        for (rows, groups, batch) in [(1, 1, 1), (7, 5, 3), (13, 70, 1), (5, 9, 16), (3, 67, 17)] {
            let cols = groups * m
            var p = try Packed(rows: rows, cols: cols, n: n, m: m, type: type, seed: UInt64(rows * groups + m))
            for xType in ElementType.allCases {
                let x = tokens(batch: batch, cols: cols, type: xType, seed: UInt64(cols + batch))
                let reference = referenceProduct(
                    dense: (0..<(rows * cols)).map(p.dense.value), rows: rows, cols: cols, weightType: type,
                    x: (0..<(batch * cols)).map(x.value), batch: batch)
                expectWithinBound(reference, p, x, batch: batch)
                for isa in KernelISA.supported {
                    let y = try p.multiply(x, batch: batch, isa: isa)
                    #expect(y == reference.map(\.bitPattern), "\(isa) \(rows)x\(cols) batch \(batch) x \(xType)")
                }
            }
        }
    }

    /// The nearest bfloat16 to `v` (ties to even), found by comparing the two candidates in double.
    func nearestBF16(_ v: Float) -> UInt32 {
        let below = v.bitPattern >> 16, above = below + 1
        let dBelow = abs(Double(Float(bitPattern: below << 16)) - Double(v))
        let dAbove = abs(Double(Float(bitPattern: above << 16)) - Double(v))
        return dBelow < dAbove || (dBelow == dAbove && below % 2 == 0) ? below : above
    }

    @Test(arguments: [ElementType.f16, .bf16])
    func resultsRoundToTheOutputType(yType: ElementType) throws {
        var p = try Packed(rows: 29, cols: 96, n: 2, m: 8, type: .bf16, seed: 11)
        let x = tokens(batch: 4, cols: 96, type: .bf16, seed: 2)
        let exact = try p.multiply(x, batch: 4).map { Float(bitPattern: $0) }
        let rounded = try p.multiply(x, batch: 4, yType: yType)
        let expected = exact.map { yType == .bf16 ? nearestBF16($0) : UInt32(Float16($0).bitPattern) }
        #expect(rounded == expected)
    }

    @Test func aTokenGivesTheSameBitsAloneOrInAnyBatchAndForAnyThreadCount() throws {
        var p = try Packed(rows: 301, cols: 1024, n: 2, m: 8, type: .bf16, seed: 4)
        let batch = 37  // three tiles of tokens, the last one partial
        let x = tokens(batch: batch, cols: 1024, type: .f32, seed: 9)
        defer { try? Threads.set(0) }
        var results: [[UInt32]] = []
        for threads in [1, 2, 3] {
            try Threads.set(threads)
            results.append(try p.multiply(x, batch: batch))
        }
        #expect(Set(results).count == 1)
        for t in [0, 16, 36] {
            let alone = TestMatrix(rows: 1, cols: 1024, type: .f32, values: (0..<1024).map { x.value(t * 1024 + $0) })
            #expect(try p.multiply(alone, batch: 1) == Array(results[0][(t * 301)..<((t + 1) * 301)]))
        }
    }

    /// A pruned column contributes 0 * x: an infinite x there makes the output NaN, as in a dense product.
    @Test func infiniteTokenInAPrunedColumnGivesNaN() throws {
        var p = try Packed(rows: 2, cols: 8, n: 1, m: 4, type: .f32, seed: 1)
        let pruned = (0..<8).first { p.index[$0 / 8] >> ($0 % 8) & 1 == 0 }!
        var values = [Float](repeating: 1, count: 8)
        values[pruned] = .infinity
        let y = try p.multiply(TestMatrix(rows: 1, cols: 8, type: .f32, values: values), batch: 1)
        #expect(Float(bitPattern: y[0]).isNaN)
    }

    @Test(arguments: [3, 20])  // checked as read (one tile), or ahead of the first tile
    func badIndexIsAnErrorAndLeavesYUnchanged(batch: Int) throws {
        var p = try Packed(rows: 40, cols: 64, n: 2, m: 8, type: .bf16, seed: 8)
        p.index[37 * p.layout.indexStride + 2] |= 0xFF  // row 37, columns 16..<24: 8 kept
        let x = tokens(batch: batch, cols: 64, type: .bf16, seed: 1)
        let message = "index row 37: group 2 (columns 16..<24) marks 8 kept columns, not n = 2"
        #expect(throws: MSPError.invalidArgument(message)) {
            _ = try p.multiply(x, batch: batch)
        }
        var y = [UInt32](repeating: 0x7FC0_1234, count: batch * 40)
        var values = p.values
        let (layout, index) = (p.layout, p.index)
        _ = try? withElements(&values, .bf16) { v in
            try withElements(&y, .f32) { yp in
                try x.bits.map(UInt16.init).withUnsafeBytes { xp in
                    try NMLinear.apply(
                        values: v, index: index, layout, x: xp.baseAddress!, xType: .bf16, batch: batch, y: yp,
                        yType: .f32)
                }
            }
        }
        #expect(y == [UInt32](repeating: 0x7FC0_1234, count: batch * 40))
    }

    /// Every kernel refuses an index that breaks the format wherever the break is (the AVX-512 kernel
    /// checks 16 index words at a time as it reads them, the others a block of rows first), with the
    /// message of the index check, for one token and for pairs of rows.
    @Test(arguments: [(1, 2), (3, 4), (2, 8), (5, 16), (8, 32), (2, 3)])
    func everyKernelRefusesABadIndex(n: Int, m: Int) throws {
        // 38 chunks (index words checked 16, 16 and 6 at a time), 2 chunks, and 17 (the odd last
        // chunk starts a group of 16), rounded down to whole groups.
        for cols in [1216, 40, 544].map({ $0 / m * m }) {
            var p = try Packed(rows: 5, cols: cols, n: n, m: m, type: .bf16, seed: UInt64(cols))
            let good = p.index, stride = p.layout.indexStride
            // A kept bit moved out of its group (group 0, the group of chunk 16 or the last group),
            // and a padding bit set.
            var breaks: [Int] = []
            for column in [0, min(16 * 32, cols - m), cols - m] {
                let kept = (column..<(column + m)).first { good[3 * stride + $0 / 8] >> ($0 % 8) & 1 == 1 }!
                breaks.append(kept)
            }
            var cases: [[UInt8]] = breaks.map { bit in
                var index = good
                index[3 * stride + bit / 8] ^= 1 << (bit % 8)
                return index
            }
            if cols % 32 != 0 {
                var index = good
                index[3 * stride + stride - 1] |= 0x80
                cases.append(index)
            }
            for index in cases {
                let expected = try #require(throws: MSPError.self) {
                    try index.withUnsafeBytes { try p.layout.checkIndex($0.baseAddress!, rows: 0..<5) }
                }
                p.index = index
                for isa in KernelISA.supported {
                    for batch in [1, 3] {
                        let x = tokens(batch: batch, cols: cols, type: .f32, seed: 1)
                        #expect(throws: expected) { _ = try p.multiply(x, batch: batch, isa: isa) }
                    }
                }
            }
        }
    }

    @Test func badBatchAndUnsupportedKernelsAreErrors() throws {
        var p = try Packed(rows: 2, cols: 8, n: 1, m: 4, type: .f32, seed: 1)
        let x = tokens(batch: 1, cols: 8, type: .f32, seed: 1)
        #expect(throws: MSPError.invalidArgument("batch (0) must be > 0")) { _ = try p.multiply(x, batch: 0) }
        for isa in KernelISA.allCases where !KernelISA.supported.contains(isa) {
            #expect(throws: MSPError.invalidArgument("this CPU does not run the \(isa) kernels")) {
                _ = try p.multiply(x, batch: 1, isa: isa)
            }
        }
        #expect(KernelISA.supported.contains(.portable) && KernelISA.supported.contains(KernelISA.selected))
    }
}
