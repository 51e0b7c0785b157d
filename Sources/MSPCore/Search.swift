// Search: the pruning-oriented evolutionary search over plans, driven by ask/tell.

/// An evolutionary search for the plan of lowest fitness.
///
/// Generation 0 evaluates prior plans (a grid of strengths and normalisations, or one prior). Each
/// later generation breeds `offspring` plans never proposed before from the `survivors` best so far:
/// a parent by tournament, crossover with a second parent (uniform per unit), then mutation (one
/// unit moves a level up or down, plus more moves at `mutationRate`), then a budget repair that moves
/// other units the opposite way (falling back to the nearest feasible plan by `AdditiveSolver`).
/// All randomness comes from one `SplitMix64` seeded by `params.seed`, so the candidates depend only
/// on the seed and the fitness values told. Not thread-safe: use one instance from one thread.
public final class Search {
    /// A batch of candidates to score, per unit, and the fidelity to score them at.
    public struct Batch: Sendable, Equatable {
        /// Per-unit plans.
        public let plans: [[Int]]
        /// Fidelity level in [0, fidelityLevels).
        public let fidelity: Int
    }

    /// The problem searched.
    public let problem: Problem
    /// The settings.
    public let params: SearchParams
    private let sensitivity: [Double]
    private var rng: SplitMix64
    private var fitnessOf: [[UInt8]: Double] = [:]
    private var proposed: Set<[UInt8]> = []
    /// Best plans so far, best first (ties: first evaluated first).
    private var population: [(plan: [Int], fitness: Double)] = []
    private var pending: Batch?
    private var priors: [[Int]] = []
    private var stagePlans: [[Int]] = []
    private var stage = 0
    private var sinceImprovement = 0

    /// Generations completed; the prior grid is generation 0, so this is -1 before it completes.
    public private(set) var generation = -1
    /// Whether the search has finished.
    public private(set) var isDone = false
    /// Full-fidelity evaluations told so far.
    public private(set) var evaluations = 0
    /// Lower-fidelity evaluations told so far.
    public private(set) var cheapEvaluations = 0
    /// Best fitness after each completed generation.
    public private(set) var history: [Double] = []

    /// Creates a search and computes its generation-0 prior plans.
    /// - Throws: `MSPError.invalidArgument` for bad params or sensitivities; `MSPError.infeasible`
    ///   when no plan meets the budget; `MSPError.outOfMemory`.
    public init(problem: Problem, sensitivity: [Double], params: SearchParams) throws {
        try params.validate()
        try Prior.validate(sensitivity, layers: problem.layerCount)
        self.problem = problem
        self.params = params
        self.sensitivity = sensitivity
        rng = SplitMix64(seed: params.seed)
        priors = try priorPlans()
    }

    /// The best plan (per unit) and its fitness at the last fidelity, if any was evaluated.
    public var best: (plan: [Int], fitness: Double)? { population.first }

    /// The most plans one batch can hold.
    public var maxBatch: Int { max(params.offspring, 2 * SearchParams.gridStrengths.count) }

    private var lastFidelity: Int { params.fidelityLevels - 1 }
    private var remainingEvaluations: Int {
        params.maxEvaluations > 0 ? max(0, params.maxEvaluations - evaluations) : Int.max
    }

    /// The next batch to score (the same batch again until it is told); empty when finished.
    /// - Throws: `MSPError.outOfMemory` from a budget repair.
    public func ask() throws -> Batch {
        if let pending { return pending }
        if isDone { return Batch(plans: [], fidelity: lastFidelity) }
        let batch: Batch
        if generation < 0 {
            stagePlans = Array(priors.prefix(remainingEvaluations))
            stage = lastFidelity
            batch = Batch(plans: stagePlans, fidelity: stage)
        } else if stage < lastFidelity || !stagePlans.isEmpty {
            batch = Batch(plans: stagePlans, fidelity: stage)
        } else {
            let want = params.fidelityLevels > 1 ? params.offspring : min(params.offspring, remainingEvaluations)
            stagePlans = try breed(want)
            stage = 0
            batch = Batch(plans: stagePlans, fidelity: params.fidelityLevels > 1 ? 0 : lastFidelity)
            stage = batch.fidelity
        }
        if batch.plans.isEmpty {
            isDone = true
            return Batch(plans: [], fidelity: lastFidelity)
        }
        pending = batch
        return batch
    }

    /// Drops the batch in progress (after a cancelled evaluation); the next `ask` breeds anew.
    public func cancelPending() {
        for plan in pending?.plans ?? [] { proposed.remove(key(plan)) }
        pending = nil
        stagePlans = []
        stage = lastFidelity
    }

