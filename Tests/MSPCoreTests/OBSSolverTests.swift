// OBSSolverTests: SparseGPT's solver against the double-precision reference written in
// OBSReference.swift, exact tie rules on a diagonal Gram matrix, dead inputs, thread-count
// independence, and bad input that leaves every buffer unchanged.

import CMSPBLAS
import MSPCore
import Testing

/// A random float32 weight matrix.
private func randomWeights(_ count: Int, seed: UInt64) -> [Float] {
    var rng = SplitMix64(seed: seed)
    return (0..<count).map { _ in Float.random(in: -2...2, using: &rng) }
}

/// Prunes a copy of `weights` with `solver`; returns the weights and the keep mask.
private func pruned(
    _ solver: OBSSolver, _ weights: [Float], rows: Int, level: Level, block: Int, type: ElementType = .f32
) throws -> (weights: [Float], keep: [Bool]) {
    var matrix = TestMatrix(rows: rows, cols: solver.cols, type: type, values: weights)
    var keep = [UInt8](repeating: 7, count: weights.count)
    try keep.withUnsafeMutableBufferPointer { k in
        try matrix.withBuffer { try solver.prune(weights: $0, $1, level: level, block: block, keepMask: k.baseAddress) }
    }
    return ((0..<weights.count).map { matrix.value($0) }, keep.map { $0 == 1 })
}

@Suite("SparseGPT solver equals the reference, keeps msp's tie rule and rejects bad input unchanged")
struct OBSSolverTests {
    /// (rows, cols, level, block): unstructured and N:M levels, blocks wider than the layer,
    /// narrower, odd, and N:M blocks that round down to a multiple of m.
    static let cases: [(Int, Int, Level, Int)] = [
        (16, 48, try! Level(sparsity: 0.5), 128), (5, 48, try! Level(sparsity: 0.7), 16),
        (37, 96, try! Level(sparsity: 0.3), 32), (21, 40, try! Level(sparsity: 0.9), 7),
        (16, 48, try! Level(n: 2, m: 4), 128), (37, 96, try! Level(n: 2, m: 8), 32),
        (9, 96, try! Level(n: 3, m: 8), 20), (18, 64, try! Level(n: 1, m: 2), 5),
        (7, 96, try! Level(n: 5, m: 16), 40), (20, 36, try! Level(n: 2, m: 6), 128), (17, 27, try! Level(sparsity: 0.45), 9),
    ]

