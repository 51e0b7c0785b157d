// OBSReference: SparseGPT's fasterprune written plainly in double for the tests (no lazy batching,
// no reversed factorisation), random SPD Gram matrices, and a comparison that follows the solver
// on near-ties.

import MSPCore

/// The published algorithm in double: H prepared (dead inputs, damping), U = the upper Cholesky
/// factor of H⁻¹ computed as the transpose of the lower Cholesky factor of an explicit inverse,
/// and a sweep that applies every pruned weight's update to all later columns at once.
struct OBSReference {
    let cols: Int
    /// U, row-major.
    let u: [Double]
    let dead: [Bool]

    /// Prepares `gram` (row-major, lower triangle read) as fasterprune does; nil when not positive
    /// definite after damping.
    init?(gram: [Float], cols n: Int, damp: Double) {
        var h = [Double](repeating: 0, count: n * n)
        for i in 0..<n { for j in 0...i { h[i * n + j] = Double(gram[i * n + j]); h[j * n + i] = h[i * n + j] } }
        dead = (0..<n).map { h[$0 * n + $0] == 0 }
        for j in 0..<n where dead[j] { h[j * n + j] = 1 }
        let shift = damp * (0..<n).reduce(0) { $0 + h[$1 * n + $1] } / Double(n)
        for j in 0..<n { h[j * n + j] += shift }
        guard let l = Self.lowerCholesky(h, n) else { return nil }
        // H⁻¹ = L⁻ᵀ L⁻¹, column by column from L y = e_k, Lᵀ x = y.
        var inverse = [Double](repeating: 0, count: n * n)
        for k in 0..<n {
            var y = [Double](repeating: 0, count: n)
            for i in 0..<n { y[i] = ((i == k ? 1 : 0) - (0..<i).reduce(0) { $0 + l[i * n + $1] * y[$1] }) / l[i * n + i] }
            for i in stride(from: n - 1, through: 0, by: -1) {
                y[i] = (y[i] - ((i + 1)..<n).reduce(0) { $0 + l[$1 * n + i] * y[$1] }) / l[i * n + i]
            }
            for i in 0..<n { inverse[i * n + k] = y[i] }
        }
        guard let m = Self.lowerCholesky(inverse, n) else { return nil }
        cols = n
        u = (0..<n * n).map { m[($0 % n) * n + $0 / n] }
    }

    /// The lower Cholesky factor of a symmetric n x n matrix, or nil when not positive definite.
    static func lowerCholesky(_ a: [Double], _ n: Int) -> [Double]? {
        var l = [Double](repeating: 0, count: n * n)
        for i in 0..<n {
            for j in 0...i {
                let s = a[i * n + j] - (0..<j).reduce(0) { $0 + l[i * n + $1] * l[j * n + $1] }
                if i == j {
                    guard s > 0 else { return nil }
                    l[i * n + i] = s.squareRoot()
                } else {
                    l[i * n + j] = s / l[j * n + j]
                }
            }
        }
        return l
    }

    /// A decision point of the sweep: the scores of one comparison group (row-major) and the
    /// reference's pruned flags; returns the flags to go on with.
    typealias Chooser = (_ scores: [Double], _ pruned: [Bool], _ positions: [Int]) -> [Bool]

