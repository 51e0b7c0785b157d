// CostTable: proxy costs of one layer at every level of a level set, from the masks the pruning
// kernels produce: the (diagonally weighted) energy of the pruned weights, and the output
// reconstruction error tr(dW H dW^T) given the layer's input Gram matrix.

import CMSPBLAS

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

// MARK: - Levels

/// How each level of a set prunes one layer, arranged for classifying every weight once.
struct LevelPlan {
    /// What level k does.
    enum Kind: Equatable {
        /// Prunes nothing: a dense N:M level, or an unstructured level with floor(s * group) == 0.
        case none
        /// N:M with n < m: prunes a weight whose rank in its group (slot `slot` of `groupSizes`) is >= n.
        case nm(slot: Int, n: Int)
        /// The `index`-th pruning unstructured level: prunes a weight whose first pruning
        /// unstructured level is <= index.
        case unstructured(index: Int)
    }

    /// Per level, in level order.
    private(set) var kinds: [Kind] = []
    /// The distinct group sizes m of the N:M levels that prune.
    private(set) var groupSizes: [Int] = []
    /// Per pruning unstructured level, the weights pruned per comparison group (> 0, nondecreasing
    /// because the level set's sparsities increase).
    private(set) var pruned: [Int] = []

    /// - Throws: `MSPError.invalidArgument` "level k (n:m): cols (C) is not a multiple of m", or for
    ///   rows of more than 2^32 weights with unstructured row-scope levels (the row sort's limit).
    init(_ levels: LevelSet, _ matrix: Matrix, scope: TopKScope) throws {
        let groupSize = scope == .row ? matrix.cols : matrix.count
        for (k, level) in levels.levels.enumerated() {
            if let nm = level.nm {
                guard matrix.cols % nm.m == 0 else {
                    throw MSPError.invalidArgument(
                        "level \(k) (\(nm.n):\(nm.m)): cols (\(matrix.cols)) is not a multiple of m")
                }
                guard nm.n < nm.m else {
                    kinds.append(.none)
                    continue
                }
                if let slot = groupSizes.firstIndex(of: nm.m) {
                    kinds.append(.nm(slot: slot, n: nm.n))
                } else {
                    kinds.append(.nm(slot: groupSizes.count, n: nm.n))
                    groupSizes.append(nm.m)
                }
            } else {
                let count = TopKPrune.prunedCount(sparsity: level.sparsity, of: groupSize)
                if count == 0 {
                    kinds.append(.none)
                } else {
                    kinds.append(.unstructured(index: pruned.count))
                    pruned.append(min(count, groupSize))
                }
            }
        }
        if scope == .row, !pruned.isEmpty, matrix.cols > 1 << 32 {
            throw MSPError.invalidArgument(
                "cols (\(matrix.cols)) must be at most 2^32 for unstructured levels with MSP_SCOPE_ROW")
        }
    }

    /// Whether no level prunes anything.
    var prunesNothing: Bool { groupSizes.isEmpty && pruned.isEmpty }
}

/// The unstructured levels' pruned sets over a whole layer: level j prunes element i (row-major
/// index) with key k exactly when k < thresholds[j], or k == thresholds[j] and i >= cuts[j].
struct LayerCuts {
    var thresholds: [UInt32] = []
    var cuts: [Int] = []
}

// MARK: - The kernel

/// Classification and cost accumulation for one layer in one storage format.
private struct Kernel<E: Element> {
    let data: UnsafePointer<E.Bits>
    let rows: Int, cols: Int
    let score: Scorer<E>
    let plan: LevelPlan
    let scope: TopKScope
    /// Set for layer scope with pruning unstructured levels.
    var cuts = LayerCuts()

    /// N:M groups whose scores are ranked together, transposed (as in `NMMask`).
    static var blockGroups: Int { 128 }

    init(
        _ weights: UnsafeRawPointer, _ matrix: Matrix, _ plan: LevelPlan, _ scope: TopKScope,
        _ colScale: UnsafeBufferPointer<Float>?
    ) {
        data = weights.assumingMemoryBound(to: E.Bits.self)
        rows = matrix.rows
        cols = matrix.cols
        score = Scorer<E>(.magnitude(colScale: colScale))
        self.plan = plan
        self.scope = scope
    }

    @inline(__always) func key(_ r: Int, _ c: Int) -> UInt32 { scoreKey(score(data[r * cols + c], c)) }

