// Search: the pruning-oriented evolutionary search over plans, driven by ask/tell.

import CMSPHeader

/// An evolutionary search for the plan of lowest fitness.
///
/// Generation 0 evaluates prior plans (a grid of strengths and normalisations, or one prior) and the
/// exact optimum of every proxy table added with `addProxy`. Each later generation proposes
/// `offspring` plans never proposed before: up to `surrogateCandidates` of them minimise, exactly
/// under the budget, an additive surrogate fitted to every full-fidelity evaluation (the first the
/// fitted model, the others a random perturbation of it), and the rest are bred from the
/// `survivors` best so far (see `Search+Breeding.swift`). All randomness comes from one
/// `SplitMix64` seeded by `params.seed`, so the candidates depend only on the seed, the proxy tables
/// and the fitness values told. Not thread-safe: use one instance from one thread.
public final class Search {
    /// A batch of candidates to score, per unit, and the fidelity to score them at.
    public struct Batch: Sendable, Equatable {
        /// Per-unit plans.
        public let plans: [[Int]]
        /// Fidelity level in [0, fidelityLevels).
        public let fidelity: Int
    }

    /// The most proxy tables one search holds (`MSP_MAX_PROXIES`).
    public static let maxProxies = Int(MSP_MAX_PROXIES)

    /// The problem searched.
    public let problem: Problem
    /// The settings.
    public let params: SearchParams
    /// Per-layer sensitivities.
    let sensitivity: [Double]
    /// The proxy tables added, per unit (`unitCount x levels.count` each).
    private(set) var proxies: [[Double]] = []
    /// Everything that changes as the search runs.
    var state: SearchState

    /// Generations completed; the prior grid is generation 0, so this is -1 before it completes.
    public var generation: Int { state.generation }
    /// Whether the search has finished.
    public var isDone: Bool { state.isDone }
    /// Full-fidelity evaluations told so far.
    public var evaluations: Int { state.values.count }
    /// Lower-fidelity evaluations told so far.
    public var cheapEvaluations: Int { state.cheapEvaluations }
    /// Best fitness after each completed generation.
    public var history: [Double] { state.history }

    /// Creates a search and computes its generation-0 prior plans.
    /// - Throws: `MSPError.invalidArgument` for bad params or sensitivities; `MSPError.infeasible`
    ///   when no plan meets the budget; `MSPError.outOfMemory`.
    public init(problem: Problem, sensitivity: [Double], params: SearchParams) throws {
        try params.validate()
        try Prior.validate(sensitivity, layers: problem.layerCount)
        self.problem = problem
        self.params = params
        self.sensitivity = sensitivity
        state = SearchState(seed: params.seed)
        state.priors = try priorPlans()
    }

    /// A search with the given parts, already validated together (a restored checkpoint).
    init(problem: Problem, params: SearchParams, sensitivity: [Double], proxies: [[Double]], state: SearchState) {
        self.problem = problem
        self.params = params
        self.sensitivity = sensitivity
        self.proxies = proxies
        self.state = state
    }

    /// The best plan (per unit) and its fitness at the last fidelity, if any was evaluated.
    public var best: (plan: [Int], fitness: Double)? { state.population.first }

    /// The most plans one batch can hold.
    public var maxBatch: Int { max(params.offspring, 2 * SearchParams.gridStrengths.count + Self.maxProxies) }

    var lastFidelity: Int { params.fidelityLevels - 1 }
    private var remainingEvaluations: Int {
        params.maxEvaluations > 0 ? max(0, params.maxEvaluations - evaluations) : Int.max
    }

    /// Adds a proxy cost table: its exact optimum joins generation 0, and the surrogate is shrunk
    /// toward it. Only before the first `ask`.
    /// - Parameter layerCosts: `layerCount x levels.count` finite costs, row-major.
    /// - Throws: `MSPError.invalidState` after the first `ask` or beyond `maxProxies` tables;
    ///   `MSPError.invalidArgument` for a wrong count or a non-finite cost; `MSPError.infeasible`
    ///   when the exact solver misses the tolerance; `MSPError.outOfMemory`. Nothing changes then.
    public func addProxy(layerCosts: [Double]) throws {
        guard !state.started else {
            throw MSPError.invalidState("proxy tables can only be added before the first ask")
        }
        guard proxies.count < Self.maxProxies else {
            throw MSPError.invalidState("a search holds at most \(Self.maxProxies) proxy tables")
        }
        let levels = problem.levels.count
        guard layerCosts.count == problem.layerCount * levels else {
            throw MSPError.invalidArgument(
                "costs has \(layerCosts.count) values, expected \(problem.layerCount) x \(levels)")
        }
        if let bad = layerCosts.firstIndex(where: { !$0.isFinite }) {
            throw MSPError.invalidArgument("costs[\(bad / levels)][\(bad % levels)] (\(layerCosts[bad])) is not finite")
        }
        let unitCosts = AdditiveSolver.unitCosts(problem, layerCosts: layerCosts)
        if let bad = unitCosts.firstIndex(where: { !$0.isFinite }) {
            throw MSPError.invalidArgument("the costs of group \(bad / levels) at level \(bad % levels) overflow")
        }
        let plan = try AdditiveSolver.solve(problem, unitCosts: unitCosts).plan
        proxies.append(unitCosts)
        if state.proposed.insert(Self.key(plan)).inserted { state.priors.append(plan) }
    }

