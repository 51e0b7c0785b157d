// GramAccumulatorTests: Gram matrices against a double reference written here (every dtype, chunks
// across the 128-token runs, columns of very different scales), token counts, reset, concurrent
// layers, and bad chunks that leave the accumulator unchanged.

import Dispatch
import MSPCore
import Testing

/// Tokens x cols values stored in `type`, with per-column scales 2^scale[c].
private func activations(tokens: Int, cols: Int, type: ElementType, seed: UInt64, scales: [Int]) -> TestMatrix {
    var rng = SplitMix64(seed: seed)
    let values = (0..<(tokens * cols)).map { i in
        Float.random(in: -1...1, using: &rng) * Float(sign: .plus, exponent: scales[i % cols], significand: 1)
    }
    return TestMatrix(rows: tokens, cols: cols, type: type, values: values)
}

/// Σ_t x_t x_tᵀ in double of the stored values.
private func referenceGram(_ chunks: [TestMatrix], cols: Int) -> [Double] {
    var h = [Double](repeating: 0, count: cols * cols)
    for x in chunks {
        for t in 0..<x.rows {
            for i in 0..<cols {
                for j in 0..<cols { h[i * cols + j] += Double(x.value(t * cols + i)) * Double(x.value(t * cols + j)) }
            }
        }
    }
    return h
}

/// Layer `layer`'s Gram matrix.
private func gram(_ accumulator: GramAccumulator, _ layer: Int) throws -> [Float] {
    let cols = accumulator.cols(ofLayer: layer) ?? 0
    var out = [Float](repeating: .nan, count: cols * cols)
    try out.withUnsafeMutableBufferPointer { try accumulator.gram(layer: layer, into: $0) }
    return out
}

/// Adds a chunk.
private func add(_ accumulator: GramAccumulator, _ layer: Int, _ x: TestMatrix) throws {
    var x = x
    try x.withBuffer { p, shape in try accumulator.add(layer: layer, p, type: shape.type, tokens: shape.rows, cols: shape.cols) }
}

@Suite("Gram accumulator equals a double reference and rejects bad chunks unchanged")
struct GramAccumulatorTests {
    @Test(arguments: ElementType.allCases)
    func matchesTheDoubleReference(type: ElementType) throws {
        let cols = 24
        // Scales from 2^-60 to 2^40: without per-column scaling float32 products would underflow.
        let scales = (0..<cols).map { c in type == .f16 ? (c % 5) - 2 : (c * 100 / cols) - 60 }
        let accumulator = try GramAccumulator(cols: [cols, 7])
        let chunks = [1, 127, 128, 129, 300].enumerated().map { k, tokens in
            activations(tokens: tokens, cols: cols, type: type, seed: UInt64(k), scales: scales)
        }
        for x in chunks { try add(accumulator, 0, x) }
        #expect(accumulator.tokens(ofLayer: 0) == 685 && accumulator.tokens(ofLayer: 1) == 0)
        let h = try gram(accumulator, 0), expected = referenceGram(chunks, cols: cols)
        for i in 0..<cols {
            for j in 0..<cols {
                let bound = 1e-5 * (expected[i * cols + i] * expected[j * cols + j]).squareRoot()
                #expect(abs(Double(h[i * cols + j]) - expected[i * cols + j]) <= bound, "[\(i)][\(j)]")
                #expect(h[i * cols + j] == h[j * cols + i])
            }
        }
        #expect(try gram(accumulator, 1) == [Float](repeating: 0, count: 49))
    }

    @Test func integerActivationsGiveExactSumsAndResetClears() throws {
        let accumulator = try GramAccumulator(cols: [3])
        let x = TestMatrix(rows: 2, cols: 3, type: .bf16, values: [1, 2, 3, -4, 0, 5])
        try add(accumulator, 0, x)
        #expect(try gram(accumulator, 0) == [17, 2, -17, 2, 4, 6, -17, 6, 34])
        accumulator.reset()
        #expect(accumulator.tokens(ofLayer: 0) == 0)
        #expect(try gram(accumulator, 0) == [Float](repeating: 0, count: 9))
    }

    @Test func distinctLayersFromThreadsEqualSerial() throws {
        let widths = [16, 40, 8, 33]
        let serial = try GramAccumulator(cols: widths), parallel = try GramAccumulator(cols: widths)
        let chunks = widths.enumerated().map { l, c in
            (0..<5).map { activations(tokens: 50 + $0, cols: c, type: .f32, seed: UInt64(10 * l + $0), scales: Array(repeating: 0, count: c)) }
        }
        for (l, list) in chunks.enumerated() { for x in list { try add(serial, l, x) } }
        let job = UncheckedBox((parallel, chunks))
        DispatchQueue.concurrentPerform(iterations: widths.count) { l in
            for x in job.value.1[l] { try? add(job.value.0, l, x) }
        }
        for l in widths.indices {
            #expect(try gram(parallel, l).map(\.bitPattern) == (try gram(serial, l)).map(\.bitPattern))
            #expect(parallel.tokens(ofLayer: l) == serial.tokens(ofLayer: l))
        }
    }

    @Test func badChunksLeaveTheAccumulatorUnchanged() throws {
        let accumulator = try GramAccumulator(cols: [4])
        try add(accumulator, 0, TestMatrix(rows: 2, cols: 4, type: .f32, values: [1, 2, 3, 4, 5, 6, 7, 8]))
        let before = try gram(accumulator, 0)
        var bad = TestMatrix(rows: 2, cols: 4, type: .f32, values: [1, 2, 3, 4, 5, 6, .nan, 8])
        #expect(throws: MSPError.invalidArgument("layer 0: x[1][2] (nan) is not finite")) {
            try bad.withBuffer { p, _ in try accumulator.add(layer: 0, p, type: .f32, tokens: 2, cols: 4) }
        }
        // 2^64 squared is 2^128, beyond half the float32 range (the limit of a diagonal entry).
        let huge = TestMatrix(rows: 1, cols: 4, type: .f32, values: [0, 0x1p64, 0, 0])
        #expect(throws: MSPError.self) { try add(accumulator, 0, huge) }
        let x = TestMatrix(rows: 1, cols: 4, type: .f32, values: [1, 1, 1, 1])
        #expect(throws: MSPError.self) { try add(accumulator, 1, x) }
        #expect(throws: MSPError.self) { try add(accumulator, -1, x) }
        #expect(throws: MSPError.self) { try add(accumulator, 0, TestMatrix(rows: 1, cols: 3, type: .f32, values: [1, 1, 1])) }
        #expect(try gram(accumulator, 0) == before && accumulator.tokens(ofLayer: 0) == 2)
        #expect(throws: MSPError.self) { try GramAccumulator(cols: [Int]()) }
        #expect(throws: MSPError.self) { try GramAccumulator(cols: [3, 0]) }
    }
}

/// Carries values into `concurrentPerform`, whose threads use them without races.
private struct UncheckedBox<T>: @unchecked Sendable {
    let value: T
    init(_ value: T) { self.value = value }
}
