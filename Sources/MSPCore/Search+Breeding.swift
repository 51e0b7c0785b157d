// Search+Breeding: the evolutionary operators (selection, crossover, budget-neutral mutation,
// budget repair) and the search's random numbers.

extension Search {
    /// Up to `count` feasible plans never proposed before, bred from the population: a parent by
    /// tournament, crossover with a second parent (uniform per unit) at `crossoverRate`, mutation,
    /// then a budget repair (a child the repair's budget grid cannot place is dropped).
    func breed(_ count: Int) throws -> [[Int]] {
        guard !state.population.isEmpty else { return [] }
        var children: [[Int]] = []
        var attempts = 0
        while children.count < count && attempts < 50 * max(count, 1) {
            attempts += 1
            var child = tournament()
            if state.population.count > 1 && unit() < params.crossoverRate {
                let other = tournament()
                for u in child.indices where state.rng.next() & 1 == 1 { child[u] = other[u] }
            }
            let moved = mutate(&child)
            do {
                child = try repair(child, keeping: moved)
            } catch MSPError.infeasible {
                continue  // the budget grid's rare miss (as in surrogateCandidates): another child takes its place
            }
            if state.proposed.insert(Self.key(child)).inserted { children.append(child) }
        }
        return children
    }

    /// A uniform random number in [0, 1).
    func unit() -> Double { Double(state.rng.next() >> 11) * 0x1.0p-53 }

    /// A uniform random integer in [0, n).
    func random(_ n: Int) -> Int { Int(state.rng.next() % UInt64(n)) }

    /// An approximately standard normal number: the sum of 12 uniforms minus 6 (no transcendental
    /// functions, so the same on every platform).
    func normal() -> Double { (0..<12).reduce(-6.0) { s, _ in s + unit() } }

    /// The better of two random members of the population.
    private func tournament() -> [Int] {
        let a = random(state.population.count), b = random(state.population.count)
        return state.population[min(a, b)].plan
    }

    /// The change of the average sparsity when unit `u` moves from level `from` to level `to`.
    private func budgetChange(_ u: Int, from: Int, to: Int) -> Double {
        Double(problem.unitSizes[u]) * (problem.levels.sparsity(to) - problem.levels.sparsity(from))
            / Double(problem.totalSize)
    }

    /// Moves one random movable unit a level up or down, then each further one at `mutationRate`,
    /// at most once per movable unit. At `pairRate` a move is paired with the opposite move of the
    /// unit (not moved yet) whose change best cancels its change of the budget, chosen at random
    /// among equally good ones, so that a feasible parent usually stays feasible without repair.
    /// - Returns: the units moved.
    private func mutate(_ plan: inout [Int]) -> Set<Int> {
        let movable = (0..<plan.count).filter { problem.unitBounds[$0].count > 1 }
        var moved: Set<Int> = []
        while moved.count < movable.count && (moved.isEmpty || unit() < params.mutationRate) {
            let u = movable[random(movable.count)]
            let bounds = problem.unitBounds[u]
            let up = state.rng.next() & 1 == 1
            let step = (up && plan[u] < bounds.upperBound) || plan[u] == bounds.lowerBound ? 1 : -1
            plan[u] += step
            moved.insert(u)
            if params.pairRate > 0 && unit() < params.pairRate,
                let v = partner(of: u, step: step, in: plan, excluding: moved)
            {
                plan[v] -= step
                moved.insert(v)
            }
        }
        return moved
    }

    /// The unit not in `excluding` whose move by `-step` best cancels unit `u`'s last move by `step`.
    private func partner(of u: Int, step: Int, in plan: [Int], excluding: Set<Int>) -> Int? {
        let change = budgetChange(u, from: plan[u] - step, to: plan[u])
        var best = Double.infinity
        var ties: [Int] = []
        for v in plan.indices where !excluding.contains(v) && problem.unitBounds[v].contains(plan[v] - step) {
            let miss = abs(change + budgetChange(v, from: plan[v], to: plan[v] - step))
            if miss < best - 1e-15 {
                best = miss
                ties = [v]
            } else if miss <= best + 1e-15 {
                ties.append(v)
            }
        }
        return ties.isEmpty ? nil : ties[random(ties.count)]
    }

    /// Brings a plan back within the budget by moving other units against the excess: each step
    /// picks, of three random movable units, the one that lands closest to the target.
    private func repair(_ plan: [Int], keeping moved: Set<Int>) throws -> [Int] {
        var plan = plan
        let units = plan.count
        for _ in 0..<(4 * units) {
            let average = problem.average(plan)
            if problem.meetsBudget(average) { return plan }
            let direction = average > problem.target ? -1 : 1
            var choice = -1
            var closest = Double.infinity
            for _ in 0..<3 {
                let u = random(units)
                guard !moved.contains(u) || moved.count == units,
                    problem.unitBounds[u].contains(plan[u] + direction)
                else { continue }
                let distance = abs(average + budgetChange(u, from: plan[u], to: plan[u] + direction) - problem.target)
                if distance < closest {
                    closest = distance
                    choice = u
                }
            }
            if choice >= 0 { plan[choice] += direction }
        }
        return problem.isFeasible(plan) ? plan : try AdditiveSolver.nearestFeasible(problem, to: plan)
    }
}
