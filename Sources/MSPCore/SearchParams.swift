// SearchParams: the settings of the evolutionary search.

import CMSPHeader

/// Settings of `Search`; the defaults suit a few hundred fitness evaluations.
public struct SearchParams: Sendable, Equatable {
    /// Generations after the prior grid (> 0).
    public var generations = 20
    /// New plans per generation (> 0).
    public var offspring = 8
    /// Best plans kept as parents (> 0).
    public var survivors = 4
    /// Chance per offspring of each extra mutation move, in [0, 1].
    public var mutationRate = 0.5
    /// Chance an offspring has two parents, in [0, 1].
    public var crossoverRate = 0.5
    /// Random seed.
    public var seed: UInt64 = 0
    /// The seed prior when `priorGrid` is off.
    public var prior = PriorParams()
    /// First evaluate priors at strengths {0, 0.5, 1, 2} with both normalisations.
    public var priorGrid = true
    /// Stop after this many full-fidelity evaluations; 0 = no limit.
    public var maxEvaluations = 0
    /// Stop after this many generations without improvement; 0 = never.
    public var patience = 0
    /// Fidelity levels (>= 1); offspring climb them, the best `fidelityKeep` fraction at each step.
    public var fidelityLevels = 1
    /// Fraction of a batch promoted to the next fidelity, in (0, 1].
    public var fidelityKeep = 0.25
    /// Offspring per generation proposed by the surrogate (the exact optimum of an additive model
    /// fitted to every full-fidelity evaluation), in [0, MSP_MAX_OFFSPRING]; at most `offspring` are used;
    /// 0 = off.
    public var surrogateCandidates = 2
    /// Ridge strength of the surrogate: how many evaluations' weight pulls each (unit, level)
    /// correction toward the proxy tables (toward 0 without them); finite, > 0.
    public var surrogateRidge = 0.3
    /// Scale of the random perturbation of the surrogate for its second and later candidates of a
    /// generation (0 = the unperturbed model only); finite, >= 0.
    public var surrogateExploration = 1.0
    /// Chance that a mutation move of one unit is paired with the opposite move of the unit that
    /// best restores the budget, in [0, 1].
    public var pairRate = 0.3

    /// The defaults.
    public init() {}

    /// Strengths of the prior grid.
    public static let gridStrengths = [0, 0.5, 1, 2]

    /// Checks every field's range.
    /// - Throws: `MSPError.invalidArgument` naming the first bad field.
    public func validate() throws {
        func check(_ ok: Bool, _ message: @autoclosure () -> String) throws {
            if !ok { throw MSPError.invalidArgument(message()) }
        }
        try check(generations > 0, "generations (\(generations)) must be > 0")
        try check(
            offspring > 0 && offspring <= MSP_MAX_OFFSPRING,
            "offspring (\(offspring)) must be in [1, \(MSP_MAX_OFFSPRING)]")
        try check(
            survivors > 0 && survivors <= MSP_MAX_SURVIVORS,
            "survivors (\(survivors)) must be in [1, \(MSP_MAX_SURVIVORS)]")
        try check((0...1).contains(mutationRate), "mutation_rate (\(mutationRate)) must be in [0, 1]")
        try check((0...1).contains(crossoverRate), "crossover_rate (\(crossoverRate)) must be in [0, 1]")
        try check(prior.strength.isFinite && prior.strength >= 0, "prior_strength (\(prior.strength)) must be >= 0")
        try check(maxEvaluations >= 0, "max_evaluations (\(maxEvaluations)) must be >= 0")
        try check(patience >= 0, "patience (\(patience)) must be >= 0")
        try check(
            fidelityLevels >= 1 && fidelityLevels <= MSP_MAX_FIDELITY_LEVELS,
            "fidelity_levels (\(fidelityLevels)) must be in [1, \(MSP_MAX_FIDELITY_LEVELS)]")
        try check(fidelityKeep > 0 && fidelityKeep <= 1, "fidelity_keep (\(fidelityKeep)) must be in (0, 1]")
        try check(
            surrogateCandidates >= 0 && surrogateCandidates <= MSP_MAX_OFFSPRING,
            "surrogate_candidates (\(surrogateCandidates)) must be in [0, \(MSP_MAX_OFFSPRING)]")
        try check(
            surrogateRidge.isFinite && surrogateRidge > 0, "surrogate_ridge (\(surrogateRidge)) must be finite and > 0")
        try check(
            surrogateExploration.isFinite && surrogateExploration >= 0,
            "surrogate_exploration (\(surrogateExploration)) must be finite and >= 0")
        try check((0...1).contains(pairRate), "pair_rate (\(pairRate)) must be in [0, 1]")
    }
}