    /// Records the fitness of the pending batch, in the order asked.
    /// - Throws: `MSPError.invalidState` when no batch is pending or the count differs;
    ///   `MSPError.invalidArgument` for a NaN or -inf value. Nothing changes then.
    public func tell(_ values: [Double]) throws {
        guard let batch = pending else {
            throw MSPError.invalidState("tell without a pending batch: call ask first")
        }
        guard values.count == batch.plans.count else {
            throw MSPError.invalidState("tell got \(values.count) values for a batch of \(batch.plans.count)")
        }
        if let i = values.firstIndex(where: { $0.isNaN || $0 == -.infinity }) {
            throw MSPError.invalidArgument("fitness[\(i)] (\(values[i])) must be a number or +inf")
        }
        pending = nil
        if batch.fidelity < lastFidelity {
            cheapEvaluations += values.count
            let order = values.indices.sorted { values[$0] != values[$1] ? values[$0] < values[$1] : $0 < $1 }
            let keep = max(1, Int((params.fidelityKeep * Double(values.count)).rounded(.up)))
            stagePlans = order.prefix(min(keep, remainingEvaluations)).map { batch.plans[$0] }
            stage = batch.fidelity + 1
            return
        }
        let before = best?.fitness ?? .infinity
        for (plan, value) in zip(batch.plans, values) { record(plan, value) }
        stagePlans = []
        generation += 1
        history.append(best?.fitness ?? .infinity)
        sinceImprovement = (best?.fitness ?? .infinity) < before ? 0 : sinceImprovement + 1
        if generation >= params.generations || remainingEvaluations == 0
            || (params.patience > 0 && sinceImprovement >= params.patience)
        {
            isDone = true
        }
    }

    private func record(_ plan: [Int], _ value: Double) {
        evaluations += 1
        fitnessOf[key(plan)] = value
        let at = population.firstIndex { value < $0.fitness } ?? population.count
        population.insert((plan, value), at: at)
        if population.count > params.survivors { population.removeLast() }
    }

    private func key(_ plan: [Int]) -> [UInt8] { plan.map { UInt8(truncatingIfNeeded: $0) } }

    /// The fitness told for a per-unit plan at the last fidelity, if any.
    public func fitness(of plan: [Int]) -> Double? { fitnessOf[key(plan)] }

    /// Distinct prior plans of generation 0.
    private func priorPlans() throws -> [[Int]] {
        var settings = [params.prior]
        if params.priorGrid {
            settings = SearchParams.gridStrengths.flatMap { s in
                [false, true].map { PriorParams(strength: s, perParameter: $0) }
            }
        }
        // Each prior is an independent exact solve: computed in parallel, kept in grid order.
        let problem = self.problem, sensitivity = self.sensitivity
        let computed = try Threads.map(Threads.chunks(settings.count)) { _, chunk in
            try chunk.map { try Prior.plan(problem, sensitivity: sensitivity, params: settings[$0]) }
        }
        var plans: [[Int]] = []
        for plan in computed.joined() where proposed.insert(key(plan)).inserted { plans.append(plan) }
        return plans
    }

    /// Up to `count` feasible plans never proposed before.
    private func breed(_ count: Int) throws -> [[Int]] {
        guard !population.isEmpty else { return [] }
        var children: [[Int]] = []
        var attempts = 0
        while children.count < count && attempts < 50 * max(count, 1) {
            attempts += 1
            var child = tournament()
            if population.count > 1 && unit() < params.crossoverRate {
                let other = tournament()
                for u in child.indices where rng.next() & 1 == 1 { child[u] = other[u] }
            }
            let moved = mutate(&child)
            child = try repair(child, keeping: moved)
            if proposed.insert(key(child)).inserted { children.append(child) }
        }
        return children
    }

    /// A uniform random number in [0, 1).
    private func unit() -> Double { Double(rng.next() >> 11) * 0x1.0p-53 }

    private func random(_ n: Int) -> Int { Int(rng.next() % UInt64(n)) }

    /// The better of two random members of the population.
    private func tournament() -> [Int] {
        let a = random(population.count), b = random(population.count)
        return population[min(a, b)].plan
    }

    /// Moves one random movable unit a level up or down, then each further one at `mutationRate`,
    /// at most once per movable unit.
    /// - Returns: the units moved.
    private func mutate(_ plan: inout [Int]) -> Set<Int> {
        let movable = (0..<plan.count).filter { problem.unitBounds[$0].count > 1 }
        var moved: Set<Int> = []
        while moved.count < movable.count && (moved.isEmpty || unit() < params.mutationRate) {
            let u = movable[random(movable.count)]
            let bounds = problem.unitBounds[u]
            let up = rng.next() & 1 == 1
            plan[u] += (up && plan[u] < bounds.upperBound) || plan[u] == bounds.lowerBound ? 1 : -1
            moved.insert(u)
        }
        return moved
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
                let change =
                    Double(problem.unitSizes[u])
                    * (problem.levels.sparsity(plan[u] + direction) - problem.levels.sparsity(plan[u]))
                    / Double(problem.totalSize)
                let distance = abs(average + change - problem.target)
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
