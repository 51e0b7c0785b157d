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
    /// zero) with the dead inputs zeroed. (Whole tiles go in 8 x 8 blocks transposed in
    /// registers, `Block8`; both copies were a quarter of a prune's time one element at a time.) -0 becomes +0: the sweep marks pruned weights -0, and no
    /// kept weight becomes -0 from +0 or a nonzero value (in round-to-nearest, a sum is -0 only
    /// when both terms are, and every update adds a product to a kept weight).
    /// - Throws: `MSPError.invalidArgument` naming the first non-finite weight in row-major order.
    func load(_ weights: UnsafeRawPointer, _ matrix: Matrix, into w: UnsafeMutablePointer<Float>, stride: Int) throws {
        func run<E: ScratchElement>(_: E.Type) throws {
            let source = weights.assumingMemoryBound(to: E.Bits.self), cols = self.cols, rows = matrix.rows
            let finite = try tiles(rows: rows, stride: stride) { t, count -> Bool in
                var finite = true
                // Whole tiles in blocks of 8 x 8, transposed in registers; the rest one by one.
                let vectorCols = count == OBSSweep.lanes ? cols - cols % 8 : 0, zero = Block8.Row(repeating: 0)
                var bad = SIMDMask<SIMD8<Int32>>(repeating: false)
                for c0 in Swift.stride(from: 0, to: vectorCols, by: 8) {
                    for h in Swift.stride(from: 0, to: OBSSweep.lanes, by: 8) {
                        var block = Block8 { E.widen8(source + ((t &+ h &+ $0) &* cols &+ c0)) }
                        block.transpose()
                        for k in 0..<8 {
                            let v = block[k] + zero
                            bad .|= (v - v) .!= zero
                            UnsafeMutableRawPointer(w + ((c0 &+ k) &* stride &+ t &+ h)).storeBytes(of: v, as: Block8.Row.self)
                        }
                    }
                }
                for c in vectorCols..<cols {
                    let dst = w + (c &* stride &+ t)
                    for l in 0..<count {
                        let v = E.widen(source[(t &+ l) &* cols &+ c]) + 0
                        dst[l] = v
                        finite = finite && v.isFinite
                    }
                    for l in count..<OBSSweep.lanes { dst[l] = 0 }
                }
                return finite && !any(bad)
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
        func run<E: ScratchElement>(_: E.Type) throws {
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
            let pruned = (-0.0 as Float).bitPattern, marked = SIMD8<UInt32>(repeating: pruned)
            let zero = Block8.Row(repeating: 0), one = SIMD8<Int32>(repeating: 1)
            _ = try tiles(rows: rows, stride: stride) { t, count in
                let vectorCols = count == OBSSweep.lanes ? cols - cols % 8 : 0
                for c0 in Swift.stride(from: 0, to: vectorCols, by: 8) {
                    for h in Swift.stride(from: 0, to: OBSSweep.lanes, by: 8) {
                        var block = Block8 { UnsafeRawPointer(w + ((c0 &+ $0) &* stride &+ t &+ h)).loadUnaligned(as: Block8.Row.self) }
                        block.transpose()
                        for l in 0..<8 {
                            let row = (t &+ h &+ l) &* cols &+ c0
                            E.narrow8(block[l] + zero, to: target + row)
                            if let keepMask {
                                let flags = one.replacing(with: 0, where: unsafeBitCast(block[l], to: SIMD8<UInt32>.self) .== marked)
                                UnsafeMutableRawPointer(keepMask + row).storeBytes(of: SIMD8<UInt8>(truncatingIfNeeded: flags), as: SIMD8<UInt8>.self)
                            }
                        }
                    }
                }
                for c in vectorCols..<cols {
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
