// FisherAccumulator: per-layer squared-gradient sums over calibration samples (Fisher traces), and
// the element-wise diagonal Fisher.

#if canImport(Glibc)
    import Glibc
#endif

/// Accumulates Tr(F_l) = (1/S) Σ_s ‖g_ls‖² for L layers, where g_ls is the loss gradient with respect
/// to layer l's weights on calibration sample s.
///
/// A sample's gradients arrive as chunks (`add`), in any order and any split; `endSample` closes the
/// sample. Sums are kept in double with Neumaier compensation: the open sample's sum per layer, and
/// the total over closed samples. `traces` reports closed samples only.
///
/// Thread safety: each layer's sums live in their own cache line and `add` touches nothing else, so
/// `add` calls for *distinct* layers may run concurrently. Calls for the same layer, and any call
/// concurrent with `endSample`, `traces`, `reset` or deinitialisation, must be serialised by the
/// caller. (Hence `@unchecked Sendable`: the class is shareable under that contract.)
///
/// Every method validates all of its input before it changes anything: after a thrown error the
/// accumulator is exactly as before the call.
public final class FisherAccumulator: @unchecked Sendable {
    /// One layer's state, padded to a 64-byte cache line.
    private struct Layer {
        /// Parameters of the layer.
        let size: Int
        /// Elements added in the open sample.
        var added = 0
        /// Compensated Σ‖g‖² of the open sample.
        var open = 0.0, openCompensation = 0.0
        /// Compensated Σ_s ‖g_s‖² over closed samples.
        var total = 0.0, totalCompensation = 0.0
        private let padding: (Int, Int) = (0, 0)

        init(size: Int) { self.size = size }
    }

    /// The number of layers (> 0).
    public let layerCount: Int
    /// The number of closed samples (`endSample` calls since creation or `reset`).
    public private(set) var sampleCount = 0
    /// `layerCount` layer states, one cache line each; allocated with malloc so that failure is an
    /// error, not a trap.
    private let layers: UnsafeMutablePointer<Layer>

    /// Creates an accumulator with all sums at zero.
    /// - Parameter sizes: the parameter count of every layer (at least one layer; every size > 0).
    /// - Throws: `MSPError.invalidArgument` for no layers or a size <= 0 (naming its index);
    ///   `MSPError.outOfMemory`.
    public init(sizes: some Collection<Int>) throws {
        guard !sizes.isEmpty else { throw MSPError.invalidArgument("num_layers (0) must be > 0") }
        for (l, size) in sizes.enumerated() where size <= 0 {
            throw MSPError.invalidArgument("sizes[\(l)] (\(size)) must be > 0")
        }
        let count = sizes.count
        let (bytes, overflow) = count.multipliedReportingOverflow(by: MemoryLayout<Layer>.stride)
        var raw: UnsafeMutableRawPointer? = nil
        guard !overflow, posix_memalign(&raw, 64, bytes) == 0, let raw else {
            throw MSPError.outOfMemory("cannot allocate the sums of \(count) layers")
        }
        layers = raw.bindMemory(to: Layer.self, capacity: count)
        for (l, size) in sizes.enumerated() { (layers + l).initialize(to: Layer(size: size)) }
        layerCount = count
    }

    deinit {
        layers.deinitialize(count: layerCount)
        free(layers)
    }

    /// The parameter count of layer `layer`, or `nil` for an index outside `0..<layerCount`.
    public func size(ofLayer layer: Int) -> Int? {
        layer >= 0 && layer < layerCount ? layers[layer].size : nil
    }