    // MARK: Energy

    /// Σ w²·d over the weights each level prunes (unscaled), per level.
    func energy(_ diag: UnsafeBufferPointer<Float>?, _ blockElements: Int) throws -> [Double] {
        if plan.prunesNothing { return [Double](repeating: 0, count: plan.kinds.count) }
        var kernel = self
        try kernel.findLayerCuts()
        // Bins: the ranks 0..<m of every N:M slot, then first-pruning unstructured levels 0...L.
        var offsets: [Int] = []
        var bins = 0
        for m in plan.groupSizes {
            offsets.append(bins)
            bins += m
        }
        let unstructuredOffset = bins
        bins += plan.pruned.count + 1
        // Fixed blocks of rows (at most 4096 of them): each gets its own partial sums.
        let blockRows = max(1, blockElements / cols, (rows + 4095) / 4096)
        let blocks = (rows + blockRows - 1) / blockRows
        let diagBase = diag?.baseAddress
        return try withScratch(Double.self, blocks * bins) { partial in
            _ = try Threads.map(blocks, minimumPerThread: max(1, 65536 / (blockRows * cols))) { range in
                try kernel.withRowScratch { s in
                    for b in range {
                        let sums = partial + b * bins
                        sums.initialize(repeating: 0, count: bins)
                        for r in (b * blockRows)..<min(rows, (b + 1) * blockRows) {
                            kernel.classify(row: r, s)
                            kernel.accumulateEnergy(
                                row: r, s, diag: diagBase, sums: sums, offsets: offsets,
                                unstructuredOffset: unstructuredOffset)
                        }
                    }
                }
            }
            var total = [Double](repeating: 0, count: bins)
            for b in 0..<blocks {
                for i in 0..<bins { total[i] += partial[b * bins + i] }
            }
            return plan.kinds.map { kind in
                switch kind {
                case .none:
                    return 0
                case .nm(let slot, let n):
                    let first = offsets[slot]
                    return total[(first + n)..<(first + plan.groupSizes[slot])].reduce(0, +)
                case .unstructured(let index):
                    return total[unstructuredOffset...(unstructuredOffset + index)].reduce(0, +)
                }
            }
        }
    }

    /// Adds w²·d of every weight of row `r` to its N:M rank bins and its unstructured bin.
    @inline(__always)
    func accumulateEnergy(
        row r: Int, _ s: RowScratch, diag: UnsafePointer<Float>?, sums: UnsafeMutablePointer<Double>,
        offsets: [Int], unstructuredOffset: Int
    ) {
        let row = data + r * cols
        let energy = s.energy
        if let diag {
            let d = diag + r * cols
            for c in 0..<cols {
                let w = Double(E.widen(row[c]))
                energy[c] = w * w * Double(d[c])
            }
        } else {
            for c in 0..<cols {
                let w = Double(E.widen(row[c]))
                energy[c] = w * w
            }
        }
        for (slot, offset) in offsets.enumerated() {
            let ranks = s.ranks + slot * cols
            let bins = sums + offset
            for c in 0..<cols { bins[Int(ranks[c])] += energy[c] }
        }
        if !plan.pruned.isEmpty {
            let bins = sums + unstructuredOffset
            for c in 0..<cols { bins[Int(s.firstLevel[c])] += energy[c] }
        }
    }

    // MARK: Reconstruction

