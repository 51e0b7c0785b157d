// CostTable: proxy costs of one layer at every level of a level set, from the masks the pruning
// kernels produce: the (diagonally weighted) energy of the pruned weights, and the output
// reconstruction error tr(dW H dW^T) given the layer's input Gram matrix.

/// Additive proxy costs of pruning one layer at each level of a level set (for the exact solver).
///
/// Level k prunes exactly what the pruning kernels would prune from the same weights, all scoring
/// |w| * colScale[c]: `NMMask.prune` for an N:M level with n < m, nothing for a dense level (n == m,
/// or an unstructured level whose floor(sparsity * group) is 0), and `TopKPrune.prune` with the
/// given scope for an unstructured level.
///
/// How: one pass over the rows classifies every weight for all levels at once. For each distinct
/// group size m of the N:M levels a weight gets its rank in its group (the kernel's rank: how many
/// members are ordered before it), so level n:m prunes it exactly when rank >= n. For the
/// unstructured levels (whose pruned sets are nested, as their sparsities increase) a weight gets
/// the first level that prunes it, from a per-row radix sort (row scope) or from per-level
/// thresholds found by one shared radix selection over the layer (layer scope). Energies are then
/// per-rank sums; reconstruction errors come from blocks of pruned rows (dW) times H with BLAS.
///
/// Sums run over fixed blocks of rows and are combined in block order, so the results do not
/// depend on the thread count. Neither function writes anything but its result.
///
/// This file holds the API and the argument checks; `LevelPlan` says what each level prunes, and
/// the kernel's parts live in `CostTable+Classification.swift` (per row), `+LayerCuts` (layer-scope
/// thresholds), `+Energy` and `+Reconstruction`.
public enum CostTable {
    /// Rows of the layer each energy partial sum covers: about `energyBlockElements` weights.
    static let energyBlockElements = 1 << 16
    /// At most this many float32 values in each of the reconstruction's two work blocks (dW and
    /// dW * H): 64 MiB each, and no more than the layer has weights (but at least 1 MiB). Larger
    /// blocks amortise BLAS's packing of H.
    static func reconstructionBlockFloats(_ matrix: Matrix) -> Int {
        min(1 << 24, max(matrix.count, 1 << 18))
    }

    /// Pruned energy at every level: `costs[k] = scale * Σ_{i pruned at level k} w[i]² * (diag?[i] ?? 1)`,
    /// accumulated in double.
    /// - Parameters:
    ///   - weights: `matrix.count` elements of `matrix.type`, row-major; read only. Must be finite.
    ///   - matrix: the shape and element type.
    ///   - levels: the level set; every N:M level's m must divide `matrix.cols`.
    ///   - scope: the comparison group of the unstructured levels.
    ///   - colScale: `nil` for magnitude scores, else `matrix.cols` finite non-negative factors
    ///     (score |w[r][c]| * colScale[c]).
    ///   - diag: `nil`, or `matrix.count` finite per-weight factors (e.g. the Fisher diagonal).
    ///   - scale: finite, >= 0 (e.g. Tr(F) / size).
    /// - Returns: one cost per level, in level order.
    /// - Throws: `MSPError.invalidArgument` for an N:M level whose m does not divide `cols`, a bad
    ///   `scale`, `colScale` or `diag`, or a NaN or infinite weight or a NaN score (the message names
    ///   the argument and position); `MSPError.outOfMemory`.
    public static func energy(
        weights: UnsafeRawPointer, _ matrix: Matrix, levels: LevelSet, scope: TopKScope,
        colScale: UnsafeBufferPointer<Float>?, diag: UnsafeBufferPointer<Float>?, scale: Double
    ) throws -> [Double] {
        try energy(
            weights: weights, matrix, levels: levels, scope: scope, colScale: colScale, diag: diag,
            scale: scale, blockElements: energyBlockElements)
    }

    /// `energy` with the size of its fixed summation blocks as a parameter (tests make it small).
    static func energy(
        weights: UnsafeRawPointer, _ matrix: Matrix, levels: LevelSet, scope: TopKScope,
        colScale: UnsafeBufferPointer<Float>?, diag: UnsafeBufferPointer<Float>?, scale: Double,
        blockElements: Int
    ) throws -> [Double] {
        let plan = try LevelPlan(levels, matrix, scope: scope)
        guard scale.isFinite, scale >= 0 else {
            throw MSPError.invalidArgument("scale (\(scale)) must be finite and >= 0")
        }
        try validateColScale(colScale, cols: matrix.cols)
        if let diag {
            guard diag.count == matrix.count else {
                throw MSPError.invalidArgument("diag has \(diag.count) values, rows * cols is \(matrix.count)")
            }
            try validateFinite(diag, rows: matrix.rows, cols: matrix.cols, name: "diag")
        }
        try validateWeights(weights, matrix, colScale)
        let sums: [Double]
        switch matrix.type {
        case .f32: sums = try Kernel<F32>(weights, matrix, plan, scope, colScale).energy(diag, blockElements)
        case .f16: sums = try Kernel<F16>(weights, matrix, plan, scope, colScale).energy(diag, blockElements)
        case .bf16: sums = try Kernel<BF16>(weights, matrix, plan, scope, colScale).energy(diag, blockElements)
        }
        return sums.map { scale * $0 }
    }

