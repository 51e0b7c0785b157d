import MSPCore
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// A random problem: sizes, N:M or unstructured levels, groups and bounds, with a reachable target.
func randomProblem(seed: UInt64, layers: Int, levels: Int, grouped: Bool, bounded: Bool) throws -> Problem {
    var rng = SplitMix64(seed: seed)
    let sizes = (0..<layers).map { _ in [64, 128, 256, 1024][Int(rng.next() % 4)] * Int(1 + rng.next() % 3) }
    let levelSet: LevelSet
    if rng.next() % 2 == 0 {
        let m = 16
        levelSet = try LevelSet((0..<levels).map { try Level(n: m - $0 * (m - 1) / max(1, levels - 1), m: m) })
    } else {
        levelSet = try LevelSet((0..<levels).map { try Level(sparsity: 0.9 * Double($0) / Double(max(1, levels - 1))) })
    }
    var problem = try Problem(sizes: sizes, levels: levelSet)
    if grouped { try problem.setGroups((0..<layers).map { $0 / 3 }) }
    if bounded {
        let lo = (0..<layers).map { $0 % 5 == 0 ? 1 : 0 }
        let hi = (0..<layers).map { $0 % 7 == 3 ? levels - 2 : levels - 1 }
        try problem.setBounds(min: lo, max: hi)
    }
    // The average of a random plan within the bounds: reachable by construction.
    let target = problem.average(problem.unitBounds.map { $0.lowerBound + Int(rng.next() % UInt64($0.count)) })
    try problem.setTarget(target, tolerance: 0.01)
    return problem
}

/// Additive costs correlated with per-unit sensitivities: cost = sigma_u * size_u * s_k^2.
func additiveCosts(_ problem: Problem, sensitivity: [Double]) -> [Double] {
    let layerCosts = (0..<problem.layerCount).flatMap { l in
        (0..<problem.levels.count).map { k in
            sensitivity[l] * Double(problem.sizes[l]) * problem.levels.sparsity(k) * problem.levels.sparsity(k)
        }
    }
    return AdditiveSolver.unitCosts(problem, layerCosts: layerCosts)
}

func totalCost(_ plan: [Int], _ costs: [Double], levels: Int) -> Double {
    plan.enumerated().reduce(0) { $0 + costs[$1.offset * levels + $1.element] }
}

