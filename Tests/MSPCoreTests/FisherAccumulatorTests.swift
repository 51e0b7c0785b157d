// FisherAccumulatorTests: traces against per-sample references written here, chunking, validation
// that leaves the accumulator unchanged, concurrent layers, and the diagonal Fisher.

import Dispatch
import MSPCore
import Synchronization
import Testing

@Suite("Fisher accumulator equals the per-sample reference and rejects bad chunks unchanged")
struct FisherAccumulatorTests {
    static let sizes = [3, 100, 5000, 4096 * 3 + 1]

    /// Adds `buffer` (a whole layer) to `layer` in chunks split at `cuts`.
    func add(
        _ accumulator: FisherAccumulator, layer: Int, _ buffer: GradientBuffer, cuts: [Int] = [],
        scale: Double = 1
    ) throws {
        let bounds = [0] + cuts.filter { $0 > 0 && $0 < buffer.count }.sorted() + [buffer.count]
        try buffer.withBytes { base in
            for (lo, hi) in zip(bounds, bounds.dropFirst()) where hi > lo {
                try accumulator.add(
                    layer: layer, base + lo * buffer.type.byteWidth, type: buffer.type, count: hi - lo,
                    scale: scale)
            }
        }
    }

    /// Every layer's total and the sample count: the state a failed call must not change.
    func snapshot(_ accumulator: FisherAccumulator) -> [UInt64] {
        let traces = (try? accumulator.traces(perParameter: false)) ?? []
        return traces.map(\.bitPattern) + [UInt64(accumulator.sampleCount)]
    }

