// GramAccumulator: per-layer Gram matrices H = Σ_t x_t x_tᵀ of layer inputs (SparseGPT's Hessian,
// up to a constant factor), accumulated from activation chunks with BLAS.

import CMSPBLAS

#if canImport(Glibc)
    import Glibc
#endif

/// Accumulates one `cols x cols` Gram matrix `H = Σ_t x_t x_tᵀ` per layer from chunks of input
/// activations `[tokens x cols]`, and counts the tokens.
///
/// Precision: every chunk is split into runs of at most `tokensPerProduct` tokens; each run's
/// columns are scaled by powers of two (so that every column's largest magnitude lies in [1, 2):
/// exact, and no float32 product can overflow or lose range), multiplied by `cblas_ssyrk` in
/// float32, and added, unscaled, into a double accumulator. A float32 dot product of at most 128
/// terms errs by at most about 129 · 2⁻²⁴ ≈ 7.7e-6 of Σ_t |x_ti| |x_tj| <= sqrt(H_ii H_jj), so
/// every entry agrees with a float64 reference to better than 1e-5 of sqrt(H_ii H_jj).
///
/// Memory: a layer's accumulator (8 · cols² bytes, lower triangle used) is allocated by its first
/// `add`; each `add` uses 4 · cols² bytes of scratch besides.
///
/// Thread safety: each layer's state is its own; `add` calls for *distinct* layers may run
/// concurrently. Calls for the same layer, and any call concurrent with `reset` or
/// deinitialisation, must be serialised by the caller (hence `@unchecked Sendable`).
///
/// Every method validates all of its input before it changes anything: after a thrown error the
/// accumulator is exactly as before the call.
public final class GramAccumulator: @unchecked Sendable {
    /// Tokens per float32 product: the bound behind the precision above.
    static let tokensPerProduct = 128
    /// The largest diagonal entry an accumulator may reach: half the float32 range, so that every
    /// entry, rounding errors included, converts to a finite float32.
    static let largestDiagonal = 0x1p127

    /// One layer's state.
    private final class Layer {
        /// Input features of the layer.
        let cols: Int
        /// Tokens added since creation or `reset`.
        var tokens = 0
        /// `cols * cols` doubles, row-major, lower triangle (j <= i) used; nil until the first add.
        var sums: UnsafeMutablePointer<Double>?

        init(cols: Int) { self.cols = cols }

        deinit { free(sums) }
    }

    /// The layers, in index order.
    private let layers: [Layer]

    /// The number of layers (> 0).
    public var layerCount: Int { layers.count }

    /// Creates an accumulator with every Gram matrix at zero; nothing is allocated per layer yet.
    /// - Parameter cols: the input features of every layer (at least one layer; each in
    ///   `1...Int32.max`, and cols² doubles must be addressable).
    /// - Throws: `MSPError.invalidArgument` for no layers or a bad width (naming its index).
    public init(cols: some Collection<Int>) throws {
        guard !cols.isEmpty else { throw MSPError.invalidArgument("num_layers (0) must be > 0") }
        for (l, c) in cols.enumerated() {
            guard c > 0 else { throw MSPError.invalidArgument("cols[\(l)] (\(c)) must be > 0") }
            guard c <= Int(Int32.max), !(c * c).multipliedReportingOverflow(by: 8).overflow else {
                throw MSPError.invalidArgument("cols[\(l)] (\(c)) is too large")
            }
        }
        layers = cols.map { Layer(cols: $0) }
    }

    /// The input features of layer `layer`, or `nil` for an index outside `0..<layerCount`.
    public func cols(ofLayer layer: Int) -> Int? {
        layer >= 0 && layer < layers.count ? layers[layer].cols : nil
    }

    /// The tokens added to layer `layer`, or `nil` for an index outside `0..<layerCount`.
    public func tokens(ofLayer layer: Int) -> Int? {
        layer >= 0 && layer < layers.count ? layers[layer].tokens : nil
    }

