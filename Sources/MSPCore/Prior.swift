// Prior: the sensitivity-informed plan (more sensitive layers get less sparsity).

#if canImport(Glibc)
    import Glibc
#endif

/// The sensitivity prior; the formula is documented at `msp_prior_plan` in include/msp.h.
public enum Prior {
    /// Checks per-layer sensitivities: finite and >= 0.
    /// - Throws: `MSPError.invalidArgument` naming the first bad value.
    public static func validate(_ sensitivity: [Double], layers: Int) throws {
        guard sensitivity.count == layers else {
            throw MSPError.invalidArgument("sensitivity has \(sensitivity.count) values for \(layers) layers")
        }
        if let l = sensitivity.firstIndex(where: { !($0.isFinite && $0 >= 0) }) {
            throw MSPError.invalidArgument("sensitivity[\(l)] (\(sensitivity[l])) must be finite and >= 0")
        }
    }

    /// Log-sensitivity of every unit under `params`' normalisation (zeros raised to the smallest
    /// positive value present).
    static func logSensitivity(_ problem: Problem, _ sensitivity: [Double], _ params: PriorParams) -> [Double] {
        let floor = sensitivity.filter { $0 > 0 }.min() ?? 1
        return problem.members.enumerated().map { u, layers in
            var s = max(layers.reduce(0.0) { $0 + sensitivity[$1] }, floor)
            if params.perParameter { s /= Double(problem.unitSizes[u]) }
            return log(s)
        }
    }

    /// The continuous prior sparsity of every unit: sigmoid(c - strength * z) with c matching the target.
    static func continuous(_ problem: Problem, _ logSensitivity: [Double], strength: Double) -> [Double] {
        let weights = problem.unitSizes.map { Double($0) / Double(problem.totalSize) }
        let mean = zip(weights, logSensitivity).reduce(0.0) { $0 + $1.0 * $1.1 }
        let variance = zip(weights, logSensitivity).reduce(0.0) { $0 + $1.0 * ($1.1 - mean) * ($1.1 - mean) }
        let sd = variance.squareRoot()
        let z = logSensitivity.map { sd > 1e-12 ? ($0 - mean) / sd : 0 }
        let sparsity = { (c: Double) in z.map { 1 / (1 + exp(-(c - strength * $0))) } }
        let average = { (c: Double) in zip(weights, sparsity(c)).reduce(0.0) { $0 + $1.0 * $1.1 } }
        var lo = -60.0, hi = 60.0
        for _ in 0..<200 {
            let mid = (lo + hi) / 2
            if average(mid) < problem.target { lo = mid } else { hi = mid }
        }
        return sparsity((lo + hi) / 2)
    }

    /// The prior plan per unit.
    /// - Parameter sensitivity: per-layer sensitivities, validated with `validate`.
    /// - Throws: `MSPError.invalidArgument` for a negative strength; `MSPError.infeasible`;
    ///   `MSPError.outOfMemory`.
    public static func plan(_ problem: Problem, sensitivity: [Double], params: PriorParams) throws -> [Int] {
        guard params.strength.isFinite, params.strength >= 0 else {
            throw MSPError.invalidArgument("strength (\(params.strength)) must be finite and >= 0")
        }
        try validate(sensitivity, layers: problem.layerCount)
        let logs = logSensitivity(problem, sensitivity, params)
        let ideal = continuous(problem, logs, strength: params.strength)
        let levels = problem.levels
        var costs = [Double](repeating: 0, count: problem.unitCount * levels.count)
        for u in 0..<problem.unitCount {
            for k in 0..<levels.count {
                let d = levels.sparsity(k) - ideal[u]
                costs[u * levels.count + k] = Double(problem.unitSizes[u]) / Double(problem.totalSize) * d * d
            }
        }
        var plan = try AdditiveSolver.solve(problem, unitCosts: costs).plan
        // Among units of equal size and bounds, hand out the chosen levels in sensitivity order.
        var classes: [[Int]: [Int]] = [:]
        var classOrder: [[Int]] = []
        for u in 0..<problem.unitCount {
            let key = [problem.unitSizes[u], problem.unitBounds[u].lowerBound, problem.unitBounds[u].upperBound]
            if classes[key] == nil { classOrder.append(key) }
            classes[key, default: []].append(u)
        }
        for key in classOrder {
            let units = classes[key] ?? []
            let chosen = units.map { plan[$0] }.sorted()
            let bySensitivity = units.sorted { logs[$0] != logs[$1] ? logs[$0] > logs[$1] : $0 < $1 }
            for (u, k) in zip(bySensitivity, chosen) { plan[u] = k }
        }
        return plan
    }
}
