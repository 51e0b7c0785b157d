// Problem: layer sizes, level set, groups, bounds and the budget that every plan must meet.

import CMSPHeader

/// A validated planning problem.
///
/// Layers that share a group form one *unit*: a unit gets one level, and its size is the sum of its
/// layers' sizes. Plans are held per unit inside the planner and per layer at the API.
public struct Problem: Sendable {
    /// Parameter count of every layer.
    public let sizes: [Int]
    /// The allowed levels, least sparse first.
    public let levels: LevelSet
    /// Sum of all layer sizes.
    public let totalSize: Int
    /// The unit of every layer.
    public private(set) var unitOf: [Int]
    /// The layers of every unit, in layer order.
    public private(set) var members: [[Int]]
    /// Parameter count of every unit.
    public private(set) var unitSizes: [Int]
    /// Lowest and highest allowed level of every layer.
    public private(set) var layerBounds: [ClosedRange<Int>]
    /// Lowest and highest allowed level of every unit.
    public private(set) var unitBounds: [ClosedRange<Int>]
    /// The average sparsity to reach.
    public private(set) var target = 0.5
    /// The allowed distance from `target`.
    public private(set) var tolerance = 0.001

    /// A problem where every layer is its own unit, unbounded, with target 0.5 and tolerance 0.001.
    /// - Throws: `MSPError.invalidArgument` for no layers, a size <= 0 or sizes whose sum overflows.
    public init(sizes: [Int], levels: LevelSet) throws {
        guard !sizes.isEmpty else { throw MSPError.invalidArgument("num_layers must be > 0") }
        var total = 0
        for (l, size) in sizes.enumerated() {
            guard size > 0 else { throw MSPError.invalidArgument("sizes[\(l)] (\(size)) must be > 0") }
            let (sum, overflow) = total.addingReportingOverflow(size)
            guard !overflow else { throw MSPError.invalidArgument("the sum of sizes overflows int64") }
            total = sum
        }
        self.sizes = sizes
        self.levels = levels
        totalSize = total
        unitOf = Array(sizes.indices)
        members = sizes.indices.map { [$0] }
        unitSizes = sizes
        layerBounds = Array(repeating: 0...(levels.count - 1), count: sizes.count)
        unitBounds = layerBounds
    }

    /// Number of layers.
    public var layerCount: Int { sizes.count }
    /// Number of units.
    public var unitCount: Int { unitSizes.count }

    /// Makes layers with equal group ids share a unit; `nil` gives every layer its own unit.
    /// Units are numbered in order of their first layer.
    /// - Throws: `MSPError.invalidArgument` for a negative id or bounds that do not intersect within
    ///   a group; the problem is unchanged then.
    public mutating func setGroups(_ groups: [Int]?) throws {
        var copy = self
        if let groups {
            var unitOfGroup: [Int: Int] = [:]
            copy.unitOf = []
            copy.members = []
            for (l, g) in groups.enumerated() {
                guard g >= 0 else { throw MSPError.invalidArgument("groups[\(l)] (\(g)) must be >= 0") }
                let unit = unitOfGroup[g] ?? copy.members.count
                if unit == copy.members.count {
                    unitOfGroup[g] = unit
                    copy.members.append([])
                }
                copy.unitOf.append(unit)
                copy.members[unit].append(l)
            }
        } else {
            copy.unitOf = Array(sizes.indices)
            copy.members = sizes.indices.map { [$0] }
        }
        copy.unitSizes = copy.members.map { $0.reduce(0) { $0 + sizes[$1] } }
        try copy.updateUnitBounds()
        self = copy
    }

    /// Bounds every layer's level; `nil` leaves that side unbounded.
    /// - Throws: `MSPError.invalidArgument` for an index outside the level set, min > max, or a
    ///   group whose layers' bounds do not intersect; the problem is unchanged then.
    public mutating func setBounds(min: [Int]?, max: [Int]?) throws {
        var copy = self
        let top = levels.count - 1
        for l in sizes.indices {
            let lo = min?[l] ?? 0, hi = max?[l] ?? top
            guard (0...top).contains(lo) else {
                throw MSPError.invalidArgument("min_level[\(l)] (\(lo)) must be in [0, \(top)]")
            }
            guard (0...top).contains(hi) else {
                throw MSPError.invalidArgument("max_level[\(l)] (\(hi)) must be in [0, \(top)]")
            }
            guard lo <= hi else {
                throw MSPError.invalidArgument("min_level[\(l)] (\(lo)) exceeds max_level[\(l)] (\(hi))")
            }
            copy.layerBounds[l] = lo...hi
        }
        try copy.updateUnitBounds()
        self = copy
    }

