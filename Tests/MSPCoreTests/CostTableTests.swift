// Cost tables against an independent reference: the real pruning kernels applied per level to a copy,
// then Σ pruned w²·d and tr(dW H dWᵀ) by plain double loops.

@testable import MSPCore
import Testing

/// Runs `body` with `values` as an optional buffer.
private func withOptional<R>(_ values: [Float]?, _ body: (UnsafeBufferPointer<Float>?) throws -> R) rethrows -> R {
    guard let values else { return try body(nil) }
    return try values.withUnsafeBufferPointer { try body($0) }
}

/// The keep mask the pruning kernels produce for `level` (all ones for a dense level).
private func kernelMask(_ t: TestMatrix, _ level: Level, scope: TopKScope, colScale: [Float]?) throws -> [UInt8] {
    var copy = t
    var mask = [UInt8](repeating: 1, count: t.rows * t.cols)
    try withOptional(colScale) { scale in
        try copy.withBuffer { p, shape in
            if let pattern = level.pattern {
                try NMMask.prune(weights: p, shape, pattern: pattern, colScale: scale, keepMask: &mask)
            } else if level.nm == nil {
                try TopKPrune.prune(
                    weights: p, shape, sparsity: level.sparsity, scope: scope, colScale: scale, keepMask: &mask)
            }
        }
    }
    return mask
}

/// scale · Σ over pruned weights of w²·d, per level.
private func referenceEnergy(
    _ t: TestMatrix, _ levels: LevelSet, scope: TopKScope, colScale: [Float]?, diag: [Float]?, scale: Double
) throws -> [Double] {
    try levels.levels.map { level in
        let mask = try kernelMask(t, level, scope: scope, colScale: colScale)
        var sum = 0.0
        for i in mask.indices where mask[i] == 0 {
            let w = Double(t.value(i))
            sum += w * w * Double(diag?[i] ?? 1)
        }
        return scale * sum
    }
}

/// tr(dW H dWᵀ) per level, by a double triple loop over the pruned weights.
private func referenceReconstruction(
    _ t: TestMatrix, _ levels: LevelSet, scope: TopKScope, colScale: [Float]?, gram: [Float]
) throws -> [Double] {
    try levels.levels.map { level in
        let mask = try kernelMask(t, level, scope: scope, colScale: colScale)
        var total = 0.0
        for r in 0..<t.rows {
            let pruned = (0..<t.cols).filter { mask[r * t.cols + $0] == 0 }
            for i in pruned {
                for j in pruned {
                    total += Double(t.value(r * t.cols + i)) * Double(gram[i * t.cols + j])
                        * Double(t.value(r * t.cols + j))
                }
            }
        }
        return total
    }
}

/// Hard values (ties, signed zeros, small integers) made finite; without subnormals when asked
/// (float32 BLAS cannot resolve their products).
private func finiteValues(_ count: Int, type: ElementType, seed: UInt64, subnormals: Bool) -> [Float] {
    hardValues(count, type: type, seed: seed).map { v in
        if v.isInfinite { return v > 0 ? 2.5 : -1.5 }
        if !subnormals && v != 0 && abs(v) < 1e-3 { return 0.75 }
        return v
    }
}

/// H = XᵀX / s + I for a random X of s x cols: symmetric and well conditioned, rounded to float.
private func randomGram(_ cols: Int, seed: UInt64) -> [Float] {
    var rng = SplitMix64(seed: seed)
    let s = 8
    let x = (0..<(s * cols)).map { _ in Double.random(in: -1...1, using: &rng) }
    var h = [Float](repeating: 0, count: cols * cols)
    for i in 0..<cols {
        for j in i..<cols {
            var sum = i == j ? 1.0 : 0.0
            for k in 0..<s { sum += x[k * cols + i] * x[k * cols + j] / Double(s) }
            h[i * cols + j] = Float(sum)
            h[j * cols + i] = Float(sum)
        }
    }
    return h
}

private func unstructured(_ s: Double) -> Level { try! Level(sparsity: s) }
private func nm(_ n: Int, _ m: Int) -> Level { try! Level(n: n, m: m) }