    /// tr(dW H dWᵀ) per level.
    func reconstruction(_ gram: UnsafeBufferPointer<Float>, _ blockFloats: Int) throws -> [Double] {
        var costs = [Double](repeating: 0, count: plan.kinds.count)
        let active = plan.kinds.indices.filter { plan.kinds[$0] != .none }
        guard !active.isEmpty, let h = gram.baseAddress else { return costs }
        var kernel = self
        try kernel.findLayerCuts()
        let stacked = active.count
        // Rows per block: all active levels' copies of a block of rows stacked into one product.
        let blockRows = max(1, min(rows, blockFloats / (stacked * cols)))
        let maxRows = stacked * blockRows
        var totals = [Double](repeating: 0, count: stacked)
        let kinds = active.map { plan.kinds[$0] }
        try withScratch(Float.self, maxRows * cols) { delta in
            try withScratch(Float.self, maxRows * cols) { product in
                try withScratch(Double.self, maxRows) { dots in
                    for r0 in stride(from: 0, to: rows, by: blockRows) {
                        let n = min(blockRows, rows - r0)
                        // dW: row (t * n + i) is row r0 + i pruned at active level t.
                        _ = try Threads.map(n, minimumPerThread: max(1, 16384 / cols)) { range in
                            try kernel.withRowScratch { s in
                                for i in range {
                                    kernel.classify(row: r0 + i, s)
                                    kernel.writePruned(row: r0 + i, s, kinds: kinds, into: delta + i * cols, stride: n * cols)
                                }
                            }
                        }
                        let m = Int32(stacked * n), k = Int32(cols)
                        cblas_sgemm(
                            CblasRowMajor, CblasNoTrans, CblasNoTrans, m, k, k, 1, delta, k, h, k, 0, product, k)
                        _ = try Threads.map(stacked * n, minimumPerThread: max(1, 16384 / cols)) { range in
                            for t in range {
                                let a = delta + t * cols, b = product + t * cols
                                var sum = 0.0
                                for c in 0..<cols { sum += Double(a[c]) * Double(b[c]) }
                                dots[t] = sum
                            }
                        }
                        for t in 0..<stacked {
                            var sum = 0.0
                            for i in 0..<n { sum += dots[t * n + i] }
                            totals[t] += sum
                        }
                    }
                }
            }
        }
        for (t, k) in active.enumerated() { costs[k] = totals[t] }
        return costs
    }

    /// Writes row `r`'s pruned part at every active level: level t's row goes to `out + t * stride`.
    @inline(__always)
    func writePruned(
        row r: Int, _ s: RowScratch, kinds: [LevelPlan.Kind], into out: UnsafeMutablePointer<Float>, stride: Int
    ) {
        let row = data + r * cols
        let values = s.values
        for c in 0..<cols { values[c] = E.widen(row[c]) }
        for (t, kind) in kinds.enumerated() {
            let dst = out + t * stride
            switch kind {
            case .none:
                for c in 0..<cols { dst[c] = 0 }
            case .nm(let slot, let n):
                let ranks = s.ranks + slot * cols
                for c in 0..<cols { dst[c] = Int(ranks[c]) >= n ? values[c] : 0 }
            case .unstructured(let index):
                let first = s.firstLevel
                for c in 0..<cols { dst[c] = Int(first[c]) <= index ? values[c] : 0 }
            }
        }
    }

    // MARK: Classification

    /// Per-thread work memory for classifying one row.
    struct RowScratch {
        /// cols scores.
        let scores: UnsafeMutablePointer<Float>
        /// cols widened weights.
        let values: UnsafeMutablePointer<Float>
        /// cols energies w²·d.
        let energy: UnsafeMutablePointer<Double>
        /// groupSizes.count x cols: rank of each weight in its N:M group, per slot.
        let ranks: UnsafeMutablePointer<UInt8>
        /// cols: the first unstructured level that prunes the weight (pruned.count if none).
        let firstLevel: UnsafeMutablePointer<UInt16>
        /// cols score keys (layer scope).
        let keys: UnsafeMutablePointer<UInt32>
        /// 2 x cols packed (key, column) pairs for the row-scope radix sort.
        let sort: UnsafeMutablePointer<UInt64>
        /// 4 x 256 digit counts of the radix sort.
        let counts: UnsafeMutablePointer<Int>
        /// maxM x blockGroups transposed scores and ranks of a block of N:M groups.
        let blockScores: UnsafeMutablePointer<Float>
        let blockRanks: UnsafeMutablePointer<UInt8>
    }

