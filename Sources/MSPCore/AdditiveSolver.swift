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
                let last = steps[u].last ?? 0
                let top = min(width - 1, reach + last)
                steps[u].withUnsafeBufferPointer { step in
                extras[u].withUnsafeBufferPointer { extra in
                unitCosts[u].withUnsafeBufferPointer { unitCost in
                cost.withUnsafeBufferPointer { cost in
                exact.withUnsafeBufferPointer { exact in
                nextCost.withUnsafeMutableBufferPointer { nextCost in
                nextExact.withUnsafeMutableBufferPointer { nextExact in
                    let row = choice + u * width
                    for c in 0...top { nextCost[c] = .infinity }
                    if reach + last <= width - 1 {
                        relaxBlocked(
                            reach: reach, step: step, extra: extra, unitCost: unitCost, cost: cost, exact: exact,
                            nextCost: nextCost, nextExact: nextExact, row: row)
                    } else {
                        relaxClamped(
                            reach: reach, width: width, step: step, extra: extra, unitCost: unitCost, cost: cost,
                            exact: exact, nextCost: nextCost, nextExact: nextExact, row: row)
                    }
                }}}}}}}
                swap(&cost, &nextCost)
                swap(&exact, &nextExact)
                reach = top
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

    /// Cells relaxed per block of `relaxBlocked`: the block's sources and its shifted targets stay
    /// in cache across the levels.
    static let relaxBlock = 2048

    /// One unit's step of the dynamic programme: for every source cell c in 0...reach and level i,
    /// the candidate cost[c] + unitCost[i] replaces nextCost[c + step[i]] when strictly cheaper.
    ///
    /// The reference order is c ascending, then i ascending; the first candidate of least cost wins
    /// a target cell. This loop runs, block of sources by block, the levels in order of descending
    /// step (ascending index among equal steps), each over the whole block. For a fixed target
    /// that visits its candidates (c = target - step[i]) in exactly the reference order, so the
    /// result is the same, while the inner loop runs over contiguous cells and vectorises.
    /// Needs reach + step.last within the arrays (no clamping).
    static func relaxBlocked(
        reach: Int, step: UnsafeBufferPointer<Int>, extra: UnsafeBufferPointer<Double>,
        unitCost: UnsafeBufferPointer<Double>, cost: UnsafeBufferPointer<Double>, exact: UnsafeBufferPointer<Double>,
        nextCost: UnsafeMutableBufferPointer<Double>, nextExact: UnsafeMutableBufferPointer<Double>,
        row: UnsafeMutablePointer<UInt8>
    ) {
        guard let costBase = cost.baseAddress, let exactBase = exact.baseAddress,
            let nextCostBase = nextCost.baseAddress, let nextExactBase = nextExact.baseAddress
        else { return }
        // Levels by descending step, ascending index among equal steps (steps never decrease with i).
        var order: [Int] = []
        order.reserveCapacity(step.count)
        var end = step.count
        while end > 0 {
            var start = end - 1
            while start > 0 && step[start - 1] == step[end - 1] { start -= 1 }
            order.append(contentsOf: start..<end)
            end = start
        }
        var block = 0
        while block <= reach {
            let count = min(relaxBlock, reach + 1 - block)
            for i in order {
                let target = block + step[i]
                relaxRun(
                    count: count, from: costBase + block, exactBase + block, adding: unitCost[i], extra[i],
                    into: nextCostBase + target, nextExactBase + target, row + target, choice: UInt8(truncatingIfNeeded: i))
            }
            block += count
        }
    }

    /// target[j] = min(target[j], source[j] + unitCost) over `count` cells, keeping the strictly
    /// cheaper candidate's exact budget and level index, four cells at a time without branches.
    @inline(__always)
    static func relaxRun(
        count: Int, from cost: UnsafePointer<Double>, _ exact: UnsafePointer<Double>, adding unitCost: Double,
        _ extra: Double, into nextCost: UnsafeMutablePointer<Double>, _ nextExact: UnsafeMutablePointer<Double>,
        _ row: UnsafeMutablePointer<UInt8>, choice: UInt8
    ) {
        typealias Lanes = SIMD4<Double>
        let unitCosts = Lanes(repeating: unitCost), extras = Lanes(repeating: extra)
        let choices = SIMD4<UInt8>(repeating: choice)
        var j = 0
        while j + 4 <= count {
            let candidate = UnsafeRawPointer(cost + j).loadUnaligned(as: Lanes.self) + unitCosts
            let old = UnsafeRawPointer(nextCost + j).loadUnaligned(as: Lanes.self)
            let take = candidate .< old
            UnsafeMutableRawPointer(nextCost + j).storeBytes(of: old.replacing(with: candidate, where: take), as: Lanes.self)
            let budget = UnsafeRawPointer(exact + j).loadUnaligned(as: Lanes.self) + extras
            let oldBudget = UnsafeRawPointer(nextExact + j).loadUnaligned(as: Lanes.self)
            UnsafeMutableRawPointer(nextExact + j).storeBytes(
                of: oldBudget.replacing(with: budget, where: take), as: Lanes.self)
            let wide = SIMD4<Int64>(repeating: 0).replacing(with: -1, where: take)
            let narrow = SIMD4<Int8>(truncatingIfNeeded: wide) .< 0
            let oldRow = UnsafeRawPointer(row + j).loadUnaligned(as: SIMD4<UInt8>.self)
            UnsafeMutableRawPointer(row + j).storeBytes(
                of: oldRow.replacing(with: choices, where: narrow), as: SIMD4<UInt8>.self)
            j += 4
        }
        while j < count {
            let candidate = cost[j] + unitCost
            if candidate < nextCost[j] {
                nextCost[j] = candidate
                nextExact[j] = exact[j] + extra
                row[j] = choice
            }
            j += 1
        }
    }

    /// The reference loop (c ascending, then i ascending) with targets clamped to the last cell.
    static func relaxClamped(
        reach: Int, width: Int, step: UnsafeBufferPointer<Int>, extra: UnsafeBufferPointer<Double>,
        unitCost: UnsafeBufferPointer<Double>, cost: UnsafeBufferPointer<Double>, exact: UnsafeBufferPointer<Double>,
        nextCost: UnsafeMutableBufferPointer<Double>, nextExact: UnsafeMutableBufferPointer<Double>,
        row: UnsafeMutablePointer<UInt8>
    ) {
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