    @Test(arguments: ElementType.allCases)
    func tracesEqualPerSampleReference(type: ElementType) throws {
        let accumulator = try FisherAccumulator(sizes: Self.sizes)
        let samples = 4
        var reference = [Double](repeating: 0, count: Self.sizes.count)
        var rng = SplitMix64(seed: 5)
        for s in 0..<samples {
            // Layers in a shuffled order, each in random chunks; layer 0 gets no gradient in sample 2.
            for layer in Array(Self.sizes.indices).shuffled(using: &rng) where !(s == 2 && layer == 0) {
                let size = Self.sizes[layer]
                let buffer = GradientBuffer.random(
                    type: type, count: size, seed: UInt64(100 * s + layer), spread: 20)
                let cuts = (0..<3).map { _ in Int(rng.next() % UInt64(size)) }
                try add(accumulator, layer: layer, buffer, cuts: cuts)
                reference[layer] += buffer.referenceSumOfSquares()
            }
            accumulator.endSample()
        }
        #expect(accumulator.sampleCount == samples)
        let traces = try accumulator.traces(perParameter: false)
        let perParameter = try accumulator.traces(perParameter: true)
        for layer in Self.sizes.indices {
            let expected = reference[layer] / Double(samples)
            #expect(GradientBuffer.relativeError(traces[layer], expected) <= 1e-13, "layer \(layer)")
            #expect(
                GradientBuffer.relativeError(perParameter[layer], expected / Double(Self.sizes[layer]))
                    <= 1e-13)
        }
    }

    @Test(arguments: ElementType.allCases)
    func integerGradientsGiveExactTraces(type: ElementType) throws {
        let accumulator = try FisherAccumulator(sizes: [6, 10])
        // Sample 1: layer 0 = [1, -2, 3, 0, 4, 1] (31), layer 1 = 0...9 (285) in two chunks, scale 2.
        try add(accumulator, layer: 0, GradientBuffer(type: type, integers: [1, -2, 3, 0, 4, 1]))
        try add(accumulator, layer: 1, GradientBuffer(type: type, integers: Array(0..<10)), cuts: [4], scale: 2)
        accumulator.endSample()
        // Sample 2: layer 0 = [5] only (25); layer 1 nothing.
        try add(accumulator, layer: 0, GradientBuffer(type: type, integers: [5]))
        accumulator.endSample()
        #expect(try accumulator.traces() == [28, 285])
        #expect(try accumulator.traces(perParameter: true) == [28.0 / 6, 28.5])
    }

    @Test func openSampleIsNotReportedAndResetClearsEverything() throws {
        let accumulator = try FisherAccumulator(sizes: [2])
        #expect(throws: MSPError.self) { try accumulator.traces() }
        try add(accumulator, layer: 0, GradientBuffer(type: .f32, integers: [3, 4]))
        #expect(throws: MSPError.invalidState("no calibration sample has been closed yet (call end_sample first)")) {
            try accumulator.traces()
        }
        accumulator.endSample()
        try add(accumulator, layer: 0, GradientBuffer(type: .f32, integers: [1]))
        #expect(try accumulator.traces() == [25])  // the open sample (1) is not included
        accumulator.reset()
        #expect(accumulator.sampleCount == 0)
        #expect(throws: MSPError.self) { try accumulator.traces() }
        // The open sample was cleared too: the whole layer fits again, and only it counts.
        try add(accumulator, layer: 0, GradientBuffer(type: .f32, integers: [1, 1]))
        accumulator.endSample()
        #expect(try accumulator.traces() == [2])
        #expect(accumulator.size(ofLayer: 0) == 2 && accumulator.size(ofLayer: 1) == nil)
    }

    @Test func invalidSizesAreRejected() {
        #expect(throws: MSPError.invalidArgument("num_layers (0) must be > 0")) {
            try FisherAccumulator(sizes: [Int]())
        }
        #expect(throws: MSPError.invalidArgument("sizes[1] (0) must be > 0")) {
            try FisherAccumulator(sizes: [4, 0, 2])
        }
        #expect(throws: MSPError.invalidArgument("sizes[2] (-3) must be > 0")) {
            try FisherAccumulator(sizes: [4, 1, -3])
        }
    }

    /// Bad chunks, each with the text its message must contain.
    static let badChunks: [(layer: Int, values: [Float], count: Int, scale: Double, message: String)] = [
        (-1, [1], 1, 1, "layer (-1) must be in [0, 2)"),
        (2, [1], 1, 1, "layer (2) must be in [0, 2)"),
        (1, [1], 0, 1, "count (0) must be > 0"),
        (1, [1], -5, 1, "count (-5) must be > 0"),
        (1, [1], 1, -1, "scale (-1.0) must be finite and >= 0"),
        (1, [1], 1, .nan, "scale (nan) must be finite and >= 0"),
        (1, [1], 1, .infinity, "scale (inf) must be finite and >= 0"),
        (1, [1, 1, 1, 1], 4, 1, "layer 1: count (4) exceeds the 3 of its 5 elements not yet added"),
        (1, [1, .infinity], 2, 1, "layer 1: grad[1] (inf) is not finite"),
        (0, [.nan, 1], 2, 1, "layer 0: grad[0] (nan) is not finite"),
        (1, [1, 1e30], 2, 1e300, "layer 1: the sum of squared gradients overflows double"),
    ]

    @Test(arguments: badChunks.indices)
    func badChunkLeavesTheAccumulatorUnchanged(index: Int) throws {
        let bad = Self.badChunks[index]
        let accumulator = try FisherAccumulator(sizes: [3, 5])
        // One closed sample, and an open one in which layer 1 already holds 2 of its 5 elements.
        try add(accumulator, layer: 0, GradientBuffer(type: .f32, integers: [1, 2, 2]))
        accumulator.endSample()
        try add(accumulator, layer: 1, GradientBuffer(type: .f32, integers: [1, 1]))
        let before = snapshot(accumulator)
        do {
            try bad.values.withUnsafeBytes {
                try accumulator.add(
                    layer: bad.layer, $0.baseAddress!, type: .f32, count: bad.count, scale: bad.scale)
            }
            Issue.record("no error for \(bad.message)")
        } catch let error as MSPError {
            #expect(error.message.contains(bad.message), "\(error.message)")
        }
        #expect(snapshot(accumulator) == before)
        // The open sample is intact too: layer 1 still takes exactly its 3 remaining elements.
        try add(accumulator, layer: 1, GradientBuffer(type: .f32, integers: [3, 3, 3]))
        #expect(throws: MSPError.self) { try add(accumulator, layer: 1, GradientBuffer(type: .f32, integers: [1])) }
        accumulator.endSample()
        #expect(try accumulator.traces() == [4.5, 14.5])
    }

    @Test func distinctLayersMayBeAddedConcurrently() throws {
        let layers = 16, size = 20_000, samples = 3
        let buffers = (0..<layers).map { GradientBuffer.random(type: .bf16, count: size, seed: UInt64($0), spread: 10) }
        let serial = try FisherAccumulator(sizes: [Int](repeating: size, count: layers))
        let concurrent = try FisherAccumulator(sizes: [Int](repeating: size, count: layers))
        for _ in 0..<samples {
            for l in 0..<layers { try add(serial, layer: l, buffers[l], cuts: [size / 3, size / 2]) }
            serial.endSample()
            let failures = Atomic(0)
            DispatchQueue.concurrentPerform(iterations: layers) { l in
                do {
                    try add(concurrent, layer: l, buffers[l], cuts: [size / 3, size / 2])
                } catch {
                    failures.add(1, ordering: .relaxed)
                }
            }
            #expect(failures.load(ordering: .relaxed) == 0)
            concurrent.endSample()
        }
        #expect(try concurrent.traces() == serial.traces())
    }

    @Test(arguments: ElementType.allCases)
    func diagonalAddsScaledSquaresInPlace(type: ElementType) throws {
        let count = 3 * 65_536 + 7  // several threads' worth
        let grad = GradientBuffer.random(type: type, count: count, seed: 11, spread: 12)
        var rng = SplitMix64(seed: 12)
        var diag = (0..<count).map { _ in Float(rng.next() % 1000) / 64 }
        let scale = 0.375
        let expected = (0..<count).map { i in
            Float(Double(diag[i]) + scale * (grad.value(i)! * grad.value(i)!))
        }
        try grad.withBytes { g in
            try FisherAccumulator.addDiagonal(g, type: type, count: count, to: &diag, scale: scale)
        }
        #expect(diag.map(\.bitPattern) == expected.map(\.bitPattern))
    }

    @Test func diagonalRejectsBadInputUnchanged() throws {
        let cases: [([Float], [Float], Double, String)] = [
            ([1, 2, .nan, .infinity], [0, 0, 0, 0], 1, "grad[2] (nan) is not finite"),
            ([1, 2, 3, 4], [0, 0, 0, 0], -1, "scale (-1.0) must be finite and >= 0"),
            ([1, 2, 3, 4], [0, 0, 0, 0], .nan, "scale (nan)"),
            ([1, 1e30, 3, 4], [0, 0, 0, 0], 1, "diag_inout[1] (0.0) + scale * grad[1]^2"),
            ([1, 1, 3, 4], [0, 0, .infinity, 0], 1, "diag_inout[2] (inf)"),
        ]
        for (grad, diagBefore, scale, message) in cases {
            var diag = diagBefore
            do {
                try grad.withUnsafeBytes {
                    try FisherAccumulator.addDiagonal($0.baseAddress!, type: .f32, count: 4, to: &diag, scale: scale)
                }
                Issue.record("no error for \(message)")
            } catch let error as MSPError {
                #expect(error.message.contains(message), "\(error.message)")
            }
            #expect(diag.map(\.bitPattern) == diagBefore.map(\.bitPattern))
        }
    }
}
