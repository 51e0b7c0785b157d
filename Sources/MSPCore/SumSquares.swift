// SumSquares: the sum of squares of a gradient buffer in double precision, compensated across
// fixed-size blocks so that the result is exact to a few ulps and independent of the thread count.

/// Sum of squares of f32/f16/bf16 buffers.
///
/// Every element is widened exactly to `Double` and squared there, which is exact for all three
/// formats (a 24-bit significand squared fits in 53 bits). The buffer is cut into blocks of
/// `blockSize` elements at fixed offsets. Within a block, a 16-wide vector (four independent chains
/// of fused multiply-adds) takes 16 consecutive elements at a time, one per lane in a fixed order
/// (the element's index mod 16; a full bf16 vector takes even, then odd elements); each lane sums
/// runs of `run` squares plainly (the vectorised inner loop) and adds every run's sum to its own
/// Neumaier-compensated total. Block sums are then combined in block order with Neumaier's
/// compensated summation. Threads only decide who computes which block sums, never how they are
/// combined, so the result is bit-identical for any thread count.
///
/// Error bound: terms are non-negative, so a run's plain sum is within `run · 2⁻⁵³` relative of its
/// exact value, and compensated additions contribute about 2⁻⁵² more: the result is within about
/// 2e-15 relative of the exact sum (and exact whenever every partial sum is representable, e.g.
/// integer-valued squares below 2⁵³).
///
/// Non-finite elements are detected without a separate pass: squares of finite values are at most
/// about 1.2e77, so a block sum is non-finite exactly when the block holds an inf or NaN.
public enum SumSquares {
    /// Elements per block: the unit of threading and of the compensated combination.
    static let blockSize = 4096
    /// Independent accumulators (vector lanes) per block.
    static let lanes = 16
    /// Squares summed plainly per lane before each compensated addition.
    static let run = 16
    /// Blocks per thread at least (about 512 Ki elements): smaller buffers stay on one thread.
    static let minimumBlocksPerThread = 128

    /// The sum of squares of a buffer.
    /// - Parameters:
    ///   - data: `count` elements of `type`.
    ///   - type: the element type.
    ///   - count: the number of elements (>= 0; an empty buffer sums to 0).
    ///   - name: the argument's name in error messages.
    /// - Returns: Σ data[i]² in double precision.
    /// - Throws: `MSPError.invalidArgument` "`name`[i] (v) is not finite" for the first inf or NaN
    ///   element; `MSPError.outOfMemory` when the block sums of a large buffer cannot be allocated.
    public static func sum(
        _ data: UnsafeRawPointer, type: ElementType, count: Int, name: String = "data"
    ) throws -> Double {
        switch try scan(data, type: type, count: count) {
        case .finite(let sum):
            return sum
        case .nonFinite(let index, let value):
            throw MSPError.invalidArgument("\(name)[\(index)] (\(value)) is not finite")
        }
    }

    /// The outcome of a scan: the sum, or the first non-finite element.
    enum Outcome: Equatable {
        /// All elements are finite; Σ x².
        case finite(Double)
        /// The first element, in index order, that is inf or NaN.
        case nonFinite(index: Int, value: Float)
    }

    /// Sums the squares of a buffer, or finds its first non-finite element.
    /// - Throws: `MSPError.outOfMemory` only.
    static func scan(_ data: UnsafeRawPointer, type: ElementType, count: Int) throws -> Outcome {
        switch type {
        case .f32: try scan(F32.self, data.assumingMemoryBound(to: UInt32.self), count)
        case .f16: try scan(F16.self, data.assumingMemoryBound(to: UInt16.self), count)
        case .bf16: try scan(BF16.self, data.assumingMemoryBound(to: UInt16.self), count)
        }
    }

    private static func scan<E: Element>(_: E.Type, _ data: UnsafePointer<E.Bits>, _ count: Int) throws
        -> Outcome
    {
        guard count > 0 else { return .finite(0) }
        let blocks = (count - 1) / blockSize + 1
        if blocks == 1 {
            let sum = blockSum(E.self, data, count)
            return sum.isFinite ? .finite(sum) : firstNonFinite(E.self, data, 0..<count)
        }
        return try withScratch(Double.self, blocks) { sums in
            // Each chunk of blocks writes its own slots of `sums` and reports its first bad block.
            let chunks = Threads.chunks(blocks, minimumPerThread: minimumBlocksPerThread)
            let firstBad = try Threads.map(chunks) { _, range -> Int? in
                var bad: Int? = nil
                for b in range {
                    let start = b * blockSize
                    let sum = blockSum(E.self, data + start, min(blockSize, count - start))
                    sums[b] = sum
                    if bad == nil, !sum.isFinite { bad = b }
                }
                return bad
            }.lazy.compactMap { $0 }.first
            if let b = firstBad {
                return firstNonFinite(E.self, data, (b * blockSize)..<min(count, (b + 1) * blockSize))
            }
            // Neumaier's compensated sum of the block sums, in block order.
            var total = 0.0, compensation = 0.0
            for b in 0..<blocks { neumaierAdd(&total, &compensation, sums[b]) }
            return .finite(total + compensation)
        }
    }