    /// Runs `body` with one `RowScratch`, carved from a single scratch allocation.
    func withRowScratch<R>(_ body: (RowScratch) throws -> R) throws -> R {
        let sorting = scope == .row && !plan.pruned.isEmpty
        let maxM = plan.groupSizes.max() ?? 0
        // (count, stride) of each part, in RowScratch order.
        let parts = [
            (cols, 4), (cols, 4), (cols, 8), (plan.groupSizes.count * cols, 1), (cols, 2), (cols, 4), (sorting ? 2 * cols : 0, 8),
            (4 * 256, 8), (maxM * Self.blockGroups, 4), (maxM * Self.blockGroups, 1),
        ]
        var offsets: [Int] = []
        var bytes = 0
        for (count, stride) in parts {
            let (size, o1) = count.multipliedReportingOverflow(by: stride)
            let (padded, o2) = size.addingReportingOverflow(7)
            let (end, o3) = bytes.addingReportingOverflow(padded & ~7)
            guard !o1, !o2, !o3 else {
                throw MSPError.outOfMemory("cannot allocate the scratch of a row of \(cols) weights")
            }
            offsets.append(bytes)
            bytes = end
        }
        return try withScratch(UInt64.self, bytes / 8) { words in
            let raw = UnsafeMutableRawPointer(words)
            return try body(
                RowScratch(
                    scores: (raw + offsets[0]).bindMemory(to: Float.self, capacity: cols),
                    values: (raw + offsets[1]).bindMemory(to: Float.self, capacity: cols),
                    energy: (raw + offsets[2]).bindMemory(to: Double.self, capacity: cols),
                    ranks: (raw + offsets[3]).bindMemory(to: UInt8.self, capacity: parts[3].0),
                    firstLevel: (raw + offsets[4]).bindMemory(to: UInt16.self, capacity: cols),
                    keys: (raw + offsets[5]).bindMemory(to: UInt32.self, capacity: cols),
                    sort: (raw + offsets[6]).bindMemory(to: UInt64.self, capacity: parts[6].0),
                    counts: (raw + offsets[7]).bindMemory(to: Int.self, capacity: 4 * 256),
                    blockScores: (raw + offsets[8]).bindMemory(to: Float.self, capacity: parts[8].0),
                    blockRanks: (raw + offsets[9]).bindMemory(to: UInt8.self, capacity: parts[9].0)))
        }
    }

    /// Fills the scratch's `ranks` and `firstLevel` for row `r`.
    func classify(row r: Int, _ s: RowScratch) {
        let row = data + r * cols
        for c in 0..<cols { s.scores[c] = score(row[c], c) }
        for (slot, m) in plan.groupSizes.enumerated() {
            rankGroups(m: m, s.scores, into: s.ranks + slot * cols, s.blockScores, s.blockRanks)
        }
        guard !plan.pruned.isEmpty else { return }
        switch scope {
        case .row: firstLevelsInRow(s)
        case .layer: firstLevelsInLayer(row: r, s)
        }
    }

    /// The rank of every weight in its group of `m` (how many members the kernel orders before it:
    /// higher scores, and equal scores at lower positions), computed as `NMMask` does.
    @inline(__always)
    func rankGroups(
        m: Int, _ scores: UnsafeMutablePointer<Float>, into out: UnsafeMutablePointer<UInt8>,
        _ t: UnsafeMutablePointer<Float>, _ rank: UnsafeMutablePointer<UInt8>
    ) {
        let block = Self.blockGroups
        let groups = cols / m
        for g0 in stride(from: 0, to: groups, by: block) {
            let len = min(block, groups - g0)
            let base = scores + g0 * m
            for q in 0..<m {
                let tq = t + q * block
                for g in 0..<len { tq[g] = base[g * m + q] }
            }
            for p in 0..<m {
                let tp = t + p * block, rp = rank + p * block
                for g in 0..<len { rp[g] = 0 }
                for q in 0..<p {
                    let tq = t + q * block
                    for g in 0..<len { rp[g] &+= tq[g] >= tp[g] ? 1 : 0 }
                }
                for q in (p + 1)..<m {
                    let tq = t + q * block
                    for g in 0..<len { rp[g] &+= tq[g] > tp[g] ? 1 : 0 }
                }
            }
            let o = out + g0 * m
            for g in 0..<len {
                for p in 0..<m { o[g * m + p] = rank[p * block + g] }
            }
        }
    }

    /// Row scope: sorts the row into pruning order (key ascending, then column descending: the
    /// kernel prunes the first floor(s * cols)) with a stable LSD radix sort over the keys, fed in
    /// descending column order; the weight at position j is first pruned by the first level that
    /// prunes more than j.
    func firstLevelsInRow(_ s: RowScratch) {
        let n = cols
        var src = s.sort
        var dst = src + n
        for j in 0..<n {
            let c = n - 1 - j
            src[j] = UInt64(scoreKey(s.scores[c])) << 32 | UInt64(truncatingIfNeeded: c)
        }
        let counts = s.counts
        counts.initialize(repeating: 0, count: 4 * 256)
        for j in 0..<n {
            let v = src[j] >> 32
            counts[Int(v & 255)] += 1
            counts[256 + Int((v >> 8) & 255)] += 1
            counts[512 + Int((v >> 16) & 255)] += 1
            counts[768 + Int(v >> 24)] += 1
        }
        for digit in 0..<4 {
            let h = counts + digit * 256
            let shift = UInt64(32 + 8 * digit)
            if h[Int((src[0] >> shift) & 255)] == n { continue }  // one value: order unchanged
            var sum = 0
            for d in 0..<256 {
                let count = h[d]
                h[d] = sum
                sum += count
            }
            for j in 0..<n {
                let v = src[j]
                let d = Int((v >> shift) & 255)
                dst[h[d]] = v
                h[d] += 1
            }
            swap(&src, &dst)
        }
        plan.pruned.withUnsafeBufferPointer { pruned in
            var level = 0
            for j in 0..<n {
                while level < pruned.count && pruned[level] <= j { level += 1 }
                s.firstLevel[Int(truncatingIfNeeded: src[j] & 0xFFFF_FFFF)] = UInt16(level)
            }
        }
    }

