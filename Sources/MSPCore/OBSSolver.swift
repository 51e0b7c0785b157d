// OBSSolver: SparseGPT (Frantar & Alistarh, 2023), optimal-brain-surgeon pruning with lazy block
// updates, on one layer's input Gram matrix that is factorised once and then prunes any number of
// levels and weight matrices.

import CMSPBLAS

#if canImport(Glibc)
    import Glibc
#endif

/// SparseGPT's solver for one Gram matrix `H = Σ_t x_t x_tᵀ` of a layer's inputs.
///
/// `init` prepares `H` as the published `fasterprune` does and factorises it once: an input whose
/// diagonal is 0 is dead (its `H_jj` becomes 1, its weights are zeroed before every sweep), then
/// `damp · mean(diag H)` is added to the diagonal, and `U`, the upper Cholesky factor of `H⁻¹`
/// (`H⁻¹ = Uᵀ U`), is computed in double: `H` is reversed (`P H P`, P the exchange matrix),
/// factorised as `L Lᵀ` (LAPACK `dpotrf`), `L` inverted (`dtrtri`), and `U = P L⁻¹ P`, which is
/// that factor exactly (half the work of the published inverse-then-factorise). `H` is first
/// scaled by a power of four so that its diagonal is near 1, which changes no result (the sweep
/// is invariant under scaling `H`, and power-of-two scaling is exact) but keeps `U` within
/// float32's range. `U` is stored in float32.
///
/// `prune` runs the sweep (see `OBSSweep`) on a float32 copy of the weights. The factor is
/// immutable after `init`, so `prune` may run on one solver from several threads at once.
public final class OBSSolver: @unchecked Sendable {
    /// Input features (the Gram matrix is cols x cols).
    public let cols: Int
    /// The dampening fraction of mean(diag H) that was added to the diagonal.
    public let damp: Double
    /// The dead inputs (diagonal 0), ascending.
    public let deadColumns: [Int]
    /// U: cols x cols float32, row-major; the entries below the diagonal are not used.
    let factor: UnsafeMutablePointer<Float>
    /// U_jj, and U_jj² rounded to float32 (the denominator of the pruning scores).
    let diagonal: [Float], diagonalSquares: [Float]

