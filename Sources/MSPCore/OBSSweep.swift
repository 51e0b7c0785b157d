// OBSSweep: one level's column sweep of SparseGPT over a transposed float32 copy of a layer's
// weights, 16 rows per vector.

import CMSPBLAS

/// SparseGPT's sweep with lazy block updates (the published `fasterprune`), for one level.
///
/// Layout: the weights live transposed in scratch, column c of the layer being row c of `w`
/// (`stride` floats: the rows rounded up to whole tiles of 16, the padding zero), so that one
/// column of a tile of 16 rows is one vector. The columns are swept in blocks of `block` columns.
/// Within a block every tile goes column by column, in a contiguous copy of its block columns:
/// the column's pruned lanes (rows) get the error `e = w / U_cc` and become -0, and the later
/// columns of the block are updated at once, `w_j -= e · U_cj` for all 16 rows (kept lanes carry
/// e = 0; one fused multiply-add, rounded once). After a block, the columns after it get its
/// errors lazily, `W[:, i2:] -= E · U[i1:i2, i2:]`, by `cblas_sgemm` on fixed panels of
/// `panelRows` rows. Rows are independent within a block: panels are split across threads (when
/// OpenBLAS is single-threaded, see `threaded`), and every panel's work is the same whatever the
/// thread count, so results do not depend on it.
///
/// Which weights a level prunes:
///
/// - Unstructured: when the sweep reaches a block, the `floor(sparsity · rows · width + 0.5)`
///   weights of the whole block (all rows, `width` its columns) with the smallest score
///   `w² / U_cc²` (float32, on the weights updated by every earlier block) are pruned; ties keep
///   the lower row-major index within the block. Found by a radix selection of the scores' bits.
/// - N:M: when the sweep reaches a group of m columns, in every row the n with the highest score
///   on the row's current weights are kept (ties: the lower column).
struct OBSSweep {
    /// Rows per vector (a tile).
    static let lanes = 16
    /// Rows per panel: one lazy-update product and one unit of thread work.
    static let panelRows = 256
    typealias Lanes = SIMD16<Float>
    typealias Mask = SIMDMask<SIMD16<Int32>>

    /// The weights transposed: cols x stride floats, updated in place.
    let w: UnsafeMutablePointer<Float>
    /// Real rows of the layer.
    let rows: Int
    /// Floats per column of `w`: `rows` rounded up to a multiple of `lanes` (see `OBSSolver.prune`).
    let stride: Int
    /// Columns of the layer.
    let cols: Int
    /// U, the upper Cholesky factor of H⁻¹, cols x cols row-major.
    let u: UnsafePointer<Float>
    /// U_cc.
    let diagonal: UnsafePointer<Float>
    /// U_cc² in float32.
    let squares: UnsafePointer<Float>

    /// Whether the sweep splits its work across msp's threads. Only when OpenBLAS runs single-
    /// threaded: a multithreaded OpenBLAS parallelises each product itself, and its threads spin
    /// for a while after every call, taking the cores from msp's threads (measured: a third more
    /// CPU time for the same work); the work then stays on the calling thread.
    static var threaded: Bool { openblas_get_num_threads() == 1 }

    /// Splits `count` items into thread chunks, or one chunk (the calling thread) when not `threaded`.
    private static func chunks(_ count: Int) -> [Range<Int>] {
        threaded ? Threads.chunks(count) : [0..<count]
    }

    /// The thread chunks of panels.
    private var panels: [Range<Int>] { Self.chunks((rows + Self.panelRows - 1) / Self.panelRows) }

    /// Sweeps an N:M level; `block` is a multiple of `pattern.m`, as `cols` is.
    func run(pattern: NMPattern, block: Int) throws {
        let n = SIMD16<Int32>(repeating: Int32(pattern.n))
        try blocks(block) { i1, i2, err in
            try sweepPanels(i1, i2, err, group: pattern.m) { tile, _, k, ranks in
                let g = k - k % pattern.m
                if g == k { groupRanks(tile + k, squares + (i1 &+ k), m: pattern.m, into: ranks) }
                return ranks[k &- g] .>= n
            }
        }
    }

    /// Sweeps an unstructured level.
    func run(sparsity: Double, block: Int) throws {
        try withScratch(UInt32.self, min(block, cols) &* stride) { keys in
            try withScratch(Int32.self, stride) { lastTie in
                try blocks(block) { i1, i2, err in
                    let width = i2 &- i1, count = rows &* width
                    let pruned = Int((sparsity * Double(count) + 0.5).rounded(.down))
                    guard pruned > 0 else { return }
                    let bound = SIMD16<UInt32>(repeating: try select(keys, i1: i1, width: width, keep: count &- pruned, lastTie: lastTie))
                    try sweepPanels(i1, i2, err) { _, t, k, _ in
                        let key = UnsafeRawPointer(keys + (k &* stride &+ t)).loadUnaligned(as: SIMD16<UInt32>.self)
                        let last = UnsafeRawPointer(lastTie + t).loadUnaligned(as: SIMD16<Int32>.self)
                        return (key .< bound) .| ((key .== bound) .& (SIMD16<Int32>(repeating: Int32(k)) .> last))
                    }
                }
            }
        }
    }

