// AdditiveSolver: the feasible plan minimising a sum of per-(unit, level) costs, by dynamic
// programming over a discretised budget (a multiple-choice knapsack).

import CMSPHeader

/// Exact solver for additive costs.
///
/// The budget above the lowest reachable average is discretised into cells of width
/// delta = tolerance / units when that fits a work limit, else as fine as the limit allows (at most
/// `maxCells` cells). Each cell keeps its cheapest partial plan and that plan's exact budget; the answer
/// is the cheapest final cell whose exact average meets the tolerance, so the plan always meets it.
/// It is optimal for the discretised budgets (see `msp_solve_additive` for the rare miss).
public enum AdditiveSolver {
    /// Most dynamic-programming steps (cells x levels x units) spent on one solve, `MSP_SOLVE_MAX_STEPS`.
    static let workLimit = Int(MSP_SOLVE_MAX_STEPS)
    /// Most budget cells, `MSP_SOLVE_MAX_CELLS`.
    static let maxCells = Int(MSP_SOLVE_MAX_CELLS)

    /// Cells relaxed per block of `Table.relaxBlocked`: the block's sources and its shifted targets
    /// stay in cache across the levels.
    static let relaxBlock = 2048

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
        let grid = Grid(problem, unitCosts: costs)
        return try withScratch(Double.self, 4 * grid.width) { rows in
            try withScratch(UInt8.self, units * grid.width) { choices in
                var table = Table(rows: rows, choices: choices, width: grid.width)
                for (u, options) in grid.options.enumerated() { table.add(options, unit: u) }
                guard let best = table.cheapestCell(meeting: problem) else {
                    let r = problem.range
                    throw MSPError.infeasible(
                        "no plan meets target \(problem.target) ± \(problem.tolerance): plans within the bounds reach [\(r.lowerBound), \(r.upperBound)] but the levels are too coarse to land within the tolerance; widen it"
                    )
                }
                return (table.plan(endingAt: best, grid), table.cost[best])
            }
        }
    }

    /// One unit's allowed levels, from its lowest allowed level up, on the budget grid.
    private struct Options {
        /// The unit's lowest allowed level (index 0 of the arrays below).
        let lowest: Int
        /// Budget cells each level adds over the lowest one (nondecreasing).
        let steps: [Int]
        /// The exact budget each level adds over the lowest one, as a fraction of all parameters.
        let extras: [Double]
        /// Each level's cost.
        let costs: [Double]
    }

    /// The budget above the lowest reachable average, discretised into cells of width tolerance /
    /// units when the work limit allows, else as fine as it allows, and every unit's levels on it.
    private struct Grid {
        /// Per unit.
        let options: [Options]
        /// Cells of the tables: the cells plus room for every unit's rounding, plus one.
        let width: Int

        init(_ problem: Problem, unitCosts costs: [Double]) {
            let units = problem.unitCount, levels = problem.levels.count
            let total = Double(problem.totalSize)
            let bounds = problem.unitBounds
            let extras = (0..<units).map { u in
                bounds[u].map { k in
                    Double(problem.unitSizes[u])
                        * (problem.levels.sparsity(k) - problem.levels.sparsity(bounds[u].lowerBound)) / total
                }
            }
            let span = extras.reduce(0.0) { $0 + ($1.last ?? 0) }
            let widest = bounds.map(\.count).max() ?? 1
            // Clamped in Double: a tiny tolerance would overflow the conversion to Int.
            let byTolerance =
                problem.tolerance > 0
                ? Int(min(Double(maxCells), (span * Double(units) / problem.tolerance).rounded(.up))) : maxCells
            let cells = max(1, min(byTolerance, maxCells, workLimit / max(1, units * widest)))
            // delta stays normal and steps stay within the grid even for sparsities a few ulps apart.
            let delta = max(span / Double(cells), .leastNormalMagnitude)
            width = cells + units + 1
            options = (0..<units).map { u in
                Options(
                    lowest: bounds[u].lowerBound,
                    steps: extras[u].map { Int(min(Double(cells), ($0 / delta).rounded())) }, extras: extras[u],
                    costs: bounds[u].map { costs[u * levels + $0] })
            }
        }
    }

    /// The dynamic programme over the grid's cells: per cell, the cheapest partial plan of the units
    /// added so far and that plan's exact budget, and per unit and cell the level that reached it.
    private struct Table {
        /// Per cell: the cheapest cost (+inf where no plan lands) and its exact budget.
        private(set) var cost: UnsafeMutablePointer<Double>
        private var exact: UnsafeMutablePointer<Double>
        /// The same for the unit being added.
        private var nextCost: UnsafeMutablePointer<Double>
        private var nextExact: UnsafeMutablePointer<Double>
        /// units x width level indices (into the unit's options).
        private let choices: UnsafeMutablePointer<UInt8>
        private let width: Int
        /// The highest cell reached so far.
        private var reach = 0

        /// Starts with no unit added: cost 0 at cell 0. `rows` holds 4 x `width` doubles.
        init(rows: UnsafeMutablePointer<Double>, choices: UnsafeMutablePointer<UInt8>, width: Int) {
            cost = rows
            exact = rows + width
            nextCost = rows + 2 * width
            nextExact = rows + 3 * width
            self.choices = choices
            self.width = width
            for table in [cost, nextCost] { table.initialize(repeating: .infinity, count: width) }
            for table in [exact, nextExact] { table.initialize(repeating: 0, count: width) }
            cost[0] = 0
        }

        /// Adds unit `u`: every partial plan extended by each of its levels.
        mutating func add(_ options: Options, unit u: Int) {
            let last = options.steps.last ?? 0
            let top = min(width - 1, reach + last)
            let row = choices + u * width
            nextCost.update(repeating: .infinity, count: top + 1)
            if reach + last <= width - 1 {
                relaxBlocked(options, row: row)
            } else {
                relaxClamped(options, row: row)
            }
            swap(&cost, &nextCost)
            swap(&exact, &nextExact)
            reach = top
        }

        /// The cell of the cheapest complete plan whose exact average meets the budget (the lowest
        /// such cell on ties), or nil.
        func cheapestCell(meeting problem: Problem) -> Int? {
            let base = problem.range.lowerBound
            var best: Int?
            for c in 0...reach where cost[c] < .infinity && problem.meetsBudget(base + exact[c]) {
                if best.map({ cost[c] < cost[$0] }) ?? true { best = c }
            }
            return best
        }

        /// The per-unit plan whose last unit's choice ends at `cell`, traced back unit by unit.
        func plan(endingAt cell: Int, _ grid: Grid) -> [Int] {
            var plan = [Int](repeating: 0, count: grid.options.count)
            var c = cell
            for (u, options) in grid.options.enumerated().reversed() {
                let i = Int(choices[u * width + c])
                plan[u] = options.lowest + i
                c -= options.steps[i]
            }
            return plan
        }

        /// One unit's step: for every source cell c in 0...reach and level i, the candidate
        /// cost[c] + costs[i] replaces nextCost[c + steps[i]] when strictly cheaper.
        ///
        /// The reference order is c ascending, then i ascending; the first candidate of least cost
        /// wins a target cell. This loop runs, block of sources by block, the levels in order of
        /// descending step (ascending index among equal steps), each over the whole block. For a
        /// fixed target that visits its candidates (c = target - steps[i]) in exactly the reference
        /// order, so the result is the same, while the inner loop runs over contiguous cells and
        /// vectorises. Needs reach + steps.last within the tables (no clamping).
        private func relaxBlocked(_ options: Options, row: UnsafeMutablePointer<UInt8>) {
            let step = options.steps
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
                        count: count, from: cost + block, exact + block, adding: options.costs[i], options.extras[i],
                        into: nextCost + target, nextExact + target, row + target, choice: UInt8(truncatingIfNeeded: i))
                }
                block += count
            }
        }

        /// The reference loop (c ascending, then i ascending) with targets clamped to the last cell.
        private func relaxClamped(_ options: Options, row: UnsafeMutablePointer<UInt8>) {
            for c in 0...reach where cost[c] < .infinity {
                for i in options.steps.indices {
                    let c2 = min(c + options.steps[i], width - 1)
                    let candidate = cost[c] + options.costs[i]
                    if candidate < nextCost[c2] {
                        nextCost[c2] = candidate
                        nextExact[c2] = exact[c] + options.extras[i]
                        row[c2] = UInt8(i)
                    }
                }
            }
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
