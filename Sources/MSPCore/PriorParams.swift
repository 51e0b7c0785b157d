// PriorParams: how sensitivities map to a prior plan.

/// How sensitivities map to a prior plan.
public struct PriorParams: Hashable, Sendable {
    /// Spread of sparsity across units (>= 0); 0 gives the uniform plan when it is feasible.
    public var strength: Double
    /// Normalise each unit's sensitivity by its size (mean Fisher per weight) instead of using the total.
    public var perParameter: Bool

    /// Parameters with the given strength and normalisation.
    public init(strength: Double = 1, perParameter: Bool = false) {
        self.strength = strength
        self.perParameter = perParameter
    }
}