    /// Runs `body(i1, i2, err)` for every block of columns [i1, i2) in order, with `err` a
    /// (i2 - i1) x stride scratch for the block's errors.
    private func blocks(_ block: Int, _ body: (Int, Int, UnsafeMutablePointer<Float>) throws -> Void) throws {
        try withScratch(Float.self, min(block, cols) &* stride) { err in
            for i1 in Swift.stride(from: 0, to: cols, by: block) {
                try body(i1, min(i1 &+ block, cols), err)
            }
        }
    }

    /// Sweeps block [i1, i2) of every tile, panels split across threads, and applies each panel's
    /// lazy update to the columns after the block. `pruned(tile, t, k, ranks)` gives the pruned
    /// lanes of block column k of the tile whose first row is t, `tile` holding the tile's block
    /// columns as swept so far; `ranks` is scratch for m vectors that the N:M rule fills at a
    /// group's first column (`group` = m: see `sweepTile`).
    @inline(__always)
    private func sweepPanels(
        _ i1: Int, _ i2: Int, _ err: UnsafeMutablePointer<Float>, group: Int = 0,
        _ pruned: (UnsafeMutablePointer<Lanes>, Int, Int, UnsafeMutablePointer<SIMD16<Int32>>) -> Mask
    ) throws {
        let width = i2 &- i1, panelRows = Self.panelRows
        _ = try Threads.map(panels) { _, panels in
            try withScratch(SIMD16<Int32>.self, NMPattern.maxM) { ranks in
                try withScratch(Lanes.self, width) { tile in
                    for p in panels {
                        let first = p &* panelRows, last = min(stride, first &+ panelRows)
                        for t in Swift.stride(from: first, to: last, by: Self.lanes) {
                            sweepTile(t, i1, width, err, tile, group: group) { k in pruned(tile, t, k, ranks) }
                        }
                        let panel = min(rows, last) &- first
                        if i2 < cols && panel > 0 {
                            cblas_sgemm(
                                CblasRowMajor, CblasTrans, CblasNoTrans, Int32(cols &- i2), Int32(panel), Int32(width), -1,
                                u + (i1 &* cols &+ i2), Int32(cols), err + first, Int32(stride), 1,
                                w + (i2 &* stride &+ first), Int32(stride))
                        }
                    }
                }
            }
        }
    }

    /// Sweeps the tile whose first row is `t` through block columns [i1, i1 + width), in `tile`
    /// (width vectors, contiguous): for each column, `pruned(k)` gives its pruned lanes, which get
    /// their errors, become -0 (the mark of a pruned weight: no kept weight is ever -0, see
    /// `OBSSolver.load`) and update the block's later columns.
    ///
    /// Columns go in pairs where the second's `pruned` reads no column after it (every column
    /// unless `group` > 0 and it starts a group): the second column gets the first's update, then
    /// both update the later columns in one pass (half the loads and stores), each element
    /// receiving the same two fused multiply-adds in the same order as one column at a time.
    @inline(__always)
    private func sweepTile(
        _ t: Int, _ i1: Int, _ width: Int, _ err: UnsafeMutablePointer<Float>, _ tile: UnsafeMutablePointer<Lanes>,
        group: Int, _ pruned: (Int) -> Mask
    ) {
        let source = UnsafeMutableRawPointer(w + (i1 &* stride &+ t)), rowBytes = stride &* 4
        let errors = UnsafeMutableRawPointer(err + t)
        for k in 0..<width { tile[k] = source.loadUnaligned(fromByteOffset: k &* rowBytes, as: Lanes.self) }
        let zero = Lanes(repeating: 0), negativeZero = Lanes(repeating: -0.0)
        /// Prunes column k's `mask` lanes: its errors are stored and returned negated (0 where kept).
        @inline(__always) func prune(_ k: Int, _ mask: Mask) -> Lanes {
            let x = tile[k]
            let e = (x / Lanes(repeating: diagonal[i1 &+ k])).replacing(with: zero, where: .!mask)
            tile[k] = x.replacing(with: negativeZero, where: mask)
            errors.storeBytes(of: e, toByteOffset: k &* rowBytes, as: Lanes.self)
            return -e
        }
        var k = 0
        while k < width {
            let mask = pruned(k)
            let e = prune(k, mask), first = u + ((i1 &+ k) &* cols &+ i1)
            let k1 = k &+ 1
            guard k1 < width, group == 0 || k1 % group != 0 else {
                if any(mask) { for j in k1..<width { tile[j] = tile[j].addingProduct(e, Lanes(repeating: first[j])) } }
                k = k1
                continue
            }
            if any(mask) { tile[k1] = tile[k1].addingProduct(e, Lanes(repeating: first[k1])) }
            let mask1 = pruned(k1)
            let e1 = prune(k1, mask1), second = u + ((i1 &+ k1) &* cols &+ i1)
            switch (any(mask), any(mask1)) {
            case (true, true):
                for j in (k1 &+ 1)..<width {
                    tile[j] = tile[j].addingProduct(e, Lanes(repeating: first[j])).addingProduct(e1, Lanes(repeating: second[j]))
                }
            case (true, false):
                for j in (k1 &+ 1)..<width { tile[j] = tile[j].addingProduct(e, Lanes(repeating: first[j])) }
            case (false, true):
                for j in (k1 &+ 1)..<width { tile[j] = tile[j].addingProduct(e1, Lanes(repeating: second[j])) }
            case (false, false):
                break
            }
            k = k1 &+ 1
        }
        for k in 0..<width { source.storeBytes(of: tile[k], toByteOffset: k &* rowBytes, as: Lanes.self) }
    }