    /// Adds `scale · Σ grad[i]²` of one gradient chunk to layer `layer` in the open sample.
    /// - Parameters:
    ///   - layer: in `0..<layerCount`.
    ///   - grad: `count` elements of `type`, all finite.
    ///   - type: the element type (16-bit formats are widened exactly).
    ///   - count: > 0 and at most the layer's size minus the elements already added to it in the
    ///     open sample.
    ///   - scale: finite and >= 0 (e.g. 1/loss_scale² to undo loss scaling).
    /// - Throws: `MSPError.invalidArgument` for a bad layer, count or scale, a chunk that exceeds the
    ///   layer, a non-finite gradient (the message names the layer and the element's index), or a
    ///   sum that would overflow double; `MSPError.outOfMemory`. The accumulator is unchanged then.
    public func add(
        layer: Int, _ grad: UnsafeRawPointer, type: ElementType, count: Int, scale: Double = 1
    ) throws {
        guard layer >= 0, layer < layerCount else {
            throw MSPError.invalidArgument("layer (\(layer)) must be in [0, \(layerCount))")
        }
        guard count > 0 else { throw MSPError.invalidArgument("count (\(count)) must be > 0") }
        guard scale.isFinite, scale >= 0 else {
            throw MSPError.invalidArgument("scale (\(scale)) must be finite and >= 0")
        }
        let state = layers + layer
        let left = state.pointee.size - state.pointee.added
        guard count <= left else {
            throw MSPError.invalidArgument(
                "layer \(layer): count (\(count)) exceeds the \(left) of its \(state.pointee.size) "
                    + "elements not yet added in this sample")
        }
        let squares: Double
        switch try SumSquares.scan(grad, type: type, count: count) {
        case .finite(let sum):
            squares = sum
        case .nonFinite(let index, let value):
            throw MSPError.invalidArgument("layer \(layer): grad[\(index)] (\(value)) is not finite")
        }
        let term = scale * squares
        var open = state.pointee.open, openCompensation = state.pointee.openCompensation
        neumaierAdd(&open, &openCompensation, term)
        // The total after endSample must stay finite too, so check it now.
        guard term.isFinite, (open + openCompensation).isFinite,
            (state.pointee.total + open).isFinite
        else {
            throw MSPError.invalidArgument("layer \(layer): the sum of squared gradients overflows double")
        }
        state.pointee.open = open
        state.pointee.openCompensation = openCompensation
        state.pointee.added += count
    }

    /// Closes the open sample: every layer's open sum joins its total, and the sample count grows by
    /// one. A layer that received nothing in the sample counts as a zero gradient.
    public func endSample() {
        for l in 0..<layerCount {
            let state = layers + l
            neumaierAdd(&state.pointee.total, &state.pointee.totalCompensation, state.pointee.open)
            neumaierAdd(
                &state.pointee.total, &state.pointee.totalCompensation, state.pointee.openCompensation)
            state.pointee.open = 0
            state.pointee.openCompensation = 0
            state.pointee.added = 0
        }
        sampleCount += 1
    }

    /// Writes every layer's trace over the closed samples: Σ_s ‖g_ls‖² / S, or, with `perParameter`,
    /// further divided by the layer's size (the mean per-weight Fisher, comparable across layers of
    /// different size). The open sample is not included.
    /// - Parameters:
    ///   - perParameter: divide by the layer's size too.
    ///   - out: at least `layerCount` values; the first `layerCount` are written.
    /// - Throws: `MSPError.invalidState` when no sample has been closed (nothing is written);
    ///   `MSPError.invalidArgument` when `out` is too short.
    public func traces(perParameter: Bool, into out: UnsafeMutableBufferPointer<Double>) throws {
        guard sampleCount > 0 else {
            throw MSPError.invalidState("no calibration sample has been closed yet (call end_sample first)")
        }
        guard out.count >= layerCount else {
            throw MSPError.invalidArgument("out holds \(out.count) values, fewer than \(layerCount) layers")
        }
        let samples = Double(sampleCount)
        for l in 0..<layerCount {
            let state = layers[l]
            let trace = (state.total + state.totalCompensation) / samples
            out[l] = perParameter ? trace / Double(state.size) : trace
        }
    }

    /// Every layer's trace over the closed samples; see `traces(perParameter:into:)`.
    /// - Throws: `MSPError.invalidState` when no sample has been closed.
    public func traces(perParameter: Bool = false) throws -> [Double] {
        var result = [Double](repeating: 0, count: layerCount)
        try result.withUnsafeMutableBufferPointer { try traces(perParameter: perParameter, into: $0) }
        return result
    }

    /// Clears every sum, the open sample and the sample count; the layer sizes stay.
    public func reset() {
        for l in 0..<layerCount { layers[l] = Layer(size: layers[l].size) }
        sampleCount = 0
    }
}