    /// Output reconstruction error at every level: `costs[k] = tr(dW H dWᵀ) = Σ_r dw_r H dw_rᵀ`,
    /// where `dW = W - W_k` holds the weights level k prunes (zeros elsewhere) and `H` the Gram
    /// matrix of the layer's inputs. `dW * H` is computed by `cblas_sgemm` in float32 on blocks of
    /// rows (all levels' blocks stacked into one product); each row's dot product with `dw_r` is
    /// accumulated in double. Memory: two float32 blocks of at most min(64 MiB, max(4 * rows * cols
    /// bytes, 1 MiB)) each, plus a few rows per thread; never a copy of the layer per level.
    /// - Parameters:
    ///   - weights, matrix, levels, scope, colScale: as for `energy`.
    ///   - gram: `cols * cols` finite floats, row-major (H is used as given; it should be symmetric).
    /// - Returns: one cost per level, in level order.
    /// - Throws: as `energy`, plus `MSPError.invalidArgument` for a non-finite `gram` entry or `cols`
    ///   beyond BLAS's 32-bit sizes.
    public static func reconstruction(
        weights: UnsafeRawPointer, _ matrix: Matrix, levels: LevelSet, scope: TopKScope,
        colScale: UnsafeBufferPointer<Float>?, gram: UnsafeBufferPointer<Float>
    ) throws -> [Double] {
        try reconstruction(
            weights: weights, matrix, levels: levels, scope: scope, colScale: colScale, gram: gram,
            blockFloats: reconstructionBlockFloats(matrix))
    }

    /// `reconstruction` with its work-block size as a parameter (tests make it small).
    static func reconstruction(
        weights: UnsafeRawPointer, _ matrix: Matrix, levels: LevelSet, scope: TopKScope,
        colScale: UnsafeBufferPointer<Float>?, gram: UnsafeBufferPointer<Float>, blockFloats: Int
    ) throws -> [Double] {
        let plan = try LevelPlan(levels, matrix, scope: scope)
        guard matrix.cols <= Int(Int32.max) else {
            throw MSPError.invalidArgument("cols (\(matrix.cols)) is too large for BLAS (at most \(Int32.max))")
        }
        try validateColScale(colScale, cols: matrix.cols)
        let (squared, overflow) = matrix.cols.multipliedReportingOverflow(by: matrix.cols)
        guard !overflow, gram.count == squared else {
            throw MSPError.invalidArgument("gram has \(gram.count) values, cols * cols is \(matrix.cols) * \(matrix.cols)")
        }
        try validateFinite(gram, rows: matrix.cols, cols: matrix.cols, name: "gram")
        try validateWeights(weights, matrix, colScale)
        switch matrix.type {
        case .f32: return try Kernel<F32>(weights, matrix, plan, scope, colScale).reconstruction(gram, blockFloats)
        case .f16: return try Kernel<F16>(weights, matrix, plan, scope, colScale).reconstruction(gram, blockFloats)
        case .bf16: return try Kernel<BF16>(weights, matrix, plan, scope, colScale).reconstruction(gram, blockFloats)
        }
    }
}

// MARK: - Validation

/// Checks a `colScale` argument's length and values.
private func validateColScale(_ colScale: UnsafeBufferPointer<Float>?, cols: Int) throws {
    if let colScale, colScale.count != cols {
        throw MSPError.invalidArgument("col_scale has \(colScale.count) values, cols is \(cols)")
    }
    try validateColScale(colScale)
}

/// Checks that a rows x cols float buffer is finite.
/// - Throws: `MSPError.invalidArgument` "`name`[r][c] (v) is not finite" for the first offender in
///   row-major order.
private func validateFinite(_ data: UnsafeBufferPointer<Float>, rows: Int, cols: Int, name: String) throws {
    guard let base = data.baseAddress else { return }
    let firstBad = try Threads.map(rows, minimumPerThread: max(1, 65536 / cols)) { range -> (Int, Int)? in
        for r in range {
            let row = base + r * cols
            var bad = false
            for c in 0..<cols { bad = bad || !row[c].isFinite }
            if bad { return (0..<cols).first { !row[$0].isFinite }.map { (r, $0) } }
        }
        return nil
    }.lazy.compactMap { $0 }.first
    if let (r, c) = firstBad {
        throw MSPError.invalidArgument("\(name)[\(r)][\(c)] (\(base[r * cols + c])) is not finite")
    }
}

/// Checks weights as the pruning kernels do (no NaN weight or score), and that they are finite: a
/// pruned infinite weight has no finite cost.
private func validateWeights(
    _ weights: UnsafeRawPointer, _ matrix: Matrix, _ colScale: UnsafeBufferPointer<Float>?
) throws {
    try validateScores(weights, matrix, .magnitude(colScale: colScale), name: "weights")
    switch matrix.type {
    case .f32: try validateFiniteWeights(F32.self, weights, matrix)
    case .f16: try validateFiniteWeights(F16.self, weights, matrix)
    case .bf16: try validateFiniteWeights(BF16.self, weights, matrix)
    }
}

private func validateFiniteWeights<E: Element>(_: E.Type, _ weights: UnsafeRawPointer, _ matrix: Matrix) throws {
    let cols = matrix.cols
    let base = weights.assumingMemoryBound(to: E.Bits.self)
    let firstBad = try Threads.map(matrix.rows, minimumPerThread: max(1, 65536 / cols)) { range -> (Int, Int)? in
        for r in range {
            let row = base + r * cols
            var bad = false
            for c in 0..<cols { bad = bad || !E.widen(row[c]).isFinite }
            if bad { return (0..<cols).first { !E.widen(row[$0]).isFinite }.map { (r, $0) } }
        }
        return nil
    }.lazy.compactMap { $0 }.first
    if let (r, c) = firstBad {
        throw MSPError.invalidArgument(
            "weights[\(r)][\(c)] (\(E.widen(base[r * cols + c]))) is not finite; cost tables need finite weights")
    }
}