/// Level sets exercising N:M with two group sizes, unstructured levels (including sparsity 0 and
/// levels that prune the same count), a mix of both, and dense levels.
private let levelSets: [LevelSet] = [
    try! LevelSet([nm(4, 4), nm(7, 8), nm(3, 4), nm(5, 8), nm(2, 4), nm(3, 8), nm(1, 4), nm(1, 8)]),
    try! LevelSet([0, 0.1, 0.3, 0.5, 0.51, 0.75, 0.9, 0.999].map(unstructured)),
    try! LevelSet([nm(1, 1), unstructured(0.2), nm(2, 4), unstructured(0.6), nm(1, 4), unstructured(0.8), nm(1, 8),
                   unstructured(0.95)]),
]

private let shapes = [(1, 8), (9, 24), (33, 64), (4, 200)]

private func expectClose(
    _ got: [Double], _ expected: [Double], relative: Double, _ comment: String,
    sourceLocation: SourceLocation = #_sourceLocation
) {
    #expect(got.count == expected.count, sourceLocation: sourceLocation)
    for (k, (g, e)) in zip(got, expected).enumerated() {
        #expect(abs(g - e) <= relative * abs(e), "level \(k): \(g) vs \(e); \(comment)", sourceLocation: sourceLocation)
    }
}

@Suite("Cost tables equal the kernels' masks summed by a reference")
struct CostTableTests {
    @Test(arguments: ElementType.allCases, [TopKScope.row, .layer])
    func energyEqualsReference(type: ElementType, scope: TopKScope) throws {
        for (rows, cols) in shapes {
            var rng = SplitMix64(seed: UInt64(rows * 1000 + cols))
            let values = finiteValues(rows * cols, type: type, seed: UInt64(cols), subnormals: true)
            var t = TestMatrix(rows: rows, cols: cols, type: type, values: values)
            let colScales: [[Float]?] = [nil, (0..<cols).map { _ in Float(Int(rng.next() % 3)) }]
            let diags: [[Float]?] = [nil, (0..<(rows * cols)).map { _ in Float.random(in: 0..<3, using: &rng) }]
            for colScale in colScales {
                for diag in diags {
                    for levels in levelSets {
                        for blockElements in [CostTable.energyBlockElements, 1] {
                            let scale = 0.37
                            let got = try withOptional(colScale) { s in
                                try withOptional(diag) { d in
                                    try t.withBuffer { p, shape in
                                        try CostTable.energy(
                                            weights: p, shape, levels: levels, scope: scope, colScale: s, diag: d,
                                            scale: scale, blockElements: blockElements)
                                    }
                                }
                            }
                            let expected = try referenceEnergy(
                                t, levels, scope: scope, colScale: colScale, diag: diag, scale: scale)
                            expectClose(
                                got, expected, relative: 1e-12,
                                "\(rows)x\(cols) \(scope) scaled=\(colScale != nil) diag=\(diag != nil) \(levels.levels)")
                        }
                    }
                }
            }
        }
    }

    @Test(arguments: ElementType.allCases, [TopKScope.row, .layer])
    func reconstructionEqualsReference(type: ElementType, scope: TopKScope) throws {
        for (rows, cols) in shapes {
            var rng = SplitMix64(seed: UInt64(rows * 7 + cols))
            let values = finiteValues(rows * cols, type: type, seed: UInt64(rows + cols), subnormals: false)
            var t = TestMatrix(rows: rows, cols: cols, type: type, values: values)
            let gram = randomGram(cols, seed: UInt64(cols))
            let colScales: [[Float]?] = [nil, (0..<cols).map { _ in Float(Int(rng.next() % 3)) }]
            for colScale in colScales {
                for levels in levelSets {
                    let expected = try referenceReconstruction(t, levels, scope: scope, colScale: colScale, gram: gram)
                    // The default block size (one block) and one row per block.
                    for blockFloats in [CostTable.reconstructionBlockFloats(t.matrix), 1] {
                        let got = try withOptional(colScale) { s in
                            try gram.withUnsafeBufferPointer { h in
                                try t.withBuffer { p, shape in
                                    try CostTable.reconstruction(
                                        weights: p, shape, levels: levels, scope: scope, colScale: s, gram: h,
                                        blockFloats: blockFloats)
                                }
                            }
                        }
                        expectClose(
                            got, expected, relative: 1e-5,
                            "\(rows)x\(cols) \(scope) scaled=\(colScale != nil) blockFloats=\(blockFloats) \(levels.levels)")
                    }
                }
            }
        }
    }

