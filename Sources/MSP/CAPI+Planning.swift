// CAPI+Planning: problems, the sensitivity prior and the exact solver.

import CMSPHeader
import MSPCore

/// The object behind an `msp_problem *`: a box, since the setters change the problem in place.
final class ProblemHandle {
    /// The problem, replaced by each successful setter.
    var problem: Problem
    init(_ problem: Problem) { self.problem = problem }
}

/// Per-layer plan indices as C `int32_t`s.
func writePlan(_ plan: [Int], to out: UnsafeMutablePointer<Int32>) {
    for (l, k) in plan.enumerated() { out[l] = Int32(k) }
}

/// Creates a problem; see `include/msp.h`.
@_cdecl("msp_problem_create")
public func msp_problem_create(
    _ sizes: UnsafePointer<Int64>?, _ num_layers: Int64, _ levels: UnsafePointer<msp_level>?, _ num_levels: Int64,
    _ out: UnsafeMutablePointer<OpaquePointer?>?
) -> msp_status {
    boundary {
        let out = try required(out, "out")
        guard num_layers > 0, num_layers <= Int64(MSP_MAX_LAYERS) else {
            throw MSPError.invalidArgument("num_layers (\(num_layers)) must be in [1, \(MSP_MAX_LAYERS)]")
        }
        let sizes = try array(sizes, Int(num_layers), "sizes").map { Int($0) }
        let problem = try Problem(sizes: sizes, levels: try levelSet(levels, num_levels))
        out.pointee = retained(ProblemHandle(problem))
    }
}

/// Releases a problem; accepts NULL.
@_cdecl("msp_problem_free")
public func msp_problem_free(_ problem: OpaquePointer?) {
    release(problem, as: ProblemHandle.self)
}

/// Sets groups; see `include/msp.h`.
@_cdecl("msp_problem_set_groups")
public func msp_problem_set_groups(_ problem: OpaquePointer?, _ groups: UnsafePointer<Int64>?) -> msp_status {
    boundary {
        let box: ProblemHandle = try handle(problem, "problem")
        let count = box.problem.layerCount
        try box.problem.setGroups(groups.map { g in (0..<count).map { Int(g[$0]) } })
    }
}

/// Sets level bounds; see `include/msp.h`.
@_cdecl("msp_problem_set_bounds")
public func msp_problem_set_bounds(
    _ problem: OpaquePointer?, _ min_level: UnsafePointer<Int32>?, _ max_level: UnsafePointer<Int32>?
) -> msp_status {
    boundary {
        let box: ProblemHandle = try handle(problem, "problem")
        let count = box.problem.layerCount
        try box.problem.setBounds(
            min: min_level.map { p in (0..<count).map { Int(p[$0]) } },
            max: max_level.map { p in (0..<count).map { Int(p[$0]) } })
    }
}

/// Sets the budget; see `include/msp.h`.
@_cdecl("msp_problem_set_target")
public func msp_problem_set_target(_ problem: OpaquePointer?, _ target: Double, _ tolerance: Double) -> msp_status {
    boundary {
        let box: ProblemHandle = try handle(problem, "problem")
        try box.problem.setTarget(target, tolerance: tolerance)
    }
}

/// The reachable range of average sparsity; see `include/msp.h`.
@_cdecl("msp_problem_range")
public func msp_problem_range(
    _ problem: OpaquePointer?, _ min_sparsity: UnsafeMutablePointer<Double>?, _ max_sparsity: UnsafeMutablePointer<Double>?
) -> msp_status {
    boundary {
        let range = try (handle(problem, "problem") as ProblemHandle).problem.range
        let lo = try required(min_sparsity, "min_sparsity"), hi = try required(max_sparsity, "max_sparsity")
        lo.pointee = range.lowerBound
        hi.pointee = range.upperBound
    }
}