    /// Σ x² over `n <= blockSize` elements. Each lane of a vector takes one of every `lanes`
    /// consecutive elements (in the order of `load`); each lane sums runs of `run` squares plainly
    /// (vectorised) and adds every run's sum to its Neumaier-compensated total; the lane totals are
    /// combined in lane order.
    @inline(__always)
    private static func blockSum<E: Element>(_: E.Type, _ p: UnsafePointer<E.Bits>, _ n: Int) -> Double {
        var sum = SIMD16<Double>(), compensation = SIMD16<Double>()
        @inline(__always) func add(_ part: SIMD16<Double>) {
            // Terms are non-negative, so Neumaier's |sum| >= |part| test is sum >= part.
            let t = sum + part
            compensation += ((sum - t) + part).replacing(with: (part - t) + sum, where: sum .< part)
            sum = t
        }
        // Elements i..<i+16, widened. A bf16 pair in a 32-bit word widens with a shift and a mask
        // and no lane moves, so bf16's even elements fill lanes 0..<8 and its odd ones 8..<16.
        @inline(__always) func load(_ i: Int) -> SIMD16<Double> {
            if E.self == BF16.self {
                let v = UnsafeRawPointer(p + i).loadUnaligned(as: SIMD8<UInt32>.self)
                @inline(__always) func e(_ j: Int) -> Double { Double(Float(bitPattern: v[j] &<< 16)) }
                @inline(__always) func o(_ j: Int) -> Double { Double(Float(bitPattern: v[j] & 0xFFFF_0000)) }
                return SIMD16<Double>(e(0), e(1), e(2), e(3), e(4), e(5), e(6), e(7), o(0), o(1), o(2), o(3), o(4), o(5), o(6), o(7))
            }
            var x = SIMD16<Double>()
            for j in 0..<lanes { x[j] = Double(E.widen(p[i + j])) }
            return x
        }
        let step = lanes * run
        var i = 0
        while i + step <= n {
            Prefetch.lines(p + i, offset: Prefetch.distance, bytes: step * MemoryLayout<E.Bits>.stride)
            var part = SIMD16<Double>()
            for k in 0..<run {
                let x = load(i + k * lanes)
                part = part.addingProduct(x, x)  // a fused multiply-add: the square is exact anyway
            }
            add(part)
            i += step
        }
        var part = SIMD16<Double>()
        while i + lanes <= n {
            let x = load(i)
            part = part.addingProduct(x, x)
            i += lanes
        }
        var x = SIMD16<Double>()
        for j in 0..<(n - i) { x[j] = Double(E.widen(p[i + j])) }
        part = part.addingProduct(x, x)
        add(part)
        var total = 0.0, totalCompensation = 0.0
        for j in 0..<lanes {
            neumaierAdd(&total, &totalCompensation, sum[j])
            neumaierAdd(&total, &totalCompensation, compensation[j])
        }
        return total + totalCompensation
    }

    /// The first inf or NaN element in `range`; the caller knows there is one.
    private static func firstNonFinite<E: Element>(
        _: E.Type, _ data: UnsafePointer<E.Bits>, _ range: Range<Int>
    ) -> Outcome {
        for i in range where !E.widen(data[i]).isFinite {
            return .nonFinite(index: i, value: E.widen(data[i]))
        }
        assertionFailure("a non-finite block sum without a non-finite element")
        return .nonFinite(index: range.lowerBound, value: E.widen(data[range.lowerBound]))
    }
}

/// Adds `x` to the compensated sum (`sum`, `compensation`) with Neumaier's variant of Kahan's
/// algorithm: the rounding error of every addition is kept in `compensation`, whatever the order of
/// magnitude of the terms. The value of the sum is `sum + compensation`.
@inline(__always)
func neumaierAdd(_ sum: inout Double, _ compensation: inout Double, _ x: Double) {
    let t = sum + x
    if abs(sum) >= abs(x) {
        compensation += (sum - t) + x
    } else {
        compensation += (x - t) + sum
    }
    sum = t
}