    /// Adds `Σ_t x_t x_tᵀ` of one activation chunk to layer `layer`.
    /// - Parameters:
    ///   - layer: in `0..<layerCount`.
    ///   - x: `tokens * cols` elements of `type`, row-major (one token per row), all finite.
    ///   - tokens: > 0.
    ///   - cols: the layer's input features.
    /// - Throws: `MSPError.invalidArgument` for a bad layer, size or width, a non-finite element
    ///   (the message names the layer, token and column), or a sum whose diagonal would exceed the
    ///   float32 range; `MSPError.outOfMemory`. The accumulator is unchanged then.
    public func add(layer: Int, _ x: UnsafeRawPointer, type: ElementType, tokens: Int, cols: Int) throws {
        guard let state = layer >= 0 && layer < layers.count ? layers[layer] : nil else {
            throw MSPError.invalidArgument("layer (\(layer)) must be in [0, \(layers.count))")
        }
        guard tokens > 0 else { throw MSPError.invalidArgument("tokens (\(tokens)) must be > 0") }
        guard cols == state.cols else {
            throw MSPError.invalidArgument("layer \(layer): cols (\(cols)) differs from the layer's \(state.cols)")
        }
        guard !tokens.multipliedReportingOverflow(by: cols).overflow,
            state.tokens <= Int.max - tokens
        else { throw MSPError.invalidArgument("tokens (\(tokens)) is too large") }
        switch type {
        case .f32: try add(F32.self, state, layer, x, tokens)
        case .f16: try add(F16.self, state, layer, x, tokens)
        case .bf16: try add(BF16.self, state, layer, x, tokens)
        }
    }

    private func add<E: Element>(
        _: E.Type, _ state: Layer, _ layer: Int, _ x: UnsafeRawPointer, _ tokens: Int
    ) throws {
        let cols = state.cols
        let data = x.assumingMemoryBound(to: E.Bits.self)
        try withScratch(Float.self, cols) { largest in
            try withScratch(Double.self, cols) { squares in
                // Pass 1: finiteness, each column's largest magnitude and sum of squares.
                largest.initialize(repeating: 0, count: cols)
                squares.initialize(repeating: 0, count: cols)
                for t in 0..<tokens {
                    let row = data + t &* cols
                    var bad = false
                    for c in 0..<cols {
                        let v = E.widen(row[c])
                        bad = bad || !v.isFinite
                        largest[c] = max(largest[c], abs(v))
                        squares[c] += Double(v) * Double(v)
                    }
                    if bad, let c = (0..<cols).first(where: { !E.widen(row[$0]).isFinite }) {
                        throw MSPError.invalidArgument(
                            "layer \(layer): x[\(t)][\(c)] (\(E.widen(row[c]))) is not finite")
                    }
                }
                // The diagonal bounds every entry: with a margin for rounding it must stay within
                // float32 for `gram`.
                for c in 0..<cols {
                    let diagonal = (state.sums.map { $0[c &* cols &+ c] } ?? 0) + squares[c]
                    guard diagonal <= Self.largestDiagonal else {
                        throw MSPError.invalidArgument(
                            "layer \(layer): H[\(c)][\(c)] would reach \(diagonal), beyond 2^127 (half the "
                                + "float32 range): scale the inputs down")
                    }
                }
                let sums = try state.sums ?? allocateSums(cols)
                try accumulate(E.self, data, tokens, cols, largest, into: sums)
                state.sums = sums
                state.tokens += tokens
            }
        }
    }

    /// Zeroed storage for one layer's sums.
    private func allocateSums(_ cols: Int) throws -> UnsafeMutablePointer<Double> {
        guard let raw = calloc(cols * cols, MemoryLayout<Double>.stride) else {
            throw MSPError.outOfMemory("cannot allocate a \(cols) x \(cols) Gram accumulator")
        }
        return raw.bindMemory(to: Double.self, capacity: cols * cols)
    }

