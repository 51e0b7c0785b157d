import MSPCore
import Testing

@Suite("Unstructured pruning equals the stable-sort reference")
struct TopKPruneTests {
    static let sparsities: [Double] = [0, 0.1, 0.5, 0.75, 0.999]

    @Test(arguments: ElementType.allCases, sparsities)
    func perRowAndPerLayer(type: ElementType, sparsity: Double) throws {
        for (rows, cols) in [(1, 1), (1, 37), (9, 64), (33, 130), (2, 5000)] {  // 5000: buckets narrowed
            for scope in [TopKScope.row, .layer] {
                for scaled in [false, true] {
                    var rng = SplitMix64(seed: UInt64(rows * cols))
                    var scale = (0..<cols).map { _ in rng.next() % 4 == 0 ? -0.0 : Float(Int(rng.next() % 3)) }
                    let values = hardValues(rows * cols, type: type, seed: UInt64(cols)).map {
                        scaled && $0.isInfinite ? 1 : $0
                    }
                    var t = TestMatrix(rows: rows, cols: cols, type: type, values: values)
                    let original = t
                    var mask = [UInt8](repeating: 9, count: rows * cols)
                    try scale.withUnsafeMutableBufferPointer { s in
                        try t.withBuffer { p, shape in
                            try TopKPrune.prune(
                                weights: p, shape, sparsity: sparsity, scope: scope,
                                colScale: scaled ? UnsafeBufferPointer(s) : nil, keepMask: &mask)
                        }
                    }
                    let score = { (i: Int) in abs(original.value(i)) * (scaled ? scale[i % cols] : 1) }
                    var expected = [UInt8](repeating: 0, count: rows * cols)
                    let groups: [Range<Int>] =
                        scope == .row
                        ? (0..<rows).map { ($0 * cols)..<(($0 + 1) * cols) } : [0..<(rows * cols)]
                    for g in groups {
                        let keep = g.count - TopKPrune.prunedCount(sparsity: sparsity, of: g.count)
                        for (j, k) in referenceKeep(g.map(score), keep: keep).enumerated() where k {
                            expected[g.lowerBound + j] = 1
                        }
                    }
                    #expect(mask == expected, "\(rows)x\(cols) \(scope) scaled=\(scaled)")
                    for i in 0..<(rows * cols) {
                        #expect(t.bits[i] == (expected[i] == 1 ? original.bits[i] : 0))
                    }
                }
            }
        }
    }

    @Test(arguments: [TopKScope.row, .layer])
    func sameResultForEveryThreadCount(scope: TopKScope) throws {
        let rows = 257, cols = 300
        let values = hardValues(rows * cols, type: .f16, seed: 3)
        var results: [[UInt8]] = []
        for threads in [1, 2, 3, 0] {
            try Threads.set(threads)
            var t = TestMatrix(rows: rows, cols: cols, type: .f16, values: values)
            var mask = [UInt8](repeating: 0, count: rows * cols)
            try t.withBuffer { p, shape in
                try TopKPrune.prune(weights: p, shape, sparsity: 0.6, scope: scope, colScale: nil, keepMask: &mask)
            }
            results.append(mask)
        }
        try Threads.set(0)
        #expect(Set(results).count == 1)
    }

    /// Columns past what the selection's 32-bit column order holds are refused before any read.
    @Test func tooManyColumns() {
        var tiny: Float = 1
        #expect(throws: MSPError.self) {
            try TopKPrune.prune(
                weights: &tiny, Matrix(rows: 1, cols: 1 << 32, type: .f32), sparsity: 0.5, scope: .row,
                colScale: nil, keepMask: nil)
        }
        #expect(tiny == 1)
    }

    static let badSparsities: [Double] = [-0.1, 1.0, .nan, .infinity]

    @Test(arguments: badSparsities)
    func sparsityOutOfRange(sparsity: Double) {
        var t = TestMatrix(rows: 2, cols: 4, type: .f32, values: [1, 2, 3, 4, 5, 6, 7, 8])
        let before = t.bits
        #expect(throws: MSPError.self) {
            try t.withBuffer { p, shape in
                try TopKPrune.prune(weights: p, shape, sparsity: sparsity, scope: .row, colScale: nil, keepMask: nil)
            }
        }
        #expect(t.bits == before)
    }
}