/// Drives a search with an additive fitness; checks every candidate is feasible.
func runSearch(_ search: Search, costs: [Double]) throws -> Int {
    var asked = 0
    while true {
        let batch = try search.ask()
        if batch.plans.isEmpty { return asked }
        for plan in batch.plans { #expect(search.problem.isFeasible(plan)) }
        asked += batch.plans.count
        try search.tell(batch.plans.map { totalCost($0, costs, levels: search.problem.levels.count) })
    }
}

@Suite("Planner: budget, prior, exact solver and search")
struct PlannerTests {
    @Test(arguments: 0..<12)
    func everyEmittedPlanIsFeasible(seed: Int) throws {
        let problem = try randomProblem(
            seed: UInt64(seed), layers: 5 + seed * 3, levels: 3 + seed % 6, grouped: seed % 2 == 1, bounded: seed % 3 == 0)
        var rng = SplitMix64(seed: UInt64(seed) + 100)
        let sensitivity = (0..<problem.layerCount).map { _ in Double(rng.next() % 1000) / 10 }
        for strength in [0, 0.5, 2] {
            for perParameter in [false, true] {
                let plan = try Prior.plan(
                    problem, sensitivity: sensitivity, params: PriorParams(strength: strength, perParameter: perParameter))
                #expect(problem.isFeasible(plan))
            }
        }
        let costs = additiveCosts(problem, sensitivity: sensitivity)
        #expect(problem.isFeasible(try AdditiveSolver.solve(problem, unitCosts: costs).plan))
        var params = SearchParams()
        params.generations = 5
        params.seed = UInt64(seed)
        params.fidelityLevels = 1 + seed % 2
        _ = try runSearch(Search(problem: problem, sensitivity: sensitivity, params: params), costs: costs)
    }

    @Test(arguments: 0..<20)
    func exactSolverEqualsBruteForce(seed: Int) throws {
        let problem = try randomProblem(seed: UInt64(seed) * 7, layers: 2 + seed % 7, levels: 2 + seed % 4, grouped: seed % 4 == 1, bounded: seed % 3 == 2)
        var rng = SplitMix64(seed: UInt64(seed))
        let levels = problem.levels.count
        let costs = (0..<(problem.unitCount * levels)).map { _ in Double(rng.next() % 10_000) / 100 }
        var best = Double.infinity
        var plan = problem.unitBounds.map(\.lowerBound)
        enumerate: while true {
            if problem.isFeasible(plan) { best = min(best, totalCost(plan, costs, levels: levels)) }
            for u in plan.indices {
                if plan[u] < problem.unitBounds[u].upperBound {
                    plan[u] += 1
                    continue enumerate
                }
                plan[u] = problem.unitBounds[u].lowerBound
            }
            break
        }
        let solved = try AdditiveSolver.solve(problem, unitCosts: costs)
        #expect(problem.isFeasible(solved.plan))
        #expect(abs(solved.cost - best) <= 1e-9 * max(1, best))
        #expect(abs(totalCost(solved.plan, costs, levels: levels) - solved.cost) <= 1e-9 * max(1, best))
    }

    @Test func priorStrengthZeroIsUniformAndPriorIsMonotone() throws {
        let levels = try LevelSet((1...8).reversed().map { try Level(n: $0, m: 8) })
        var problem = try Problem(sizes: [Int](repeating: 4096, count: 12), levels: levels)
        try problem.setTarget(0.75, tolerance: 0.001)
        let sensitivity = (0..<12).map { Double(($0 * 7) % 12) + 1 }
        let uniform = try Prior.plan(problem, sensitivity: sensitivity, params: PriorParams(strength: 0))
        #expect(uniform == [Int](repeating: 6, count: 12))  // 2:8 everywhere
        for strength in [0.3, 1, 3] {
            let plan = try Prior.plan(problem, sensitivity: sensitivity, params: PriorParams(strength: strength))
            #expect(problem.isFeasible(plan))
            for a in 0..<12 {
                for b in 0..<12 where sensitivity[a] > sensitivity[b] { #expect(plan[a] <= plan[b]) }
            }
        }
        let spread = try Prior.plan(problem, sensitivity: sensitivity, params: PriorParams(strength: 3))
        #expect(Set(spread).count > 1)
    }

    @Test func subnormalToleranceSolvesWithoutTrapping() throws {
        let levels = try LevelSet([Level(n: 4, m: 4), Level(n: 2, m: 4)])
        var problem = try Problem(sizes: [10, 10], levels: levels)
        try problem.setTarget(0.25, tolerance: .leastNonzeroMagnitude)
        let solved = try AdditiveSolver.solve(problem, unitCosts: [0, 1, 0, 2])
        #expect(solved.plan == [1, 0] && solved.cost == 1)
        // Levels a subnormal apart: the budget grid must not divide by an underflowed cell width.
        var close = try Problem(
            sizes: [3, 5], levels: LevelSet([Level(sparsity: 0), Level(sparsity: .leastNonzeroMagnitude)]))
        try close.setTarget(0, tolerance: 0.001)
        #expect(try AdditiveSolver.solve(close, unitCosts: [1, 0, 1, 0]).plan == [1, 1])
    }

    @Test func unreachableTargetReportsTheRange() throws {
        let levels = try LevelSet([Level(n: 4, m: 4), Level(n: 2, m: 4)])
        var problem = try Problem(sizes: [10, 30], levels: levels)
        try problem.setBounds(min: nil, max: [0, 1])
        #expect(throws: MSPError.infeasible(
            "target sparsity 0.6 ± 0.001 is unreachable: plans within the bounds reach [0.0, 0.375]")) {
            try problem.setTarget(0.6, tolerance: 0.001)
        }
        #expect(problem.target == 0.5)
    }

    @Test func sameSeedSameSearchDifferentSeedDifferentPath() throws {
        let problem = try randomProblem(seed: 5, layers: 40, levels: 8, grouped: false, bounded: false)
        var rng = SplitMix64(seed: 9)
        let sensitivity = (0..<40).map { _ in Double(rng.next() % 1000) + 1 }
        let costs = additiveCosts(problem, sensitivity: sensitivity.map { $0 * (1 + Double($0.truncatingRemainder(dividingBy: 7)) / 10) })
        var outcomes: [[Double]] = []
        var bests: [[Int]] = []
        for seed: UInt64 in [1, 1, 2] {
            var params = SearchParams()
            params.seed = seed
            params.generations = 10
            let search = try Search(problem: problem, sensitivity: sensitivity, params: params)
            _ = try runSearch(search, costs: costs)
            outcomes.append(search.history)
            bests.append(search.best?.plan ?? [])
        }
        #expect(outcomes[0] == outcomes[1] && bests[0] == bests[1])
        #expect(outcomes[0] != outcomes[2] || bests[0] != bests[2])
    }

    @Test func tellOutOfOrderAndBadValuesChangeNothing() throws {
        let problem = try randomProblem(seed: 1, layers: 6, levels: 4, grouped: false, bounded: false)
        let search = try Search(problem: problem, sensitivity: [Double](repeating: 1, count: 6), params: SearchParams())
        #expect(throws: MSPError.self) { try search.tell([]) }
        let batch = try search.ask()
        let again = try search.ask()
        #expect(again == batch)
        #expect(throws: MSPError.self) { try search.tell([1]) }
        #expect(throws: MSPError.self) { try search.tell(batch.plans.map { _ in Double.nan }) }
        #expect(search.evaluations == 0)
        try search.tell(batch.plans.map { _ in Double.infinity })
        #expect(search.evaluations == batch.plans.count)
    }

    @Test(arguments: [32, 224])
    func searchReachesTheExactOptimumOnAdditiveCosts(layers: Int) throws {
        var rng = SplitMix64(seed: UInt64(layers))
        let levels = try LevelSet((1...16).reversed().map { try Level(n: $0, m: 16) })
        var problem = try Problem(sizes: (0..<layers).map { _ in 4096 * (1 + Int(rng.next() % 3)) }, levels: levels)
        try problem.setTarget(0.75, tolerance: 0.001)
        let sensitivity = (0..<layers).map { _ in exp(Double(rng.next() % 4000) / 1000) }
        let costs = additiveCosts(problem, sensitivity: sensitivity)
        let optimum = try AdditiveSolver.solve(problem, unitCosts: costs).cost
        var params = SearchParams()
        params.generations = 150  // the surrogate gets within 1% in about 100 (224 layers; 8 at 32)
        params.offspring = 16
        params.patience = 60
        let search = try Search(problem: problem, sensitivity: sensitivity, params: params)
        _ = try runSearch(search, costs: costs)
        let found = try #require(search.best).fitness
        #expect(found <= optimum * 1.01, "found \(found), optimum \(optimum), evaluations \(search.evaluations)")
    }
}