extension FisherAccumulator {
    /// Elements per thread at least in `addDiagonal`.
    private static let diagonalMinimumPerThread = 1 << 16

    /// Accumulates the diagonal Fisher element-wise: `diag[i] += scale · grad[i]²`, computed in double
    /// from the exactly widened gradient and rounded once to float32. With the weights w,
    /// ½ · diag[i] · w[i]² is an OBD-style pruning score.
    ///
    /// Stateless and reentrant; elements are split across threads and results do not depend on the
    /// thread count.
    /// - Parameters:
    ///   - grad: `count` elements of `type`, all finite.
    ///   - type: the element type.
    ///   - count: the number of elements (>= 0).
    ///   - diag: `count` floats, updated in place.
    ///   - scale: finite and >= 0.
    /// - Throws: `MSPError.invalidArgument` for a bad scale, a non-finite gradient (the message
    ///   gives its index), or an updated value that is not finite in float32 (an overflow, or a
    ///   non-finite `diag` entry). Every update is computed and checked before the first write, so
    ///   `diag` is unchanged on error.
    public static func addDiagonal(
        _ grad: UnsafeRawPointer, type: ElementType, count: Int, to diag: UnsafeMutablePointer<Float>,
        scale: Double = 1
    ) throws {
        guard scale.isFinite, scale >= 0 else {
            throw MSPError.invalidArgument("scale (\(scale)) must be finite and >= 0")
        }
        guard count > 0 else { return }
        switch type {
        case .f32: try addDiagonal(F32.self, grad, count, diag, scale)
        case .f16: try addDiagonal(F16.self, grad, count, diag, scale)
        case .bf16: try addDiagonal(BF16.self, grad, count, diag, scale)
        }
    }

    private static func addDiagonal<E: Element>(
        _: E.Type, _ grad: UnsafeRawPointer, _ count: Int, _ diag: UnsafeMutablePointer<Float>,
        _ scale: Double
    ) throws {
        let g = grad.assumingMemoryBound(to: E.Bits.self)
        @inline(__always) func updated(_ i: Int) -> Float {
            let x = Double(E.widen(g[i]))
            return Float(Double(diag[i]) + scale * (x * x))
        }
        /// Runs `body` over `range` in runs of `run` elements, hinting the lines of both buffers a
        /// prefetch distance ahead of each run first.
        @inline(__always) func streamed(_ range: Range<Int>, _ body: (Range<Int>) -> Void) {
            let run = 256
            for first in stride(from: range.lowerBound, to: range.upperBound, by: run) {
                Prefetch.lines(g + first, offset: Prefetch.distance, bytes: run * MemoryLayout<E.Bits>.stride)
                Prefetch.lines(diag + first, offset: Prefetch.distance, bytes: run * MemoryLayout<Float>.stride)
                body(first..<(first &+ min(run, range.upperBound &- first)))
            }
        }
        let chunks = Threads.chunks(count, minimumPerThread: diagonalMinimumPerThread)
        // Pass 1: find the first update that is not finite, before anything is written.
        let firstBad = try Threads.map(chunks) { _, range -> Int? in
            // The largest magnitude bits of the updates (inf and NaN patterns are the largest): a
            // maximum vectorises, a test per element compiles to a scalar loop.
            var largest: UInt32 = 0
            streamed(range) { run in for i in run { largest = max(largest, updated(i).bitPattern & 0x7FFF_FFFF) } }
            return largest < Float.infinity.bitPattern ? nil : range.first { !updated($0).isFinite }
        }.lazy.compactMap { $0 }.first
        if let i = firstBad {
            let x = E.widen(g[i])
            guard x.isFinite else { throw MSPError.invalidArgument("grad[\(i)] (\(x)) is not finite") }
            throw MSPError.invalidArgument(
                "diag_inout[\(i)] (\(diag[i])) + scale * grad[\(i)]^2 (\(scale) * \(x)^2) is not "
                    + "finite in float32")
        }
        // Pass 2: write.
        _ = try Threads.map(chunks) { _, range in
            streamed(range) { run in for i in run { diag[i] = updated(i) } }
        }
    }
}