    /// Ranks one group of m columns (`column` points at its first, `squares` at its first U_cc²)
    /// in every lane: `ranks[k]` = how many members are ordered before member k by score
    /// `w² / U_cc²` descending, then column ascending.
    @inline(__always)
    private func groupRanks(
        _ column: UnsafeMutablePointer<Lanes>, _ squares: UnsafePointer<Float>, m: Int,
        into ranks: UnsafeMutablePointer<SIMD16<Int32>>
    ) {
        withUnsafeTemporaryAllocation(of: Lanes.self, capacity: NMPattern.maxM) { s in
            for k in 0..<m { s[k] = (column[k] * column[k]) / Lanes(repeating: squares[k]) }
            let one = SIMD16<Int32>(repeating: 1), zero = SIMD16<Int32>(repeating: 0)
            for k in 0..<m {
                var rank = zero
                for k2 in 0..<k { rank &+= one.replacing(with: 0, where: s[k2] .< s[k]) }
                for k2 in (k &+ 1)..<m { rank &+= zero.replacing(with: 1, where: s[k2] .> s[k]) }
                ranks[k] = rank
            }
        }
    }

    /// Computes the scores' keys of block [i1, i1 + width) and selects the `keep` kept weights:
    /// returns the threshold key (kept: keys above it, and the first ties in row-major order) and
    /// fills `lastTie[r]` with the last column (relative to i1) of row r whose tie is kept (-1:
    /// none). `keep` is in [0, rows * width).
    private func select(
        _ keys: UnsafeMutablePointer<UInt32>, i1: Int, width: Int, keep: Int, lastTie: UnsafeMutablePointer<Int32>
    ) throws -> UInt32 {
        let columns = Self.chunks(width)
        _ = try Threads.map(columns) { _, range in
            for k in range {
                let column = UnsafeRawPointer(w + (i1 &+ k) &* stride), key = UnsafeMutableRawPointer(keys + k &* stride)
                let square = Lanes(repeating: squares[i1 &+ k])
                for t in Swift.stride(from: 0, to: stride, by: Self.lanes) {
                    let x = column.loadUnaligned(fromByteOffset: t &* 4, as: Lanes.self)
                    key.storeBytes(of: unsafeBitCast((x * x) / square, to: SIMD16<UInt32>.self), toByteOffset: t &* 4, as: SIMD16<UInt32>.self)
                }
            }
        }
        // Keeping none: every key is pruned, including any equal to the largest.
        guard keep > 0 else {
            lastTie.update(repeating: -1, count: stride)
            return UInt32.max
        }
        var select = RadixSelect(rank: keep)
        var equal = 0
        for bits in [11, 11, 10] {
            let current = select
            let histograms = try Threads.map(columns) { _, range in
                var histogram = [Int](repeating: 0, count: 1 << bits)
                histogram.withUnsafeMutableBufferPointer { h in
                    for k in range {
                        let key = keys + k &* stride
                        for r in 0..<rows where current.matches(key[r]) { h[current.digit(key[r], bits: bits)] &+= 1 }
                    }
                }
                return histogram
            }
            select.refine({ d in histograms.reduce(0) { $0 + $1[d] } }, bits: bits)
            equal = histograms.reduce(0) { $0 + $1[Int(select.threshold & 0x3FF)] }
        }
        let threshold = select.threshold
        if select.ties == 0 || select.ties == equal {
            lastTie.update(repeating: select.ties == 0 ? -1 : Int32(width), count: stride)
            return threshold
        }
        // Some ties kept: the first ones in row-major order.
        var left = select.ties
        for r in 0..<stride {
            lastTie[r] = -1
            for k in 0..<width where left > 0 && keys[k &* stride &+ r] == threshold && r < rows {
                lastTie[r] = Int32(k)
                left -= 1
            }
        }
        return threshold
    }
}
