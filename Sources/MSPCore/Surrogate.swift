// Surrogate: an additive model of fitness over (unit, level) choices, fitted by ridge regression to
// the evaluated plans and shrunk toward proxy cost tables, whose exact optimum the search proposes.

#if canImport(Glibc)
    import Glibc
#endif

/// The fitted model fitness(plan) ~ c + sum_j a_j * proxy_j(plan) + sum_u w[u][plan_u].
///
/// Fit: the values are centred, each proxy column is centred and scaled to unit variance over the
/// evaluated plans (a proxy constant over them is left out), and c, the a_j and the corrections w
/// minimise the squared error plus `ridge` * sum w^2 (plus 1e-6 * N * sum a_j^2, which only settles
/// exactly collinear proxies). So without proxies each correction is pulled toward 0, and with
/// them toward the proxies' fitted combination, with the weight of `ridge` evaluations. The normal
/// equations are solved by `RidgeSystem` (directly, or by a bounded number of conjugate-gradient
/// iterations) in a fixed order, so the model depends only on the evaluated plans and values.
struct Surrogate {
    /// The model's additive costs per unit and level (`unitCount x levels.count`; cells outside a
    /// unit's bounds are 0): the table whose exact optimum is the model's best plan.
    let table: [Double]
    /// Standard deviation of each cell's perturbation for exploration: tau * sqrt(ridge / (ridge +
    /// n)), with n the evaluations of the cell and tau^2 the variance of the values per movable unit.
    let spread: [Double]

    /// Fits the model to evaluated plans.
    /// - Parameters:
    ///   - plans: per-unit plans within the bounds, `problem.unitCount` levels each, plan after plan.
    ///   - values: one fitness per plan; values that are not finite are left out.
    ///   - proxies: per-unit cost tables (`unitCount x levels.count` each).
    ///   - ridge: > 0.
    /// - Returns: the model, or nil with fewer than two finite values (or values whose model
    ///   overflows).
    static func fit(
        problem: Problem, plans: [UInt8], values: [Double], proxies: [[Double]], ridge: Double
    ) -> Surrogate? {
        let units = problem.unitCount, levels = problem.levels.count
        let bounds = problem.unitBounds
        var offsets = [Int](repeating: 0, count: units)
        var cells = 0
        for u in 0..<units {
            offsets[u] = cells - bounds[u].lowerBound
            cells += bounds[u].count
        }
        // The evaluated plans with finite values, as cell indices.
        let rows = values.indices.filter { values[$0].isFinite }
        var index: [Int] = []
        index.reserveCapacity(rows.count * units)
        for r in rows {
            for u in 0..<units { index.append(offsets[u] + Int(plans[r * units + u])) }
        }
        let n = rows.count
        guard n >= 2 else { return nil }
        // Values in units of the largest magnitude, so that no sum overflows.
        let scale = rows.reduce(0.0) { max($0, abs(values[$1])) }
        guard scale > 0 else { return nil }
        var y = rows.map { values[$0] / scale }
        let mean = y.reduce(0, +) / Double(n)
        for i in 0..<n { y[i] -= mean }
        // Proxy columns: centred, unit variance; constant ones left out.
        var columns: [[Double]] = []
        var scales: [Double] = []
        var used: [Int] = []
        for (j, proxy) in proxies.enumerated() {
            var column = rows.map { r in
                (0..<units).reduce(0.0) { $0 + proxy[$1 * levels + Int(plans[r * units + $1])] }
            }
            let m = column.reduce(0, +) / Double(n)
            let sd = (column.reduce(0.0) { $0 + ($1 - m) * ($1 - m) } / Double(n)).squareRoot()
            guard sd.isFinite, sd > 1e-12 * max(abs(m), .leastNormalMagnitude) else { continue }
            for i in 0..<n { column[i] = (column[i] - m) / sd }
            columns.append(column)
            scales.append(sd)
            used.append(j)
        }
        let system = RidgeSystem(
            rows: n, units: units, cells: cells, index: index, columns: columns, ridge: ridge,
            columnPenalty: 1e-6 * Double(n))
        let x = system.solve(y)
        // x = [c, a_1 .. a_J, w_1 .. w_cells]
        var table = [Double](repeating: 0, count: units * levels)
        for u in 0..<units {
            for k in bounds[u] {
                var cost = x[1 + columns.count + offsets[u] + k]
                for (c, j) in used.enumerated() { cost += x[1 + c] * proxies[j][u * levels + k] / scales[c] }
                table[u * levels + k] = cost * scale
            }
        }
        let movable = max(1, bounds.filter { $0.count > 1 }.count)
        let tau = (y.reduce(0.0) { $0 + $1 * $1 } / Double(n) / Double(movable)).squareRoot()
        var spread = [Double](repeating: 0, count: units * levels)
        for u in 0..<units {
            for k in bounds[u] {
                let count = system.counts[offsets[u] + k]
                spread[u * levels + k] = tau * (ridge / (ridge + count)).squareRoot() * scale
            }
        }
        guard table.allSatisfy(\.isFinite), spread.allSatisfy(\.isFinite) else { return nil }
        return Surrogate(table: table, spread: spread)
    }
}