    /// Prepares and factorises a Gram matrix.
    /// - Parameters:
    ///   - gram: `cols * cols` floats, row-major; only the lower triangle (j <= i) is read (it must
    ///     be finite), the matrix is taken as symmetric.
    ///   - cols: in `1...Int32.max`.
    ///   - damp: finite and >= 0 (SparseGPT's default is 0.01).
    /// - Throws: `MSPError.invalidArgument` for a bad size or damp, a non-finite entry (naming it),
    ///   or a matrix that is not positive definite after damping, or whose factor does not fit
    ///   float32 (the message suggests a larger damp); `MSPError.outOfMemory`.
    public init(gram: UnsafePointer<Float>, cols: Int, damp: Double) throws {
        guard cols > 0, cols <= Int(Int32.max), !(cols * cols).multipliedReportingOverflow(by: 8).overflow else {
            throw MSPError.invalidArgument("cols (\(cols)) must be in [1, \(Int32.max)] with cols * cols doubles addressable")
        }
        guard damp.isFinite, damp >= 0 else {
            throw MSPError.invalidArgument("damp (\(damp)) must be finite and >= 0")
        }
        let n = cols
        try Self.validateLowerTriangle(gram, n)
        var dead: [Int] = []
        var diagonal = (0..<n).map { Double(gram[$0 &* n &+ $0]) }
        for j in 0..<n where diagonal[j] == 0 {
            dead.append(j)
            diagonal[j] = 1
        }
        let shift = damp * (diagonal.reduce(0, +) / Double(n))
        guard shift.isFinite else {
            throw MSPError.invalidArgument("damp * mean(diag H) (\(damp) * \(diagonal.reduce(0, +) / Double(n))) is not finite")
        }
        let largest = diagonal.lazy.map { abs($0 + shift) }.max() ?? 1
        // A power of four (its square root is exact) that brings the largest diagonal into [1, 4).
        let exponent = largest > 0 ? largest.exponent & ~1 : 0
        let scale = Double(sign: .plus, exponent: -exponent, significand: 1)
        guard let raw = malloc(n * n * MemoryLayout<Float>.stride) else {
            throw MSPError.outOfMemory("cannot allocate the \(n) x \(n) factor")
        }
        let factor = raw.bindMemory(to: Float.self, capacity: n * n)
        do {
            try withScratch(Double.self, n * n) { a in
                // A = P H P, lower triangle: A[i][j] = H[n-1-i][n-1-j] = H[n-1-j][n-1-i] (j <= i).
                _ = try Threads.map(n, minimumPerThread: max(1, 65536 / n)) { rows in
                    for i in rows {
                        let target = a + i &* n, source = gram + ((n &- 1) &* n &+ (n &- 1 &- i))
                        for j in 0..<i { target[j] = scale * Double(source[-(j &* n)]) }
                        target[i] = scale * (diagonal[n &- 1 &- i] + shift)
                    }
                }
                try Self.invertedFactor(a, n)
                // U[i][j] = L⁻¹[n-1-i][n-1-j] for j >= i.
                let bad = try Threads.map(n, minimumPerThread: max(1, 65536 / n)) { rows -> Bool in
                    var finite = true
                    for i in rows {
                        let target = factor + i &* n, source = a + ((n &- 1 &- i) &* n &+ (n &- 1))
                        for j in i..<n {
                            let v = Float(source[-j])
                            target[j] = v
                            finite = finite && v.isFinite
                        }
                    }
                    return !finite
                }.contains(true)
                guard !bad, (0..<n).allSatisfy({ (factor[$0 &* n &+ $0] * factor[$0 &* n &+ $0]).isNormal }) else {
                    throw MSPError.invalidArgument(
                        "the Gram matrix is too close to singular after damping (its factor leaves the float32 "
                            + "range): pass a larger damp (now \(damp))")
                }
            }
        } catch {
            free(raw)
            throw error
        }
        self.factor = factor
        self.cols = n
        self.damp = damp
        deadColumns = dead
        self.diagonal = (0..<n).map { factor[$0 &* n &+ $0] }
        diagonalSquares = self.diagonal.map { $0 * $0 }
    }

    deinit { free(factor) }

    /// Checks that the lower triangle (j <= i) of the n x n `gram` is finite.
    /// - Throws: `MSPError.invalidArgument` naming the first entry that is not, in row-major order.
    private static func validateLowerTriangle(_ gram: UnsafePointer<Float>, _ n: Int) throws {
        let firstBad = try Threads.map(n, minimumPerThread: max(1, 65536 / n)) { rows -> (Int, Int)? in
            for i in rows {
                let row = gram + i &* n
                var finite = true
                for j in 0...i { finite = finite && row[j].isFinite }
                if !finite { return (i, (0...i).first { !row[$0].isFinite } ?? 0) }
            }
            return nil
        }.lazy.compactMap { $0 }.first
        if let (i, j) = firstBad {
            throw MSPError.invalidArgument("gram[\(i)][\(j)] (\(gram[i * n + j])) is not finite")
        }
    }

