@testable import MSPCore
import Testing

/// Solves A x = b by Gaussian elimination with partial pivoting (the reference for the ridge solvers).
func gaussianSolve(_ a: [[Double]], _ b: [Double]) -> [Double] {
    var a = a, b = b
    let n = b.count
    for col in 0..<n {
        let pivot = (col..<n).max { abs(a[$0][col]) < abs(a[$1][col]) } ?? col
        a.swapAt(col, pivot)
        b.swapAt(col, pivot)
        for row in (col + 1)..<max(col + 1, n) {
            let f = a[row][col] / a[col][col]
            for k in col..<n { a[row][k] -= f * a[col][k] }
            b[row] -= f * b[col]
        }
    }
    var x = [Double](repeating: 0, count: n)
    for row in stride(from: n - 1, through: 0, by: -1) {
        var s = b[row]
        for k in (row + 1)..<max(row + 1, n) { s -= a[row][k] * x[k] }
        x[row] = s / a[row][row]
    }
    return x
}

/// Distinct feasible plans of a problem: exact optima of random cost tables.
func feasiblePlans(_ problem: Problem, count: Int, seed: UInt64) throws -> [[Int]] {
    var rng = SplitMix64(seed: seed)
    var plans: [[Int]] = []
    for _ in 0..<(4 * count) where plans.count < count {
        let costs = (0..<(problem.unitCount * problem.levels.count)).map { _ in Double(rng.next() % 1000) }
        let plan = try AdditiveSolver.solve(problem, unitCosts: costs).plan
        if !plans.contains(plan) { plans.append(plan) }
    }
    return plans
}

/// The sum of a per-unit table over a per-unit plan.
func tableCost(_ table: [Double], _ plan: [Int], levels: Int) -> Double {
    plan.enumerated().reduce(0) { $0 + table[$1.offset * levels + $1.element] }
}