    /// Layer scope: the first level whose threshold prunes each weight. The pruned sets are nested,
    /// so that is the number of levels minus the number of levels that prune it: counted branch-free
    /// over the row for a few levels, else found by binary search.
    func firstLevelsInLayer(row r: Int, _ s: RowScratch) {
        let keys = s.keys, first = s.firstLevel
        for c in 0..<cols { keys[c] = scoreKey(s.scores[c]) }
        let start = r * cols
        cuts.thresholds.withUnsafeBufferPointer { thresholds in
            cuts.cuts.withUnsafeBufferPointer { cuts in
                let levels = thresholds.count
                if levels <= 32 {
                    for c in 0..<cols { first[c] = UInt16(levels) }
                    for j in 0..<levels {
                        let threshold = thresholds[j], cut = cuts[j] - start  // the cut's column in this row
                        for c in 0..<cols {
                            let below: UInt16 = keys[c] < threshold ? 1 : 0
                            let tie: UInt16 = (keys[c] == threshold ? 1 : 0) & (c >= cut ? 1 : 0)
                            first[c] &-= below | tie
                        }
                    }
                    return
                }
                for c in 0..<cols {
                    let key = keys[c]
                    @inline(__always) func prunes(_ j: Int) -> Bool {
                        key < thresholds[j] || (key == thresholds[j] && start + c >= cuts[j])
                    }
                    var lo = 0, hi = levels
                    while lo < hi {
                        let mid = (lo + hi) / 2
                        if prunes(mid) { hi = mid } else { lo = mid + 1 }
                    }
                    first[c] = UInt16(lo)
                }
            }
        }
    }

    /// The keys of row `r`'s scores.
    @inline(__always)
    func rowKeys(_ r: Int, into keys: UnsafeMutablePointer<UInt32>) {
        let row = data + r * cols
        for c in 0..<cols { keys[c] = scoreKey(score(row[c], c)) }
    }

    // MARK: Layer-scope thresholds