    /// Prunes `weights` (rows x cols, row-major) to an unstructured `sparsity` (n = m = 0) or N:M.
    /// - Returns: the pruned weights and the keep mask.
    func prune(
        _ weights: [Float], rows: Int, sparsity: Double = 0, n: Int = 0, m: Int = 0, block: Int,
        choose: Chooser = { _, pruned, _ in pruned }
    ) -> (weights: [Double], keep: [Bool]) {
        let c = cols
        var w = weights.map { Double($0) }
        for r in 0..<rows { for j in 0..<c where dead[j] { w[r * c + j] = 0 } }
        var keep = [Bool](repeating: true, count: rows * c)
        let step = m > 0 ? max(m, block - block % m) : block
        for i1 in stride(from: 0, to: c, by: step) {
            let i2 = min(i1 + step, c), width = i2 - i1
            var pruned = [Bool](repeating: false, count: rows * c)
            if m == 0 {
                var scores: [Double] = [], positions: [Int] = []
                for r in 0..<rows {
                    for j in i1..<i2 {
                        scores.append(score(w[r * c + j], j))
                        positions.append(r * c + j)
                    }
                }
                let count = Int((sparsity * Double(rows * width) + 0.5).rounded(.down))
                let flags = choose(scores, Self.prunedFlags(scores, keep: scores.count - count), positions)
                for (k, p) in positions.enumerated() { pruned[p] = flags[k] }
            }
            for j in i1..<i2 {
                if m > 0 && (j - i1) % m == 0 {
                    for r in 0..<rows {
                        let positions = (j..<(j + m)).map { r * c + $0 }
                        let scores = positions.map { score(w[$0], $0 % c) }
                        let flags = choose(scores, Self.prunedFlags(scores, keep: n), positions)
                        for (k, p) in positions.enumerated() { pruned[p] = flags[k] }
                    }
                }
                for r in 0..<rows where pruned[r * c + j] {
                    let e = w[r * c + j] / u[j * c + j]
                    w[r * c + j] = 0
                    keep[r * c + j] = false
                    for k in (j + 1)..<c { w[r * c + k] -= e * u[j * c + k] }
                }
            }
        }
        return (w, keep)
    }

    /// SparseGPT's score of weight `x` in column j.
    func score(_ x: Double, _ j: Int) -> Double { x * x / (u[j * cols + j] * u[j * cols + j]) }

    /// Pruned flags of one group: all but the first `keep` by score descending, index ascending.
    static func prunedFlags(_ scores: [Double], keep: Int) -> [Bool] {
        let order = scores.indices.sorted { scores[$0] != scores[$1] ? scores[$0] > scores[$1] : $0 < $1 }
        var flags = [Bool](repeating: true, count: scores.count)
        for i in order.prefix(keep) { flags[i] = false }
        return flags
    }

    /// A chooser that adopts the solver's decisions (`solverKeep`, rows x cols) where they differ
    /// from the reference's only between near-tied scores (within `tolerance` of the group's
    /// largest score), counting such decisions in `followed`, and records a failure otherwise.
    static func following(
        _ solverKeep: [Bool], tolerance: Double, followed: UnsafeMutablePointer<Int>,
        mismatches: UnsafeMutablePointer<Int>
    ) -> Chooser {
        { scores, pruned, positions in
            let theirs = positions.map { !solverKeep[$0] }
            guard theirs != pruned else { return pruned }
            let largest = scores.max() ?? 0
            // Every weight pruned by one side and kept by the other must be near the same score.
            let swapped = scores.indices.filter { theirs[$0] != pruned[$0] }
            let low = swapped.map { scores[$0] }.min() ?? 0, high = swapped.map { scores[$0] }.max() ?? 0
            if high - low <= tolerance * largest && theirs.filter({ $0 }).count == pruned.filter({ $0 }).count {
                followed.pointee += 1
            } else {
                mismatches.pointee += 1
            }
            return theirs
        }
    }
}

/// A random symmetric positive semidefinite Gram matrix XᵀX of `tokens` Gaussian-ish tokens whose
/// features have spread scales; `dead` features are all zero.
func randomGram(cols: Int, tokens: Int, seed: UInt64, dead: Set<Int> = []) -> [Float] {
    var rng = SplitMix64(seed: seed)
    let scales = (0..<cols).map { dead.contains($0) ? 0 : Double.random(in: 0.2...3, using: &rng) }
    let x = (0..<(tokens * cols)).map { i in
        scales[i % cols] * ((0..<4).reduce(0.0) { a, _ in a + Double.random(in: -1...1, using: &rng) })
    }
    var h = [Float](repeating: 0, count: cols * cols)
    for i in 0..<cols {
        for j in 0..<cols { h[i * cols + j] = Float((0..<tokens).reduce(0.0) { $0 + x[$1 * cols + i] * x[$1 * cols + j] }) }
    }
    return h
}
