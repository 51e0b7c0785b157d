import CMSPHeader
import MSPCore
import Testing

/// The exact solver as first written: cells relaxed in ascending order, levels in ascending order
/// within a cell, the first candidate of least cost winning. `AdditiveSolver.solve` reorders the
/// loops to vectorise them and must give the same plan and cost, ties included.
func referenceSolve(_ problem: Problem, unitCosts costs: [Double]) -> (plan: [Int], cost: Double)? {
    let units = problem.unitCount, levels = problem.levels.count
    let total = Double(problem.totalSize)
    let bounds = problem.unitBounds
    let extras = (0..<units).map { u in
        bounds[u].map { k in
            Double(problem.unitSizes[u]) * (problem.levels.sparsity(k) - problem.levels.sparsity(bounds[u].lowerBound))
                / total
        }
    }
    let unitCosts = (0..<units).map { u in bounds[u].map { costs[u * levels + $0] } }
    let base = problem.range.lowerBound
    let span = extras.reduce(0.0) { $0 + ($1.last ?? 0) }
    let widest = bounds.map(\.count).max() ?? 1
    let maxCells = Int(MSP_SOLVE_MAX_CELLS), workLimit = Int(MSP_SOLVE_MAX_STEPS)
    let byTolerance =
        problem.tolerance > 0
        ? Int(min(Double(maxCells), (span * Double(units) / problem.tolerance).rounded(.up))) : maxCells
    let cells = max(1, min(byTolerance, maxCells, workLimit / max(1, units * widest)))
    let delta = max(span / Double(cells), .leastNormalMagnitude)
    let width = cells + units + 1
    let steps = extras.map { $0.map { Int(min(Double(cells), ($0 / delta).rounded())) } }
    var cost = [Double](repeating: .infinity, count: width)
    var exact = [Double](repeating: 0, count: width)
    var choice = [UInt8](repeating: 0, count: units * width)
    cost[0] = 0
    var reach = 0
    for u in 0..<units {
        let top = min(width - 1, reach + (steps[u].last ?? 0))
        var nextCost = [Double](repeating: .infinity, count: width)
        var nextExact = exact
        for c in 0...reach where cost[c] < .infinity {
            for i in 0..<steps[u].count {
                let c2 = min(c + steps[u][i], width - 1)
                let candidate = cost[c] + unitCosts[u][i]
                if candidate < nextCost[c2] {
                    nextCost[c2] = candidate
                    nextExact[c2] = exact[c] + extras[u][i]
                    choice[u * width + c2] = UInt8(i)
                }
            }
        }
        cost = nextCost
        exact = nextExact
        reach = top
    }
    var best = -1
    for c in 0...reach where cost[c] < .infinity && problem.meetsBudget(base + exact[c]) {
        if best < 0 || cost[c] < cost[best] { best = c }
    }
    guard best >= 0 else { return nil }
    var plan = [Int](repeating: 0, count: units)
    var c = best
    for u in stride(from: units - 1, through: 0, by: -1) {
        let i = Int(choice[u * width + c])
        plan[u] = bounds[u].lowerBound + i
        c -= steps[u][i]
    }
    return (plan, cost[best])
}

@Suite("Exact solver: the vectorised loop equals the reference loop")
struct AdditiveSolverTests {
    /// Random problems with costs from a handful of values (many ties) or spread out, grouped and
    /// bounded, small and large enough to span several relaxation blocks.
    @Test(arguments: 0..<24)
    func sameResultAsTheReferenceLoop(seed: Int) throws {
        let layers = [3, 8, 40, 120][seed % 4]
        let problem = try randomProblem(
            seed: UInt64(seed) &* 31 &+ 5, layers: layers, levels: 2 + seed % 9, grouped: seed % 3 == 1,
            bounded: seed % 5 == 2)
        var rng = SplitMix64(seed: UInt64(seed) + 1000)
        let count = problem.unitCount * problem.levels.count
        let costs: [Double] =
            seed % 2 == 0
            ? (0..<count).map { _ in Double(rng.next() % 4) }
            : (0..<count).map { _ in Double(rng.next() % 1_000_000) / 1000 }
        let solved = try AdditiveSolver.solve(problem, unitCosts: costs)
        let reference = try #require(referenceSolve(problem, unitCosts: costs))
        #expect(solved.plan == reference.plan)
        #expect(solved.cost == reference.cost)
    }

    /// 224 layers x 16 N:16 levels at tolerance 0.001: the size the issue times.
    @Test func sameResultAtBenchmarkSize() throws {
        var rng = SplitMix64(seed: 7)
        let sizes = (0..<224).map { _ in [1, 3, 4][Int(rng.next() % 3)] * 4096 * 16 }
        var problem = try Problem(sizes: sizes, levels: LevelSet((1...16).reversed().map { try Level(n: $0, m: 16) }))
        try problem.setTarget(0.75, tolerance: 0.001)
        let costs = (0..<(224 * 16)).map { i in Double(rng.next() % 64) * problem.levels.sparsity(i % 16) }
        let solved = try AdditiveSolver.solve(problem, unitCosts: costs)
        let reference = try #require(referenceSolve(problem, unitCosts: costs))
        #expect(solved.plan == reference.plan)
        #expect(solved.cost == reference.cost)
    }

    /// Levels a hair apart share a budget step: among them the lower index must still win ties.
    @Test(arguments: 0..<6)
    func equalStepsKeepTheLowerLevel(seed: Int) throws {
        let sparsities = [0, 0.3, 0.3 + 1e-9, 0.3 + 2e-9, 0.6, 0.6 + 1e-9, 0.9]
        var rng = SplitMix64(seed: UInt64(seed))
        let sizes = (0..<(10 + 10 * seed)).map { _ in 100 * Int(1 + rng.next() % 4) }
        var problem = try Problem(sizes: sizes, levels: LevelSet(sparsities.map { try Level(sparsity: $0) }))
        try problem.setTarget(0.45, tolerance: 0.01)
        let costs = (0..<(problem.unitCount * sparsities.count)).map { _ in Double(rng.next() % 3) }
        let solved = try AdditiveSolver.solve(problem, unitCosts: costs)
        let reference = try #require(referenceSolve(problem, unitCosts: costs))
        #expect(solved.plan == reference.plan)
        #expect(solved.cost == reference.cost)
    }
}