    /// For layer scope, finds every unstructured level's threshold key and tie cut: one radix
    /// selection per level (as `TopKPrune` does), all sharing three histogram passes over the layer.
    mutating func findLayerCuts() throws {
        guard scope == .layer, !plan.pruned.isEmpty else { return }
        let count = rows * cols
        let levels = plan.pruned.count
        // Level j keeps the first count - pruned[j] weights of the order (score desc, index asc).
        var selects = plan.pruned.map { RadixSelect(rank: count - $0) }
        let selecting = selects.indices.filter { selects[$0].rank > 0 }
        let chunks = Threads.chunks(rows, minimumPerThread: max(1, 65536 / cols))
        var tiesPerChunk = [Int](repeating: 0, count: chunks.count * levels)  // [chunk][level]
        var decided = 0
        for bits in [11, 11, 10] where !selecting.isEmpty {
            let bins = 1 << bits
            let table = PrefixTable(decided: decided, prefixes: selecting.map { selects[$0].prefix })
            let slots = selects.map { table.slot($0.prefix) }
            // The last slot collects the keys that match no prefix.
            let width = (table.count + 1) * bins
            let shift = UInt32(32 - decided - bits), mask = UInt32(bins - 1)
            try withScratch(Int.self, chunks.count * width) { histograms in
                _ = try Threads.map(chunks) { t, range in
                    let h = histograms + t * width
                    h.initialize(repeating: 0, count: width)
                    try withScratch(UInt32.self, cols) { keys in
                        for r in range {
                            rowKeys(r, into: keys)
                            for c in 0..<cols {
                                let k = keys[c]
                                h[table.slot(k) * bins + Int((k >> shift) & mask)] += 1
                            }
                        }
                    }
                }
                try withScratch(Int.self, width) { total in
                    total.initialize(repeating: 0, count: width)
                    for t in 0..<chunks.count {
                        for b in 0..<width { total[b] += histograms[t * width + b] }
                    }
                    for j in selecting {
                        let base = slots[j] * bins
                        selects[j].refine({ total[base + $0] }, bits: bits)
                    }
                }
                if decided + bits == 32 {
                    for j in selecting {
                        let digit = Int(selects[j].threshold & mask)
                        for t in 0..<chunks.count {
                            tiesPerChunk[t * levels + j] = histograms[t * width + slots[j] * bins + digit]
                        }
                    }
                }
            }
            decided += bits
        }
        // Ties at a threshold are kept in index order: the first pruned one is the level's cut. Each
        // chunk holding cuts is scanned once, for all of them.
        let thresholds = selects.map { $0.rank > 0 ? $0.threshold : UInt32.max }  // rank 0 prunes all
        var jobs = [[(level: Int, skip: Int)]](repeating: [], count: chunks.count)
        for j in selecting {
            var before = 0
            for t in chunks.indices {
                let ties = tiesPerChunk[t * levels + j]
                if before + ties > selects[j].ties {
                    jobs[t].append((j, selects[j].ties - before))
                    break
                }
                before += ties
            }
        }
        let found = try Threads.map(chunks) { t, range -> [(level: Int, cut: Int)] in
            let work = jobs[t]
            guard !work.isEmpty else { return [] }
            let table = PrefixTable(decided: 32, prefixes: work.map { thresholds[$0.level] })
            let slots = work.map { table.slot(thresholds[$0.level]) }
            var seen = [Int](repeating: 0, count: table.count)
            var cuts: [(level: Int, cut: Int)] = []
            try withScratch(UInt32.self, cols) { keys in
                scan: for r in range {
                    rowKeys(r, into: keys)
                    for c in 0..<cols {
                        let slot = table.slot(keys[c])
                        guard slot < table.count else { continue }
                        for (q, job) in work.enumerated() where slots[q] == slot && job.skip == seen[slot] {
                            cuts.append((job.level, r * cols + c))
                        }
                        seen[slot] += 1
                        if cuts.count == work.count { break scan }
                    }
                }
            }
            return cuts
        }
        var cutOf = [Int](repeating: Int.max, count: levels)
        for (j, cut) in found.joined() { cutOf[j] = cut }
        cuts = LayerCuts(thresholds: thresholds, cuts: cutOf)
    }
}

/// The distinct prefixes of a multi-level radix selection after `decided` bits, and a lookup from
/// a key to the slot of the prefix it starts with.
private struct PrefixTable {
    /// Sorted distinct prefixes (the decided high bits in place, lower bits zero).
    let prefixes: [UInt32]
    /// Keeps the decided high bits.
    let highMask: UInt32
    /// Per value of a key's top 11 bits: the index of the only prefix starting with them, -1 for
    /// none, -2 for several. With `decided` = 32 the prefixes are whole keys.
    let top: [Int32]

    init(decided: Int, prefixes: [UInt32]) {
        self.prefixes = Array(Set(prefixes)).sorted()
        highMask = decided == 0 ? 0 : ~UInt32(0) << UInt32(32 - decided)
        var top = [Int32](repeating: -1, count: 2048)
        for (i, p) in self.prefixes.enumerated() {
            let t = Int(p >> 21)
            top[t] = decided == 0 ? 0 : (top[t] == -1 ? Int32(i) : -2)
        }
        if decided == 0 { top = [Int32](repeating: 0, count: 2048) }
        self.top = top
    }

    /// Number of prefixes (slots); `count` itself is the slot of keys that match none.
    var count: Int { prefixes.count }

    /// The slot of the prefix `key` starts with, or `count`.
    @inline(__always) func slot(_ key: UInt32) -> Int {
        let t = Int(top[Int(key >> 21)])
        let high = key & highMask
        if t >= 0 { return prefixes[t] == high ? t : count }
        if t == -1 { return count }
        var lo = 0, hi = prefixes.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if prefixes[mid] < high { lo = mid + 1 } else { hi = mid }
        }
        return lo < prefixes.count && prefixes[lo] == high ? lo : count
    }
}
