// SearchState: everything a search changes as it runs, which a checkpoint stores.

/// The mutable state of a `Search`. Plans are per unit.
struct SearchState {
    /// The generator of every random choice.
    var rng: SplitMix64
    /// Every plan proposed so far (per-unit levels as bytes).
    var proposed: Set<[UInt8]> = []
    /// The best plans so far, best first (ties: first evaluated first), at most `survivors`.
    var population: [(plan: [Int], fitness: Double)] = []
    /// The batch asked and not yet told.
    var pending: Search.Batch?
    /// Generation 0: the prior plans, then the optimum of each proxy table.
    var priors: [[Int]] = []
    /// The plans of the generation in progress at its current fidelity.
    var stagePlans: [[Int]] = []
    /// The fidelity of `stagePlans`.
    var stage = 0
    /// Generations completed since the best fitness last improved.
    var sinceImprovement = 0
    /// Generations completed; -1 before generation 0 completes.
    var generation = -1
    /// Whether the search has finished.
    var isDone = false
    /// Whether `ask` has been called (proxy tables may be added only before).
    var started = false
    /// Lower-fidelity evaluations told.
    var cheapEvaluations = 0
    /// The best fitness after each completed generation.
    var history: [Double] = []
    /// Every plan evaluated at full fidelity, `unitCount` levels each, in the order told.
    var evaluated: [UInt8] = []
    /// The full-fidelity fitness of each plan of `evaluated`.
    var values: [Double] = []

    /// The state of a new search.
    init(seed: UInt64) { rng = SplitMix64(seed: seed) }
}
