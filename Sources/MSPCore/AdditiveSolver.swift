// AdditiveSolver: the feasible plan minimising a sum of per-(unit, level) costs, by dynamic
// programming over a discretised budget (a multiple-choice knapsack).

/// Exact solver for additive costs.
///
/// The budget above the lowest reachable average is discretised into cells of width
/// delta = tolerance / units when that fits a work limit, else as fine as the limit allows (at most
/// 2^21 cells). Each cell keeps its cheapest partial plan and that plan's exact budget; the answer
/// is the cheapest final cell whose exact average meets the tolerance, so the plan always meets it.
/// It is optimal for the discretised budgets (see `msp_solve_additive` for the rare miss).
public enum AdditiveSolver {
    /// Most dynamic-programming steps (cells x levels x units) spent on one solve.
    static let workLimit = 1 << 27
    /// Most budget cells.
    static let maxCells = 1 << 21

    /// Solves for per-unit costs.
    /// - Parameters:
    ///   - problem: sizes, bounds and budget.
    ///   - costs: `problem.unitCount` rows of `problem.levels.count` finite costs, row-major.
    /// - Returns: the per-unit plan and its total cost.
    /// - Throws: `MSPError.invalidArgument` for a wrong count or a non-finite cost;
    ///   `MSPError.infeasible`; `MSPError.outOfMemory`.
    public static func solve(_ problem: Problem, unitCosts costs: [Double]) throws -> (plan: [Int], cost: Double) {
        let units = problem.unitCount, levels = problem.levels.count
        guard costs.count == units * levels else {
            throw MSPError.invalidArgument("costs has \(costs.count) values, expected \(units) x \(levels)")
        }
        if let bad = costs.firstIndex(where: { !$0.isFinite }) {
            throw MSPError.invalidArgument("costs[\(bad / levels)][\(bad % levels)] (\(costs[bad])) is not finite")
        }
        let total = Double(problem.totalSize)
        let bounds = problem.unitBounds
        // Budget of unit u at its i-th allowed level above its lowest level, as a fraction of all
        // parameters, and that level's cost.
        let extras = (0..<units).map { u in
            bounds[u].map { k in
                Double(problem.unitSizes[u])
                    * (problem.levels.sparsity(k) - problem.levels.sparsity(bounds[u].lowerBound)) / total
            }
        }
        let unitCosts = (0..<units).map { u in bounds[u].map { costs[u * levels + $0] } }
        let base = problem.range.lowerBound
        let span = extras.reduce(0.0) { $0 + ($1.last ?? 0) }
        let widest = bounds.map(\.count).max() ?? 1
        // Clamped in Double: a tiny tolerance would overflow the conversion to Int.
        let byTolerance =
            problem.tolerance > 0
            ? Int(min(Double(maxCells), (span * Double(units) / problem.tolerance).rounded(.up))) : maxCells
        let cells = max(1, min(byTolerance, maxCells, workLimit / max(1, units * widest)))
        // delta stays normal and steps stay within the grid even for sparsities a few ulps apart.
        let delta = max(span / Double(cells), .leastNormalMagnitude)
        let width = cells + units + 1
        let steps = extras.map { $0.map { Int(min(Double(cells), ($0 / delta).rounded())) } }

        var cost = [Double](repeating: .infinity, count: width)
        var exact = [Double](repeating: 0, count: width)
        var nextCost = cost, nextExact = exact
        cost[0] = 0
        var reach = 0  // highest cell reached so far
        return try withScratch(UInt8.self, units * width) { choice in
            for u in 0..<units {
                let top = min(width - 1, reach + (steps[u].last ?? 0))
                let newReach = top
                steps[u].withUnsafeBufferPointer { step in
                extras[u].withUnsafeBufferPointer { extra in
                unitCosts[u].withUnsafeBufferPointer { unitCost in
                cost.withUnsafeBufferPointer { cost in
                exact.withUnsafeBufferPointer { exact in
                nextCost.withUnsafeMutableBufferPointer { nextCost in
                nextExact.withUnsafeMutableBufferPointer { nextExact in
                    let row = choice + u * width
                    for c in 0...top { nextCost[c] = .infinity }
                    for c in 0...reach where cost[c] < .infinity {
                        for i in 0..<step.count {
                            let c2 = min(c + step[i], width - 1)
                            let candidate = cost[c] + unitCost[i]
                            if candidate < nextCost[c2] {
                                nextCost[c2] = candidate
                                nextExact[c2] = exact[c] + extra[i]
                                row[c2] = UInt8(i)
                            }
                        }
                    }
                }}}}}}}
                swap(&cost, &nextCost)
                swap(&exact, &nextExact)
                reach = newReach
            }
            var best = -1
            for c in 0...reach where cost[c] < .infinity && problem.meetsBudget(base + exact[c]) {
                if best < 0 || cost[c] < cost[best] { best = c }
            }
            guard best >= 0 else {
                let r = problem.range
                throw MSPError.infeasible(
                    "no plan meets target \(problem.target) ± \(problem.tolerance): plans within the bounds reach [\(r.lowerBound), \(r.upperBound)] but the levels are too coarse to land within the tolerance; widen it"
                )
            }
            var plan = [Int](repeating: 0, count: units)
            var c = best
            for u in stride(from: units - 1, through: 0, by: -1) {
                let i = Int(choice[u * width + c])
                plan[u] = bounds[u].lowerBound + i
                c -= steps[u][i]
            }
            return (plan, cost[best])
        }
    }

    /// Sums per-layer costs (`layerCount` x `levels.count`, row-major) into per-unit costs.
    public static func unitCosts(_ problem: Problem, layerCosts: [Double]) -> [Double] {
        let levels = problem.levels.count
        var costs = [Double](repeating: 0, count: problem.unitCount * levels)
        for l in 0..<problem.layerCount {
            let u = problem.unitOf[l]
            for k in 0..<levels { costs[u * levels + k] += layerCosts[l * levels + k] }
        }
        return costs
    }

    /// The feasible plan closest to `plan`: least parameter-weighted change of sparsity.
    /// - Throws: `MSPError.infeasible`; `MSPError.outOfMemory`.
    public static func nearestFeasible(_ problem: Problem, to plan: [Int]) throws -> [Int] {
        let levels = problem.levels
        var costs = [Double](repeating: 0, count: problem.unitCount * levels.count)
        for u in 0..<problem.unitCount {
            for k in 0..<levels.count {
                costs[u * levels.count + k] =
                    Double(problem.unitSizes[u]) * abs(levels.sparsity(k) - levels.sparsity(plan[u]))
            }
        }
        return try solve(problem, unitCosts: costs).plan
    }
}