    /// The next batch to score (the same batch again until it is told); empty when finished.
    /// - Throws: `MSPError.outOfMemory` from an exact solve.
    public func ask() throws -> Batch {
        if let pending = state.pending { return pending }
        if state.isDone { return Batch(plans: [], fidelity: lastFidelity) }
        state.started = true
        let batch: Batch
        if state.generation < 0 {
            state.stagePlans = Array(state.priors.prefix(remainingEvaluations))
            for plan in state.stagePlans { state.proposed.insert(Self.key(plan)) }
            state.stage = lastFidelity
            batch = Batch(plans: state.stagePlans, fidelity: state.stage)
        } else if state.stage < lastFidelity || !state.stagePlans.isEmpty {
            batch = Batch(plans: state.stagePlans, fidelity: state.stage)
        } else {
            let want = params.fidelityLevels > 1 ? params.offspring : min(params.offspring, remainingEvaluations)
            let modelled = try surrogateCandidates(min(params.surrogateCandidates, want))
            state.stagePlans = modelled + (try breed(want - modelled.count))
            state.stage = params.fidelityLevels > 1 ? 0 : lastFidelity
            batch = Batch(plans: state.stagePlans, fidelity: state.stage)
        }
        if batch.plans.isEmpty {
            state.isDone = true
            return Batch(plans: [], fidelity: lastFidelity)
        }
        state.pending = batch
        return batch
    }

    /// Drops the batch in progress (after a cancelled evaluation); the next `ask` breeds anew.
    public func cancelPending() {
        for plan in state.pending?.plans ?? [] { state.proposed.remove(Self.key(plan)) }
        state.pending = nil
        state.stagePlans = []
        state.stage = lastFidelity
    }

    /// Records the fitness of the pending batch, in the order asked.
    /// - Throws: `MSPError.invalidState` when no batch is pending or the count differs;
    ///   `MSPError.invalidArgument` for a NaN or -inf value. Nothing changes then.
    public func tell(_ values: [Double]) throws {
        guard let batch = state.pending else {
            throw MSPError.invalidState("tell without a pending batch: call ask first")
        }
        guard values.count == batch.plans.count else {
            throw MSPError.invalidState("tell got \(values.count) values for a batch of \(batch.plans.count)")
        }
        if let i = values.firstIndex(where: { $0.isNaN || $0 == -.infinity }) {
            throw MSPError.invalidArgument("fitness[\(i)] (\(values[i])) must be a number or +inf")
        }
        state.pending = nil
        if batch.fidelity < lastFidelity {
            state.cheapEvaluations += values.count
            let order = values.indices.sorted { values[$0] != values[$1] ? values[$0] < values[$1] : $0 < $1 }
            let keep = max(1, Int((params.fidelityKeep * Double(values.count)).rounded(.up)))
            state.stagePlans = order.prefix(min(keep, remainingEvaluations)).map { batch.plans[$0] }
            state.stage = batch.fidelity + 1
            return
        }
        let before = best?.fitness ?? .infinity
        for (plan, value) in zip(batch.plans, values) { record(plan, value) }
        state.stagePlans = []
        state.generation += 1
        state.history.append(best?.fitness ?? .infinity)
        state.sinceImprovement = (best?.fitness ?? .infinity) < before ? 0 : state.sinceImprovement + 1
        if state.generation >= params.generations || remainingEvaluations == 0
            || (params.patience > 0 && state.sinceImprovement >= params.patience)
        {
            state.isDone = true
        }
    }

    private func record(_ plan: [Int], _ value: Double) {
        state.evaluated += Self.key(plan)
        state.values.append(value)
        let at = state.population.firstIndex { value < $0.fitness } ?? state.population.count
        state.population.insert((plan, value), at: at)
        if state.population.count > params.survivors { state.population.removeLast() }
    }

    /// A per-unit plan as bytes (levels are < 256).
    static func key(_ plan: [Int]) -> [UInt8] { plan.map { UInt8(truncatingIfNeeded: $0) } }

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
        for plan in computed.joined() where state.proposed.insert(Self.key(plan)).inserted { plans.append(plan) }
        return plans
    }

    /// Up to `count` plans never proposed before that minimise the surrogate fitted to every
    /// full-fidelity evaluation: the model itself, then perturbations of it (twice as wide after
    /// each draw that gives a plan proposed before), in at most 2 * count + 1 exact solves.
    private func surrogateCandidates(_ count: Int) throws -> [[Int]] {
        guard count > 0,
            let model = Surrogate.fit(
                problem: problem, plans: state.evaluated, values: state.values, proxies: proxies,
                ridge: params.surrogateRidge)
        else { return [] }
        var plans: [[Int]] = []
        var scale = params.surrogateExploration
        for attempt in 0..<(2 * count + 1) where plans.count < count {
            var table = model.table
            if attempt > 0 {
                guard scale > 0 else { break }
                for i in table.indices where model.spread[i] > 0 { table[i] += scale * model.spread[i] * normal() }
                guard table.allSatisfy(\.isFinite) else { continue }
            }
            let plan: [Int]
            do {
                plan = try AdditiveSolver.solve(problem, unitCosts: table).plan
            } catch MSPError.infeasible {
                continue  // the budget grid's rare miss: breeding fills the batch
            }
            if state.proposed.insert(Self.key(plan)).inserted {
                plans.append(plan)
            } else if attempt > 0 {
                scale *= 2  // a draw that repeats a plan: the model is too sure here, explore wider
            }
        }
        return plans
    }
}