    @Test(arguments: cases.indices)
    func matchesTheReference(index: Int) throws {
        let (rows, cols, level, block) = Self.cases[index]
        let gram = randomGram(cols: cols, tokens: 2 * cols, seed: UInt64(index), dead: index % 3 == 0 ? [3, 17] : [])
        let solver = try OBSSolver(gram: gram, cols: cols, damp: 0.01)
        let reference = try #require(OBSReference(gram: gram, cols: cols, damp: 0.01))
        let weights = randomWeights(rows * cols, seed: 100 + UInt64(index))
        let result = try pruned(solver, weights, rows: rows, level: level, block: block)
        var followed = 0, mismatches = 0
        let expected = reference.prune(
            weights, rows: rows, sparsity: level.nm == nil ? level.sparsity : 0, n: level.nm?.n ?? 0,
            m: level.nm?.m ?? 0, block: block,
            choose: OBSReference.following(result.keep, tolerance: 1e-5, followed: &followed, mismatches: &mismatches))
        #expect(mismatches == 0)
        #expect(followed <= 1, "decisions that differed only on near-ties: \(followed)")
        let largest = weights.map { abs(Double($0)) }.max() ?? 1
        let error = zip(result.weights, expected.weights).map { abs(Double($0) - $1) }.max() ?? 0
        #expect(error <= 1e-4 * largest, "max |native - reference| = \(error)")
        #expect(result.keep == expected.keep)
        for (i, k) in result.keep.enumerated() where !k { #expect(result.weights[i].bitPattern == 0) }
        if let nm = level.nm {
            for g in stride(from: 0, to: rows * cols, by: nm.m) { #expect(result.keep[g..<(g + nm.m)].filter { $0 }.count == nm.n) }
        }
    }

    @Test(arguments: ElementType.allCases)
    func diagonalGramKeepsTheLowerIndexOnTies(type: ElementType) throws {
        // H = 4 I: U is diagonal (no updates), every score is w² / const, and small integers tie a lot.
        let rows = 6, cols = 24
        let gram = (0..<(cols * cols)).map { $0 % (cols + 1) == 0 ? Float(4) : 0 }
        let solver = try OBSSolver(gram: gram, cols: cols, damp: 0)
        var rng = SplitMix64(seed: 9)
        let weights = (0..<(rows * cols)).map { _ in Float(Int(rng.next() % 7) - 3) }
        let magnitude = weights.map { abs($0) }
        for (level, block) in [(try Level(sparsity: 0.5), 10), (try Level(sparsity: 0.62), 24), (try Level(n: 2, m: 4), 8)] {
            let result = try pruned(solver, weights, rows: rows, level: level, block: block, type: type)
            var keep = [Bool](repeating: true, count: rows * cols)
            if let nm = level.nm {
                for g in stride(from: 0, to: rows * cols, by: nm.m) {
                    let flags = referenceKeep(Array(magnitude[g..<(g + nm.m)]), keep: nm.n)
                    for k in 0..<nm.m { keep[g + k] = flags[k] }
                }
            } else {
                for i1 in stride(from: 0, to: cols, by: block) {
                    let i2 = min(i1 + block, cols)
                    let positions = (0..<rows).flatMap { r in (i1..<i2).map { r * cols + $0 } }
                    let count = Int((level.sparsity * Double(positions.count) + 0.5).rounded(.down))
                    let flags = referenceKeep(positions.map { magnitude[$0] }, keep: positions.count - count)
                    for (k, p) in positions.enumerated() { keep[p] = flags[k] }
                }
            }
            #expect(result.keep == keep, "\(level)")
            #expect(result.weights == zip(weights, keep).map { $1 ? $0 : 0 }, "\(level)")
        }
    }

    @Test func deadInputsAreZeroedAndPrunedFirst() throws {
        let rows = 4, cols = 16
        let gram = randomGram(cols: cols, tokens: 40, seed: 4, dead: [2, 9])
        let solver = try OBSSolver(gram: gram, cols: cols, damp: 0.01)
        #expect(solver.deadColumns == [2, 9])
        let weights = randomWeights(rows * cols, seed: 5).map { $0 + 3 }  // no weight near zero
        // 2:8 prunes 6 of 8: both dead weights of a row's first and second group go first.
        let nm = try pruned(solver, weights, rows: rows, level: try Level(n: 2, m: 8), block: 128)
        // Dense: nothing pruned, but the dead columns are zeroed (and counted as kept).
        let dense = try pruned(solver, weights, rows: rows, level: try Level(n: 8, m: 8), block: 128)
        for r in 0..<rows {
            for c in [2, 9] {
                #expect(!nm.keep[r * cols + c] && nm.weights[r * cols + c] == 0)
                #expect(dense.keep[r * cols + c] && dense.weights[r * cols + c] == 0)
            }
        }
        #expect(dense.keep.allSatisfy { $0 })
        for i in 0..<(rows * cols) where ![2, 9].contains(i % cols) { #expect(dense.weights[i] == weights[i]) }
    }

    /// msp's threads take panels of rows when OpenBLAS is single-threaded, else the sweep stays on
    /// the calling thread: both, with 1 to 3 threads, give the same bits.
    @Test func resultsDoNotDependOnTheThreadCount() throws {
        let rows = 600, cols = 64
        let solver = try OBSSolver(gram: randomGram(cols: cols, tokens: 128, seed: 6), cols: cols, damp: 0.01)
        let weights = randomWeights(rows * cols, seed: 7)
        let blasThreads = openblas_get_num_threads()
        defer {
            try? Threads.set(0)
            openblas_set_num_threads(blasThreads)
        }
        for level in [try Level(sparsity: 0.6), try Level(n: 2, m: 8)] {
            var results: [[UInt32]] = []
            for (blas, threads) in [(1, 1), (1, 2), (1, 3), (2, 1), (2, 2)] {
                openblas_set_num_threads(Int32(blas))
                try Threads.set(threads)
                let result = try pruned(solver, weights, rows: rows, level: level, block: 24)
                results.append(result.weights.map(\.bitPattern) + result.keep.map { $0 ? 1 : 0 })
            }
            #expect(results.allSatisfy { $0 == results[0] }, "\(level)")
        }
    }

    @Test func badGramMatricesAreRejected() throws {
        let cols = 8
        var gram = randomGram(cols: cols, tokens: 20, seed: 8)
        #expect(throws: MSPError.self) { try OBSSolver(gram: gram, cols: cols, damp: -0.1) }
        #expect(throws: MSPError.self) { try OBSSolver(gram: gram, cols: cols, damp: .nan) }
        // Only the lower triangle is read: a NaN above the diagonal is ignored, below it is an error.
        gram[1] = .nan
        _ = try OBSSolver(gram: gram, cols: cols, damp: 0.01)
        gram[cols] = .infinity
        #expect(throws: MSPError.invalidArgument("gram[1][0] (inf) is not finite")) {
            try OBSSolver(gram: gram, cols: cols, damp: 0.01)
        }
        // Indefinite: a negative eigenvalue that 1% damping cannot lift.
        let indefinite = (0..<(cols * cols)).map { i -> Float in i == 0 ? -50 : (i % (cols + 1) == 0 ? 1 : 0) }
        do {
            _ = try OBSSolver(gram: indefinite, cols: cols, damp: 0.01)
            Issue.record("an indefinite Gram matrix was accepted")
        } catch let error as MSPError {
            #expect(error.message.contains("not positive definite") && error.message.contains("larger damp"))
        }
    }

    @Test func badWeightsAndArgumentsLeaveEveryBufferUnchanged() throws {
        let rows = 3, cols = 16
        let solver = try OBSSolver(gram: randomGram(cols: cols, tokens: 40, seed: 10), cols: cols, damp: 0.01)
        let good = randomWeights(rows * cols, seed: 11)
        let level = try Level(sparsity: 0.5)
        func rejects(_ weights: [Float], cols: Int = 16, level: Level = level, block: Int = 128, type: ElementType = .f32) {
            var matrix = TestMatrix(rows: rows, cols: cols, type: type, values: weights)
            let before = matrix.bits
            var keep = [UInt8](repeating: 7, count: weights.count)
            #expect(throws: MSPError.self) {
                try keep.withUnsafeMutableBufferPointer { k in
                    try matrix.withBuffer { try solver.prune(weights: $0, $1, level: level, block: block, keepMask: k.baseAddress) }
                }
            }
            #expect(matrix.bits == before && keep.allSatisfy { $0 == 7 })
        }
        var nan = good
        nan[20] = .nan
        rejects(nan)
        nan[20] = -.infinity
        rejects(nan)
        rejects(good, block: 0)
        rejects(good, block: -3)
        rejects(Array(good.prefix(rows * 8)), cols: 8)
        rejects(good, level: try Level(n: 2, m: 3))
        // 60000 is a finite float16, but SparseGPT's updates push the kept weights past 65504.
        let ill = try OBSSolver(gram: randomGram(cols: cols, tokens: 8, seed: 12), cols: cols, damp: 1e-6)
        var matrix = TestMatrix(rows: rows, cols: cols, type: .f16, values: good.map { $0 * 30000 })
        let before = matrix.bits
        do {
            try matrix.withBuffer { try ill.prune(weights: $0, $1, level: try Level(sparsity: 0.9), block: 128, keepMask: nil) }
            Issue.record("float16 weights beyond 65504 were accepted")
        } catch let error as MSPError {
            #expect(error.message.contains("overflow float16"), "\(error.message)")
        }
        #expect(matrix.bits == before)
    }
}