    /// Adds the products of validated `tokens` rows into the lower triangle of `sums`, in runs of
    /// `tokensPerProduct` tokens scaled per column by `1 / 2^exponent(largest[c])`.
    private func accumulate<E: Element>(
        _: E.Type, _ data: UnsafePointer<E.Bits>, _ tokens: Int, _ cols: Int, _ largest: UnsafeMutablePointer<Float>,
        into sums: UnsafeMutablePointer<Double>
    ) throws {
        let run = Self.tokensPerProduct
        try withScratch(Float.self, run * cols) { scaled in
            try withScratch(Float.self, cols * cols) { product in
                try withScratch(Float.self, cols) { scale in
                    try withScratch(Double.self, cols) { unscale in
                        for c in 0..<cols {
                            // Within float's normal exponents, so that the scale itself is finite.
                            let e = largest[c] > 0 ? min(127, max(-126, largest[c].exponent)) : 0
                            scale[c] = Float(sign: .plus, exponent: -e, significand: 1)
                            unscale[c] = Double(sign: .plus, exponent: e, significand: 1)
                        }
                        for first in stride(from: 0, to: tokens, by: run) {
                            let count = min(run, tokens - first)
                            for t in 0..<count {
                                let src = data + (first + t) &* cols, dst = scaled + t &* cols
                                for c in 0..<cols { dst[c] = E.widen(src[c]) * scale[c] }
                            }
                            cblas_ssyrk(
                                CblasRowMajor, CblasLower, CblasTrans, Int32(cols), Int32(count), 1, scaled,
                                Int32(cols), 0, product, Int32(cols))
                            try addLower(product, cols, unscale, into: sums)
                        }
                    }
                }
            }
        }
    }

    /// `sums[i][j] += product[i][j] * unscale[i] * unscale[j]` for j <= i, rows split across
    /// threads in parts of equal work.
    private func addLower(
        _ product: UnsafePointer<Float>, _ cols: Int, _ unscale: UnsafePointer<Double>,
        into sums: UnsafeMutablePointer<Double>
    ) throws {
        let parts = max(1, min(Threads.count, cols * cols / (1 << 17)))
        // Row i starts the triangle's part t when i ≈ cols * sqrt(t / parts).
        let bounds = (0...parts).map { t in t == parts ? cols : Int(Double(cols) * (Double(t) / Double(parts)).squareRoot()) }
        _ = try Threads.map((0..<parts).map { bounds[$0]..<bounds[$0 + 1] }) { _, rows in
            for i in rows {
                let p = product + i &* cols, s = sums + i &* cols, u = unscale[i]
                for j in 0...i { s[j] += Double(p[j]) * (u * unscale[j]) }
            }
        }
    }

    /// Writes layer `layer`'s Gram matrix, rounded to float32 and symmetric, into `out` (zeros
    /// before the first `add`).
    /// - Parameters:
    ///   - layer: in `0..<layerCount`.
    ///   - out: at least cols² floats; the first cols² are written, row-major.
    /// - Throws: `MSPError.invalidArgument` for a bad layer or a short `out` (nothing written).
    public func gram(layer: Int, into out: UnsafeMutableBufferPointer<Float>) throws {
        guard let state = layer >= 0 && layer < layers.count ? layers[layer] : nil else {
            throw MSPError.invalidArgument("layer (\(layer)) must be in [0, \(layers.count))")
        }
        let cols = state.cols
        guard out.count >= cols * cols, let o = out.baseAddress else {
            throw MSPError.invalidArgument("out holds \(out.count) values, fewer than cols * cols (\(cols) * \(cols))")
        }
        guard let sums = state.sums else {
            o.update(repeating: 0, count: cols * cols)
            return
        }
        _ = try Threads.map(cols, minimumPerThread: max(1, (1 << 16) / cols)) { rows in
            for i in rows {
                for j in 0...i {
                    let v = Float(sums[i &* cols &+ j])
                    o[i &* cols &+ j] = v
                    o[j &* cols &+ i] = v
                }
            }
        }
    }

    /// Clears every layer's sums (releasing their memory) and token count.
    public func reset() {
        for layer in layers {
            free(layer.sums)
            layer.sums = nil
            layer.tokens = 0
        }
    }
}
