// LevelPlan: how each level of a level set prunes one layer, arranged so that a cost table
// classifies every weight once for all levels.

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
    ///   rows of more than `TopKPrune.maxCols` weights with unstructured row-scope levels (the
    ///   limit of `TopKPrune`, whose masks the levels reproduce).
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
        if scope == .row, !pruned.isEmpty, matrix.cols > TopKPrune.maxCols {
            throw MSPError.invalidArgument(
                "cols (\(matrix.cols)) must be at most \(TopKPrune.maxCols) for unstructured levels with MSP_SCOPE_ROW")
        }
    }

    /// Whether no level prunes anything.
    var prunesNothing: Bool { groupSizes.isEmpty && pruned.isEmpty }
}