    /// More than 32 unstructured levels: the layer-scope classification uses binary search there.
    @Test(arguments: [TopKScope.row, .layer])
    func manyLevels(scope: TopKScope) throws {
        let levels = try LevelSet((0..<40).map { unstructured(0.024 * Double($0)) })
        let (rows, cols) = (9, 40)
        var t = TestMatrix(
            rows: rows, cols: cols, type: .f16,
            values: finiteValues(rows * cols, type: .f16, seed: 9, subnormals: false))
        let gram = randomGram(cols, seed: 9)
        for colScale in [nil, (0..<cols).map { Float($0 % 3) }] {
            let (energy, error) = try withOptional(colScale) { s in
                try gram.withUnsafeBufferPointer { h in
                    try t.withBuffer { p, shape in
                        (try CostTable.energy(weights: p, shape, levels: levels, scope: scope, colScale: s, diag: nil, scale: 1),
                         try CostTable.reconstruction(weights: p, shape, levels: levels, scope: scope, colScale: s, gram: h))
                    }
                }
            }
            let comment = "\(scope) scaled=\(colScale != nil)"
            expectClose(
                energy, try referenceEnergy(t, levels, scope: scope, colScale: colScale, diag: nil, scale: 1),
                relative: 1e-12, comment)
            expectClose(
                error, try referenceReconstruction(t, levels, scope: scope, colScale: colScale, gram: gram),
                relative: 1e-5, comment)
        }
    }

    @Test func denseLevelsCostNothing() throws {
        var t = TestMatrix(rows: 3, cols: 8, type: .f32, values: (0..<24).map { Float($0) - 5 })
        let levels = try LevelSet([nm(8, 8), unstructured(0.05)])  // floor(0.05 * 8) = 0 pruned per row
        let energy = try t.withBuffer { p, shape in
            try CostTable.energy(weights: p, shape, levels: levels, scope: .row, colScale: nil, diag: nil, scale: 1)
        }
        #expect(energy == [0, 0])
        let gram = [Float](repeating: 1, count: 64)
        let error = try gram.withUnsafeBufferPointer { h in
            try t.withBuffer { p, shape in
                try CostTable.reconstruction(weights: p, shape, levels: levels, scope: .row, colScale: nil, gram: h)
            }
        }
        #expect(error == [0, 0])
    }

    @Test func handComputedExample() throws {
        // Rows [1, -2, 3, 4] and [0.5, 5, -6, 0.5]. 25% per row prunes 1 and the later 0.5 (ties: the
        // higher index goes first); 2:4 prunes 1, -2 and both 0.5s; 50% per layer prunes 0.5, 0.5, 1, -2.
        var t = TestMatrix(rows: 2, cols: 4, type: .f32, values: [1, -2, 3, 4, 0.5, 5, -6, 0.5])
        let levels = try LevelSet([unstructured(0.25), nm(2, 4)])
        let rowScope = try t.withBuffer { p, shape in
            try CostTable.energy(weights: p, shape, levels: levels, scope: .row, colScale: nil, diag: nil, scale: 2)
        }
        #expect(rowScope == [2 * (1 + 0.25), 2 * (1 + 4 + 0.25 + 0.25)])
        let layer = try LevelSet([unstructured(0.5)])
        let layerScope = try t.withBuffer { p, shape in
            try CostTable.energy(weights: p, shape, levels: layer, scope: .layer, colScale: nil, diag: nil, scale: 1)
        }
        #expect(layerScope == [0.25 + 0.25 + 1 + 4])
        // H = identity: the reconstruction error is the pruned energy.
        var identity = [Float](repeating: 0, count: 16)
        for i in 0..<4 { identity[i * 5] = 1 }
        let error = try identity.withUnsafeBufferPointer { h in
            try t.withBuffer { p, shape in
                try CostTable.reconstruction(weights: p, shape, levels: levels, scope: .row, colScale: nil, gram: h)
            }
        }
        #expect(error == [1 + 0.25, 1 + 4 + 0.25 + 0.25])
    }

