// OBSSolver+Buffers: the copies between the caller's row-major weights and keep mask and the
// sweep's transposed float32 scratch (column c of the layer is row c of the scratch).

extension OBSSolver {
    /// Runs `body(t, count)` for every tile of 16 rows of the scratch (first row t; its first
    /// `count` rows, 0...16, are real), tiles split across threads. A tile goes column by column,
    /// so that it reads and writes whole cache lines of both layouts.
    /// - Returns: every tile's result, in tile order.
    private func tiles<R>(rows: Int, stride: Int, _ body: (Int, Int) throws -> R) throws -> [R] {
        let lanes = OBSSweep.lanes
        return try Threads.map(stride / lanes, minimumPerThread: max(1, (1 << 12) / cols)) { range in
            try range.map { try body($0 &* lanes, min(lanes, max(0, rows &- $0 &* lanes))) }
        }.flatMap { $0 }
    }

    /// Copies the weights, widened to float32, into `w` (cols x stride, transposed; padding rows
    /// zero) with the dead inputs zeroed. -0 becomes +0: the sweep marks pruned weights -0, and no
    /// kept weight becomes -0 from +0 or a nonzero value (in round-to-nearest, a sum is -0 only
    /// when both terms are, and every update adds a product to a kept weight).
    /// - Throws: `MSPError.invalidArgument` naming the first non-finite weight in row-major order.
    func load(_ weights: UnsafeRawPointer, _ matrix: Matrix, into w: UnsafeMutablePointer<Float>, stride: Int) throws {
        func run<E: Element>(_: E.Type) throws {
            let source = weights.assumingMemoryBound(to: E.Bits.self), cols = self.cols, rows = matrix.rows
            let finite = try tiles(rows: rows, stride: stride) { t, count -> Bool in
                var finite = true
                for c in 0..<cols {
                    let dst = w + (c &* stride &+ t)
                    for l in 0..<count {
                        let v = E.widen(source[(t &+ l) &* cols &+ c]) + 0
                        dst[l] = v
                        finite = finite && v.isFinite
                    }
                    for l in count..<OBSSweep.lanes { dst[l] = 0 }
                }
                return finite
            }
            if finite.contains(false), let i = (0..<matrix.count).first(where: { !E.widen(source[$0]).isFinite }) {
                throw MSPError.invalidArgument("weights[\(i / cols)][\(i % cols)] (\(E.widen(source[i]))) is not finite")
            }
            for c in deadColumns { (w + c &* stride).update(repeating: 0, count: stride) }
        }
        switch matrix.type {
        case .f32: try run(F32.self)
        case .f16: try run(F16.self)
        case .bf16: try run(BF16.self)
        }
    }

    /// Writes the pruned weights from `w` (transposed) back in the element type, after checking
    /// that every one is finite there, and the keep mask: a weight is pruned exactly when it is -0
    /// in `w` (written as +0).
    /// - Throws: `MSPError.invalidArgument` naming the first weight, in row-major order, that is not
    ///   finite in the element type; nothing is written then.
    func store(
        _ w: UnsafePointer<Float>, _ matrix: Matrix, stride: Int, into weights: UnsafeMutableRawPointer,
        keepMask: UnsafeMutablePointer<UInt8>?
    ) throws {
        func run<E: NarrowElement>(_: E.Type) throws {
            let target = weights.assumingMemoryBound(to: E.Bits.self), cols = self.cols, rows = matrix.rows
            // The largest magnitude bits per column range (NaN patterns are the largest): a
            // maximum vectorises, a test per element does not.
            let largest = try Threads.map(cols, minimumPerThread: max(1, (1 << 16) / stride)) { range -> UInt32 in
                var largest: UInt32 = 0
                for c in range {
                    let column = w + c &* stride
                    for r in 0..<rows { largest = max(largest, column[r].bitPattern & 0x7FFF_FFFF) }
                }
                return largest
            }.max() ?? 0
            if largest >= E.overflow.bitPattern,
                let i = (0..<matrix.count).first(where: { !(abs(w[($0 % cols) &* stride &+ $0 / cols]) < E.overflow) })
            {
                throw MSPError.invalidArgument(
                    "the pruned weights[\(i / cols)][\(i % cols)] (\(w[(i % cols) * stride + i / cols])) overflow "
                        + "\(E.name): the Gram matrix is too ill-conditioned for these weights; pass a larger damp")
            }
            let pruned = (-0.0 as Float).bitPattern
            _ = try tiles(rows: rows, stride: stride) { t, count in
                for c in 0..<cols {
                    let src = w + (c &* stride &+ t)
                    for l in 0..<count { target[(t &+ l) &* cols &+ c] = E.narrow(src[l] + 0) }
                    if let keepMask {
                        for l in 0..<count { keepMask[(t &+ l) &* cols &+ c] = src[l].bitPattern == pruned ? 0 : 1 }
                    }
                }
            }
        }
        switch matrix.type {
        case .f32: try run(F32.self)
        case .f16: try run(F16.self)
        case .bf16: try run(BF16.self)
        }
    }
}

/// A storage format that float32 values round to, for writing results.
protocol NarrowElement: Element {
    /// The stored bits of `x` rounded to nearest, ties to even (finite `x` below `overflow`).
    static func narrow(_ x: Float) -> Bits
    /// The smallest float32 magnitude that does not round to a finite value.
    static var overflow: Float { get }
    /// The format's name in messages.
    static var name: String { get }
}

extension F32: NarrowElement {
    @inline(__always) static func narrow(_ x: Float) -> UInt32 { x.bitPattern }
    static var overflow: Float { .infinity }
    static var name: String { "float32" }
}

extension F16: NarrowElement {
    @inline(__always) static func narrow(_ x: Float) -> UInt16 { Float16(x).bitPattern }
    /// 65520: halfway between 65504, the largest binary16, and the next step, 65536.
    static var overflow: Float { 65520 }
    static var name: String { "float16" }
}

extension BF16: NarrowElement {
    @inline(__always) static func narrow(_ x: Float) -> UInt16 {
        UInt16(truncatingIfNeeded: (x.bitPattern &+ 0x7FFF &+ ((x.bitPattern >> 16) & 1)) >> 16)
    }
    /// Halfway between the largest bfloat16 (0x7F7F) and the next step: ties go to the even 0x7F80,
    /// infinity.
    static var overflow: Float { Float(bitPattern: 0x7F7F_8000) }
    static var name: String { "bfloat16" }
}