@Suite("Surrogate: the ridge fit and the model's optimum")
struct SurrogateTests {
    @Test(arguments: 0..<16)
    func ridgeSolversEqualTheDenseReference(seed: Int) {
        var rng = SplitMix64(seed: UInt64(seed))
        let units = 1 + seed % 5, rows = 3 + Int(rng.next() % 40)
        let widths = (0..<units).map { _ in 1 + Int(rng.next() % 4) }
        let offsets = widths.indices.map { widths[..<$0].reduce(0, +) }
        let cells = widths.reduce(0, +)
        let index = (0..<rows).flatMap { _ in (0..<units).map { offsets[$0] + Int(rng.next() % UInt64(widths[$0])) } }
        let columns = (0..<(seed % 3)).map { _ in (0..<rows).map { _ in Double(Int(rng.next() % 2001) - 1000) / 500 } }
        let y = (0..<rows).map { _ in Double(Int(rng.next() % 2001) - 1000) / 100 }
        let ridge = [0.1, 1, 10][seed % 3]
        let system = RidgeSystem(
            rows: rows, units: units, cells: cells, index: index, columns: columns, ridge: ridge, columnPenalty: 0.01)
        // Reference: the explicit design matrix and its normal equations.
        let dimension = 1 + columns.count + cells
        let x = (0..<rows).map { i in
            var row = [Double](repeating: 0, count: dimension)
            row[0] = 1
            for (j, column) in columns.enumerated() { row[1 + j] = column[i] }
            for u in 0..<units { row[1 + columns.count + index[i * units + u]] = 1 }
            return row
        }
        let a = (0..<dimension).map { p in
            (0..<dimension).map { q in
                (0..<rows).reduce(0.0) { $0 + x[$1][p] * x[$1][q] }
                    + (p == q && p > 0 ? (p <= columns.count ? 0.01 : ridge) : 0)
            }
        }
        let b = (0..<dimension).map { p in (0..<rows).reduce(0.0) { $0 + x[$1][p] * y[$1] } }
        let reference = gaussianSolve(a, b)
        let scale = max(1, reference.map(abs).max() ?? 0)
        let direct = system.direct(y)
        #expect(direct != nil)
        for (got, want) in zip(direct ?? [], reference) { #expect(abs(got - want) <= 1e-9 * scale) }
        for (got, want) in zip(system.iterative(y), reference) { #expect(abs(got - want) <= 1e-5 * scale) }
        #expect(system.solve(y).count == dimension)
    }

    @Test(arguments: 0..<6)
    func theModelOfAnAdditiveFitnessHasItsOptimum(seed: Int) throws {
        let problem = try randomProblem(
            seed: UInt64(seed) + 40, layers: 8 + seed, levels: 4 + seed % 3, grouped: false, bounded: seed % 2 == 0)
        var rng = SplitMix64(seed: UInt64(seed))
        let levels = problem.levels.count
        // Costs increasing with sparsity, as pruning losses do.
        var truth: [Double] = []
        for _ in 0..<problem.unitCount {
            for k in 0..<levels {
                let growth = Double(1 + rng.next() % 100) / 10, offset = Double(rng.next() % 7)
                truth.append(Double(k * k) * growth + offset)
            }
        }
        let plans = try feasiblePlans(problem, count: 40 * problem.unitCount, seed: UInt64(seed))
        #expect(plans.count >= 10 * problem.unitCount)
        let values = plans.map { tableCost(truth, $0, levels: levels) }
        let model = try #require(
            Surrogate.fit(
                problem: problem, plans: plans.flatMap { $0.map(UInt8.init) }, values: values, proxies: [], ridge: 1e-6))
        // It reproduces the differences between the values it was fitted to (the intercept is not
        // in the table), and its exact optimum is the true optimum.
        let first = tableCost(model.table, plans[0], levels: levels)
        for (plan, value) in zip(plans, values) {
            let predicted: Double = tableCost(model.table, plan, levels: levels) - first
            let actual: Double = value - values[0]
            #expect((predicted - actual).magnitude <= 1e-3 * Swift.max(1, actual.magnitude), "plan \(plan)")
        }
        let optimum = try AdditiveSolver.solve(problem, unitCosts: truth).cost
        let chosen = try AdditiveSolver.solve(problem, unitCosts: model.table).plan
        #expect(tableCost(truth, chosen, levels: levels) <= optimum + 1e-6 * max(1, optimum))
        #expect(model.spread.allSatisfy { $0 >= 0 && $0.isFinite })
    }

    @Test func aProxyLeadsTheModelWhereTheDataSayLittle() throws {
        let levels = try LevelSet((1...8).reversed().map { try Level(n: $0, m: 8) })
        var problem = try Problem(sizes: [Int](repeating: 4096, count: 16), levels: levels)
        try problem.setTarget(0.5, tolerance: 0.001)
        var rng = SplitMix64(seed: 3)
        let truth = (0..<16).flatMap { _ in (0..<8).map { Double($0 * $0) * Double(1 + rng.next() % 50) } }
        let optimum = try AdditiveSolver.solve(problem, unitCosts: truth)
        let plans = try feasiblePlans(problem, count: 3, seed: 9)
        let values = plans.map { tableCost(truth, $0, levels: 8) }
        let bytes = plans.flatMap { $0.map(UInt8.init) }
        // A proxy with another scale and per-unit offsets: the fitted scale makes its optimum the model's.
        let proxy = truth.enumerated().map { 0.25 * $1 + Double($0 / 8) }
        let guided = try #require(Surrogate.fit(problem: problem, plans: bytes, values: values, proxies: [proxy], ridge: 1))
        #expect(try AdditiveSolver.solve(problem, unitCosts: guided.table).plan == optimum.plan)
        // Without the proxy three evaluations cannot pin 16 x 8 costs.
        let blind = try #require(Surrogate.fit(problem: problem, plans: bytes, values: values, proxies: [], ridge: 1))
        #expect(try AdditiveSolver.solve(problem, unitCosts: blind.table).plan != optimum.plan)
    }

    @Test func unusableDataGiveNoModel() throws {
        let problem = try randomProblem(seed: 2, layers: 5, levels: 4, grouped: false, bounded: false)
        let plans = try feasiblePlans(problem, count: 3, seed: 1)
        let bytes = plans.flatMap { $0.map(UInt8.init) }
        func fit(_ values: [Double]) -> Surrogate? {
            Surrogate.fit(problem: problem, plans: bytes, values: values, proxies: [], ridge: 1)
        }
        #expect(fit([1, .infinity, .infinity]) == nil)  // one finite value
        #expect(fit([0, 0, 0]) == nil)  // nothing to scale
        #expect(fit([1, 2, .infinity]) != nil)
        // The largest finite doubles never give a model with non-finite costs.
        let huge = fit([.greatestFiniteMagnitude, -.greatestFiniteMagnitude, 0])
        #expect(huge.map { $0.table.allSatisfy(\.isFinite) && $0.spread.allSatisfy(\.isFinite) } ?? true)
        let large = try #require(fit([1e300, -1e300, 0]))
        #expect(large.table.allSatisfy { $0.isFinite })
    }
}