/// Checks a plan; see `include/msp.h`.
@_cdecl("msp_problem_check_plan")
public func msp_problem_check_plan(
    _ problem: OpaquePointer?, _ plan: UnsafePointer<Int32>?, _ average_out: UnsafeMutablePointer<Double>?
) -> msp_status {
    boundary {
        let problem = try (handle(problem, "problem") as ProblemHandle).problem
        let out = try required(average_out, "average_out")
        let units = try problem.unitPlan(try array(plan, problem.layerCount, "plan").map { Int($0) })
        let average = problem.average(units)
        out.pointee = average
        guard problem.meetsBudget(average) else {
            throw MSPError.infeasible(
                "plan's average sparsity \(average) misses target \(problem.target) ± \(problem.tolerance)")
        }
    }
}

/// The default prior parameters.
@_cdecl("msp_prior_params_default")
public func msp_prior_params_default() -> msp_prior_params {
    let defaults = PriorParams()
    return msp_prior_params(
        struct_size: UInt32(MemoryLayout<msp_prior_params>.size), strength: defaults.strength,
        per_parameter: defaults.perParameter ? 1 : 0)
}

/// The sensitivity prior plan; see `include/msp.h`.
@_cdecl("msp_prior_plan")
public func msp_prior_plan(
    _ problem: OpaquePointer?, _ sensitivity: UnsafePointer<Double>?, _ params: UnsafePointer<msp_prior_params>?,
    _ plan_out: UnsafeMutablePointer<Int32>?
) -> msp_status {
    boundary {
        let problem = try (handle(problem, "problem") as ProblemHandle).problem
        let out = try required(plan_out, "plan_out")
        let sensitivity = try array(sensitivity, problem.layerCount, "sensitivity")
        let c = try checkedParams(params, "params") ?? msp_prior_params_default()
        let plan = try Prior.plan(
            problem, sensitivity: sensitivity, params: PriorParams(strength: c.strength, perParameter: c.per_parameter != 0))
        writePlan(problem.layerPlan(plan), to: out)
    }
}

/// The exact optimum of additive costs; see `include/msp.h`.
@_cdecl("msp_solve_additive")
public func msp_solve_additive(
    _ problem: OpaquePointer?, _ costs: UnsafePointer<Double>?, _ plan_out: UnsafeMutablePointer<Int32>?,
    _ total_out: UnsafeMutablePointer<Double>?
) -> msp_status {
    boundary {
        let problem = try (handle(problem, "problem") as ProblemHandle).problem
        let out = try required(plan_out, "plan_out")
        let layerCosts = try array(costs, problem.layerCount * problem.levels.count, "costs")
        if let bad = layerCosts.firstIndex(where: { !$0.isFinite }) {
            let k = problem.levels.count
            throw MSPError.invalidArgument("costs[\(bad / k)][\(bad % k)] (\(layerCosts[bad])) is not finite")
        }
        let solved = try AdditiveSolver.solve(problem, unitCosts: AdditiveSolver.unitCosts(problem, layerCosts: layerCosts))
        writePlan(problem.layerPlan(solved.plan), to: out)
        total_out?.pointee = solved.cost
    }
}

/// Converts a C level array into a `LevelSet`: n = m = 0 is an unstructured level, otherwise an
/// N:M level whose sparsity must equal 1 - n/m.
/// - Throws: `MSPError.invalidArgument` for NULL, a count outside [1, `MSP_MAX_LEVELS`], an inconsistent level
///   or sparsities that do not strictly increase.
func levelSet(_ levels: UnsafePointer<msp_level>?, _ count: Int64) throws -> LevelSet {
    guard count >= 1, count <= Int64(MSP_MAX_LEVELS) else {
        throw MSPError.invalidArgument("num_levels (\(count)) must be in [1, \(MSP_MAX_LEVELS)]")
    }
    let raw = try array(levels, Int(count), "levels")
    return try LevelSet(
        raw.enumerated().map { k, level in
            if level.n == 0 && level.m == 0 { return try Level(sparsity: level.sparsity) }
            let nm = try Level(n: Int(level.n), m: Int(level.m))
            guard abs(nm.sparsity - level.sparsity) <= MSP_LEVEL_SPARSITY_TOLERANCE else {
                throw MSPError.invalidArgument(
                    "levels[\(k)]: sparsity \(level.sparsity) differs from 1 - n/m for \(level.n):\(level.m)")
            }
            return nm
        })
}