    /// A layer large enough that the layer-scope selection runs on several chunks, with many ties
    /// across chunk boundaries; results must not depend on the thread count.
    @Test(arguments: [TopKScope.row, .layer])
    func sameResultForEveryThreadCount(scope: TopKScope) throws {
        let rows = 20000, cols = 8
        var rng = SplitMix64(seed: 11)
        let values = (0..<(rows * cols)).map { _ in Float(Int(rng.next() % 5)) - 2 }
        var t = TestMatrix(rows: rows, cols: cols, type: .bf16, values: values)
        let levels = try LevelSet([unstructured(0.1), nm(2, 4), unstructured(0.55), unstructured(0.7), nm(1, 8)])
        let gram = randomGram(cols, seed: 5)
        var energies: [[Double]] = []
        var errors: [[Double]] = []
        defer { try? Threads.set(0) }
        for threads in [1, 2, 4, 0] {
            try Threads.set(threads)
            energies.append(
                try t.withBuffer { p, shape in
                    try CostTable.energy(weights: p, shape, levels: levels, scope: scope, colScale: nil, diag: nil, scale: 1)
                })
            errors.append(
                try gram.withUnsafeBufferPointer { h in
                    try t.withBuffer { p, shape in
                        try CostTable.reconstruction(weights: p, shape, levels: levels, scope: scope, colScale: nil, gram: h)
                    }
                })
        }
        #expect(energies.allSatisfy { $0 == energies[0] })
        #expect(errors.allSatisfy { $0 == errors[0] })
        let expected = try referenceEnergy(t, levels, scope: scope, colScale: nil, diag: nil, scale: 1)
        expectClose(energies[0], expected, relative: 1e-12, "\(scope)")
    }

    @Test func rejectsBadInput() throws {
        let rows = 2, cols = 12
        var t = TestMatrix(rows: rows, cols: cols, type: .f32, values: (0..<24).map { Float($0) })
        let levels = try LevelSet([nm(2, 4), unstructured(0.6)])
        let gram = [Float](repeating: 0, count: cols * cols)
        func energy(
            _ t: inout TestMatrix, levels: LevelSet = levels, colScale: [Float]? = nil, diag: [Float]? = nil,
            scale: Double = 1
        ) throws {
            _ = try withOptional(colScale) { s in
                try withOptional(diag) { d in
                    try t.withBuffer { p, shape in
                        try CostTable.energy(
                            weights: p, shape, levels: levels, scope: .layer, colScale: s, diag: d, scale: scale)
                    }
                }
            }
        }
        func reconstruction(_ t: inout TestMatrix, levels: LevelSet = levels, gram: [Float] = gram) throws {
            _ = try gram.withUnsafeBufferPointer { h in
                try t.withBuffer { p, shape in
                    try CostTable.reconstruction(weights: p, shape, levels: levels, scope: .row, colScale: nil, gram: h)
                }
            }
        }
        let eights = try LevelSet([nm(4, 8)])
        #expect(throws: MSPError.invalidArgument("level 0 (4:8): cols (12) is not a multiple of m")) {
            try energy(&t, levels: eights)
        }
        #expect(throws: MSPError.invalidArgument("level 0 (4:8): cols (12) is not a multiple of m")) {
            try reconstruction(&t, levels: eights)
        }
        for scale in [-1, Double.nan, .infinity] {
            #expect(throws: MSPError.invalidArgument("scale (\(scale)) must be finite and >= 0")) {
                try energy(&t, scale: scale)
            }
        }
        var colScale = [Float](repeating: 1, count: cols)
        colScale[3] = -1
        #expect(throws: MSPError.invalidArgument("col_scale[3] (-1.0) must be finite and >= 0")) {
            try energy(&t, colScale: colScale)
        }
        #expect(throws: MSPError.invalidArgument("col_scale has 3 values, cols is 12")) {
            try energy(&t, colScale: [1, 1, 1])
        }
        var diag = [Float](repeating: 1, count: rows * cols)
        diag[13] = .infinity
        #expect(throws: MSPError.invalidArgument("diag[1][1] (inf) is not finite")) { try energy(&t, diag: diag) }
        var badGram = gram
        badGram[cols + 2] = .nan
        #expect(throws: MSPError.invalidArgument("gram[1][2] (nan) is not finite")) {
            try reconstruction(&t, gram: badGram)
        }
        #expect(throws: MSPError.invalidArgument("gram has 3 values, cols * cols is 12 * 12")) {
            try reconstruction(&t, gram: [1, 2, 3])
        }
        var bad = t
        bad.bits[14] = Float.nan.bitPattern
        #expect(throws: MSPError.invalidArgument("weights[1][2] is NaN")) { try energy(&bad) }
        #expect(throws: MSPError.invalidArgument("weights[1][2] is NaN")) { try reconstruction(&bad) }
        bad.bits[14] = Float.infinity.bitPattern
        let infinite = MSPError.invalidArgument("weights[1][2] (inf) is not finite; cost tables need finite weights")
        #expect(throws: infinite) { try energy(&bad) }
        #expect(throws: infinite) { try reconstruction(&bad) }
    }
}