    /// Replaces `a` (n x n row-major; its lower triangle holds a symmetric matrix A) by L⁻¹, where
    /// A = L Lᵀ, in its lower triangle. LAPACK is column-major: it sees the transpose, whose upper
    /// triangle is our lower one, and factorises it as Rᵀ R with R = Lᵀ.
    private static func invertedFactor(_ a: UnsafeMutablePointer<Double>, _ n: Int) throws {
        var size = Int32(n), info: Int32 = 0
        dpotrf_("U", &size, a, &size, &info)
        guard info == 0 else {
            throw MSPError.invalidArgument(
                info > 0
                    ? "the Gram matrix is not positive definite after damping (the factorisation failed at input "
                        + "\(n - Int(info))): pass a larger damp"
                    : "internal error: dpotrf rejected argument \(-info)")
        }
        dtrtri_("U", "N", &size, a, &size, &info)
        guard info == 0 else {
            throw MSPError.invalidArgument(
                "the Gram matrix is singular after damping (dtrtri info \(info)): pass a larger damp")
        }
    }

    /// Prunes `weights` in place to `level` with SparseGPT's sweep, and writes the keep mask.
    /// - Parameters:
    ///   - weights: `matrix.count` elements of `matrix.type`, row-major, finite; replaced by the
    ///     pruned and updated weights (16-bit weights are computed in float32 and rounded once).
    ///   - matrix: `cols` must equal the solver's; `rows <= Int32.max`.
    ///   - level: unstructured (`sparsity`) or N:M (`m` must divide `cols`; `n == m` prunes nothing).
    ///   - block: columns per block, > 0 (SparseGPT's default is 128); for an N:M level rounded
    ///     down to a multiple of m (at least m).
    ///   - keepMask: `nil`, or `matrix.count` bytes written with 1 = keep, 0 = pruned.
    /// - Throws: `MSPError.invalidArgument` for a shape, level or block that does not fit, a
    ///   non-finite weight, or pruned weights that are not finite in the element type (overflow);
    ///   `MSPError.outOfMemory`. Neither `weights` nor `keepMask` is written then.
    public func prune(
        weights: UnsafeMutableRawPointer, _ matrix: Matrix, level: Level, block: Int,
        keepMask: UnsafeMutablePointer<UInt8>?
    ) throws {
        guard matrix.cols == cols else {
            throw MSPError.invalidArgument("cols (\(matrix.cols)) differs from the Gram matrix's \(cols)")
        }
        guard matrix.rows <= Int(Int32.max) else {
            throw MSPError.invalidArgument("rows (\(matrix.rows)) is too large for BLAS (at most \(Int32.max))")
        }
        guard block > 0 else { throw MSPError.invalidArgument("block (\(block)) must be > 0") }
        let pattern = level.pattern
        if let nm = level.nm, cols % nm.m != 0 {
            throw MSPError.invalidArgument("cols (\(cols)) must be a multiple of m (\(nm.m))")
        }
        let rows = matrix.rows
        // Whole tiles, and no multiple of 256 floats (1 KiB): columns of power-of-two distance
        // would share cache sets.
        var stride = (rows + OBSSweep.lanes - 1) / OBSSweep.lanes * OBSSweep.lanes
        if stride % 256 == 0 { stride += OBSSweep.lanes }
        let (count, overflow) = stride.multipliedReportingOverflow(by: cols)
        guard !overflow, !count.multipliedReportingOverflow(by: 4).overflow else {
            throw MSPError.invalidArgument("rows * cols (\(rows) * \(cols)) is too large")
        }
        try withScratch(Float.self, count) { w in
            try load(weights, matrix, into: w, stride: stride)
            try diagonal.withUnsafeBufferPointer { diagonal in
                try diagonalSquares.withUnsafeBufferPointer { squares in
                    guard let diagonal = diagonal.baseAddress, let squares = squares.baseAddress else { return }
                    let sweep = OBSSweep(
                        w: w, rows: rows, stride: stride, cols: cols, u: factor, diagonal: diagonal, squares: squares)
                    if let pattern {
                        try sweep.run(pattern: pattern, block: max(pattern.m, block - block % pattern.m))
                    } else if level.nm == nil {
                        try sweep.run(sparsity: level.sparsity, block: min(block, cols))
                    }
                }
            }
            try store(w, matrix, stride: stride, into: weights, keepMask: keepMask)
        }
    }
}