    private mutating func updateUnitBounds() throws {
        unitBounds = try members.enumerated().map { unit, layers in
            let lo = layers.map { layerBounds[$0].lowerBound }.max() ?? 0
            let hi = layers.map { layerBounds[$0].upperBound }.min() ?? 0
            guard lo <= hi else {
                throw MSPError.invalidArgument(
                    "the layers of group \(unit) (layers \(layers)) have level bounds that do not intersect")
            }
            return lo...hi
        }
    }

    /// The lowest and highest average sparsity reachable within the bounds.
    public var range: ClosedRange<Double> {
        average(unitBounds.map(\.lowerBound))...average(unitBounds.map(\.upperBound))
    }

    /// Sets the budget.
    /// - Throws: `MSPError.invalidArgument` for a target outside [0, 1) or a tolerance outside
    ///   [0, `MSP_MAX_TOLERANCE`]; `MSPError.infeasible` when no plan reaches the window, with the
    ///   reachable range.
    ///   The problem is unchanged then.
    public mutating func setTarget(_ target: Double, tolerance: Double) throws {
        guard target >= 0, target < 1 else {
            throw MSPError.invalidArgument("target (\(target)) must be in [0, 1)")
        }
        guard tolerance >= 0, tolerance <= MSP_MAX_TOLERANCE else {
            throw MSPError.invalidArgument("tolerance (\(tolerance)) must be in [0, \(MSP_MAX_TOLERANCE)]")
        }
        let reach = range
        guard target + tolerance >= reach.lowerBound - Self.slack, target - tolerance <= reach.upperBound + Self.slack
        else {
            throw MSPError.infeasible(
                "target sparsity \(target) ± \(tolerance) is unreachable: plans within the bounds reach [\(reach.lowerBound), \(reach.upperBound)]"
            )
        }
        self.target = target
        self.tolerance = tolerance
    }

    /// Rounding allowance of budget comparisons.
    static let slack = 1e-12

    /// The average sparsity of a plan given per unit.
    public func average(_ unitLevels: [Int]) -> Double {
        var pruned = 0.0
        for (u, k) in unitLevels.enumerated() { pruned += Double(unitSizes[u]) * levels.sparsity(k) }
        return pruned / Double(totalSize)
    }

    /// Whether an average sparsity meets the budget.
    @inline(__always) public func meetsBudget(_ average: Double) -> Bool {
        abs(average - target) <= tolerance + Self.slack
    }

    /// Whether a per-unit plan is within the bounds and meets the budget.
    public func isFeasible(_ unitLevels: [Int]) -> Bool {
        unitLevels.count == unitCount && zip(unitLevels, unitBounds).allSatisfy { $1.contains($0) }
            && meetsBudget(average(unitLevels))
    }

    /// The per-layer plan of a per-unit plan.
    public func layerPlan(_ unitLevels: [Int]) -> [Int] { unitOf.map { unitLevels[$0] } }

    /// The per-unit plan of a per-layer plan.
    /// - Throws: `MSPError.invalidArgument` for a wrong length, an index outside the bounds, or
    ///   layers of one group with different levels.
    public func unitPlan(_ layerLevels: [Int]) throws -> [Int] {
        guard layerLevels.count == layerCount else {
            throw MSPError.invalidArgument("plan has \(layerLevels.count) levels for \(layerCount) layers")
        }
        var plan = [Int](repeating: -1, count: unitCount)
        for (l, k) in layerLevels.enumerated() {
            guard layerBounds[l].contains(k) else {
                throw MSPError.invalidArgument(
                    "plan[\(l)] (\(k)) is outside layer \(l)'s levels [\(layerBounds[l].lowerBound), \(layerBounds[l].upperBound)]")
            }
            let u = unitOf[l]
            guard plan[u] < 0 || plan[u] == k else {
                throw MSPError.invalidArgument("plan[\(l)] (\(k)) differs from another layer of its group (\(plan[u]))")
            }
            plan[u] = k
        }
        return plan
    }
}
