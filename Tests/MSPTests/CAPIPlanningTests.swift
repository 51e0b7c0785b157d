// Calls the planning entry points (msp_problem_*, msp_prior_plan, msp_solve_additive) through the
// declarations of include/msp.h, as a C program does: results against brute force over every plan
// and hand-checked cases, and bad input that leaves every out-buffer and the problem unchanged.

import CMSPHeader
import MSPCore
import Testing

/// The calling thread's last error message.
private func lastError() -> String { String(cString: msp_last_error_message()!) }

/// A problem made through the C API; freed with the instance.
private final class CProblem {
    let pointer: OpaquePointer?
    let sizes: [Int64]
    let sparsity: [Double]

    init(_ sizes: [Int64], _ levels: [msp_level]) {
        var out: OpaquePointer?
        let status = msp_problem_create(sizes, Int64(sizes.count), levels, Int64(levels.count), &out)
        #expect(status == MSP_OK, "\(lastError())")
        pointer = out
        self.sizes = sizes
        sparsity = levels.map(\.sparsity)
    }

    deinit { msp_problem_free(pointer) }

    /// The size-weighted average sparsity of a per-layer plan, in the order the header defines it.
    func average(_ plan: [Int32]) -> Double {
        let total = sizes.reduce(0) { $0 + Double($1) }
        return zip(sizes, plan).reduce(0.0) { $0 + Double($1.0) * sparsity[Int($1.1)] } / total
    }

    /// The outcome of one call that writes a plan: its status and the plan buffer afterwards
    /// (preset to -7, so an untouched buffer reads all -7).
    func plan(_ call: (OpaquePointer?, UnsafeMutablePointer<Int32>) -> msp_status) -> (msp_status, [Int32]) {
        var plan = [Int32](repeating: -7, count: sizes.count)
        let status = call(pointer, &plan)
        return (status, plan)
    }
}

/// A level array of unstructured sparsities.
private func ratios(_ sparsities: [Double]) -> [msp_level] { sparsities.map { msp_level(sparsity: $0, n: 0, m: 0) } }

/// The reference: every plan with one level per group within the bounds, and those within
/// `tolerance` of `target`; the cheapest of those by brute force (nil when none is feasible).
private func bruteForce(
    _ problem: CProblem, groups: [Int], bounds: [ClosedRange<Int>], target: Double, tolerance: Double, costs: [Double]
) -> Double? {
    let layers = problem.sizes.count, levels = problem.sparsity.count
    let groupIds = Array(Set(groups)).sorted()
    var best: Double?
    var choice = [Int](repeating: 0, count: groupIds.count)
    while true {
        let plan = groups.map { g in Int32(choice[groupIds.firstIndex(of: g)!]) }
        let inBounds = (0..<layers).allSatisfy { bounds[$0].contains(Int(plan[$0])) }
        if inBounds && abs(problem.average(plan) - target) <= tolerance {
            let cost = (0..<layers).reduce(0.0) { $0 + costs[$1 * levels + Int(plan[$1])] }
            if best.map({ cost < $0 }) ?? true { best = cost }
        }
        var g = 0
        while g < choice.count && choice[g] == levels - 1 {
            choice[g] = 0
            g += 1
        }
        if g == choice.count { return best }
        choice[g] += 1
    }
}

@Suite("Planning entry points: brute-force and hand-checked results, bad input rejected unchanged")
struct CAPIPlanningTests {
    @Test func rangeAndCheckPlanAreHandChecked() {
        // 100 and 300 parameters at 0%, 50%, 80%: averages are (100 s0 + 300 s1) / 400.
        let problem = CProblem([100, 300], ratios([0, 0.5, 0.8]))
        defer { withExtendedLifetime(problem) {} }
        var lo = -1.0, hi = -1.0
        #expect(msp_problem_range(problem.pointer, &lo, &hi) == MSP_OK)
        #expect((lo, hi) == (0, 0.8))
        #expect(msp_problem_set_target(problem.pointer, 0.5, 0.01) == MSP_OK)
        var average = -1.0
        // (0.8 * 100 + 0.5 * 300) / 400 = 0.575: outside 0.5 ± 0.01, reported with its average.
        #expect(msp_problem_check_plan(problem.pointer, [2, 1], &average) == MSP_ERR_INFEASIBLE)
        #expect(average == 0.575)
        #expect(lastError().contains("plan's average sparsity 0.575 misses target 0.5 ± 0.01"), "\(lastError())")
        #expect(msp_problem_check_plan(problem.pointer, [1, 1], &average) == MSP_OK)
        #expect(average == 0.5)
        // Bounds narrow the range: layer 0 at least 50%, layer 1 at most 50%.
        #expect(msp_problem_set_bounds(problem.pointer, [1, 0], [2, 1]) == MSP_OK)
        #expect(msp_problem_range(problem.pointer, &lo, &hi) == MSP_OK)
        #expect((lo, hi) == (0.125, 0.575))
        // A plan outside the bounds is invalid, not merely infeasible, and average_out is untouched.
        average = -1
        #expect(msp_problem_check_plan(problem.pointer, [0, 1], &average) == MSP_ERR_INVALID_ARGUMENT)
        #expect(lastError() == "plan[0] (0) is outside layer 0's levels [1, 2]")
        #expect(average == -1)
        // Groups: both layers share one level.
        #expect(msp_problem_set_bounds(problem.pointer, nil, nil) == MSP_OK)
        #expect(msp_problem_set_groups(problem.pointer, [4, 4]) == MSP_OK)
        #expect(msp_problem_check_plan(problem.pointer, [1, 2], &average) == MSP_ERR_INVALID_ARGUMENT)
        #expect(lastError() == "plan[1] (2) differs from another layer of its group (1)")
        #expect(average == -1)
    }

    @Test func createRejectsBadInputWithoutWritingTheHandle() {
        let marker = OpaquePointer(bitPattern: 0xDEAD)
        let good = ratios([0, 0.5])
        let cases: [([Int64]?, Int64, [msp_level]?, Int64, String)] = [
            (nil, 2, good, 2, "sizes is NULL"),
            ([1, 2], 2, nil, 2, "levels is NULL"),
            ([1, 2], 0, good, 2, "num_layers (0) must be in [1, \(MSP_MAX_LAYERS)]"),
            ([1, 2], -1, good, 2, "num_layers (-1)"),
            ([1, 2], 2, good, 0, "num_levels (0) must be in [1, \(MSP_MAX_LEVELS)]"),
            ([1, 0], 2, good, 2, "sizes[1] (0) must be > 0"),
            ([-5, 1], 2, good, 2, "sizes[0] (-5) must be > 0"),
            ([Int64.max, 1], 2, good, 2, "the sum of sizes overflows int64"),
            ([1, 2], 2, ratios([0.5, 0.5]), 2, "strictly increasing sparsity"),
            ([1, 2], 2, ratios([0.5, 1]), 2, "level sparsity (1.0) must be in [0, 1)"),
            ([1, 2], 2, ratios([-0.1, 0.5]), 2, "level sparsity (-0.1) must be in [0, 1)"),
            ([1, 2], 2, [msp_level(sparsity: 0.5, n: 1, m: 4), msp_level(sparsity: 0.9, n: 0, m: 0)], 2,
             "sparsity 0.5 differs from 1 - n/m for 1:4"),
            ([1, 2], 2, [msp_level(sparsity: 0, n: 5, m: 4)], 1, "level 5:4 must have 0 < n <= m"),
            ([1, 2], 2, [msp_level(sparsity: 0, n: 0, m: 4)], 1, "level 0:4 must have 0 < n <= m"),
        ]
        for (sizes, count, levels, levelCount, message) in cases {
            var out = marker
            #expect(msp_problem_create(sizes, count, levels, levelCount, &out) == MSP_ERR_INVALID_ARGUMENT, "\(message)")
            #expect(lastError().contains(message), "\(lastError())")
            #expect(out == marker)
        }
        #expect(msp_problem_create([1], 1, good, 2, nil) == MSP_ERR_INVALID_ARGUMENT)
        #expect(lastError() == "out is NULL")
        msp_problem_free(nil)
    }

    @Test func settersRejectBadInputAndLeaveTheProblemUnchanged() {
        let problem = CProblem([100, 300, 400], ratios([0, 0.25, 0.5, 0.75]))
        defer { withExtendedLifetime(problem) {} }
        #expect(msp_problem_set_target(problem.pointer, 0.5, 0.001) == MSP_OK)
        var average = -1.0
        /// Still the problem set up above: the budget 0.5 ± 0.001, no groups, no bounds.
        func unchanged(sourceLocation: SourceLocation = #_sourceLocation) {
            var lo = -1.0, hi = -1.0
            #expect(msp_problem_range(problem.pointer, &lo, &hi) == MSP_OK, sourceLocation: sourceLocation)
            #expect((lo, hi) == (0, 0.75), sourceLocation: sourceLocation)
            // Plans that give every layer several levels and miss the budget (0.40625, 0.53125,
            // 0.5625): infeasible, not invalid, while no groups or bounds hold; then one that meets it.
            #expect(msp_problem_check_plan(problem.pointer, [3, 2, 1], &average) == MSP_ERR_INFEASIBLE, sourceLocation: sourceLocation)
            #expect(msp_problem_check_plan(problem.pointer, [2, 1, 3], &average) == MSP_ERR_INFEASIBLE, sourceLocation: sourceLocation)
            #expect(msp_problem_check_plan(problem.pointer, [0, 2, 3], &average) == MSP_ERR_INFEASIBLE, sourceLocation: sourceLocation)
            #expect(msp_problem_check_plan(problem.pointer, [2, 2, 2], &average) == MSP_OK, sourceLocation: sourceLocation)
        }
        let targets: [(Double, Double, msp_status, String)] = [
            (1, 0.001, MSP_ERR_INVALID_ARGUMENT, "target (1.0) must be in [0, 1)"),
            (-0.1, 0.001, MSP_ERR_INVALID_ARGUMENT, "target (-0.1)"),
            (.nan, 0.001, MSP_ERR_INVALID_ARGUMENT, "target (nan)"),
            (0.5, -0.001, MSP_ERR_INVALID_ARGUMENT, "tolerance (-0.001) must be in [0, \(MSP_MAX_TOLERANCE)]"),
            (0.5, .nan, MSP_ERR_INVALID_ARGUMENT, "tolerance (nan)"),
            (0.9, 0.1, MSP_ERR_INFEASIBLE, "target sparsity 0.9 ± 0.1 is unreachable: plans within the bounds reach [0.0, 0.75]"),
        ]
        for (target, tolerance, status, message) in targets {
            #expect(msp_problem_set_target(problem.pointer, target, tolerance) == status)
            #expect(lastError().contains(message), "\(lastError())")
            unchanged()
        }
        #expect(msp_problem_set_groups(problem.pointer, [0, -1, 0]) == MSP_ERR_INVALID_ARGUMENT)
        #expect(lastError() == "groups[1] (-1) must be >= 0")
        unchanged()
        let bounds: [([Int32]?, [Int32]?, String)] = [
            ([0, 4, 0], nil, "min_level[1] (4) must be in [0, 3]"),
            (nil, [3, 3, -1], "max_level[2] (-1) must be in [0, 3]"),
            ([2, 0, 0], [1, 3, 3], "min_level[0] (2) exceeds max_level[0] (1)"),
        ]
        for (lo, hi, message) in bounds {
            #expect(msp_problem_set_bounds(problem.pointer, lo, hi) == MSP_ERR_INVALID_ARGUMENT)
            #expect(lastError() == message)
            unchanged()
        }
        // Bounds that a later grouping makes disjoint: the grouping is refused.
        #expect(msp_problem_set_bounds(problem.pointer, [0, 0, 3], [1, 3, 3]) == MSP_OK)
        #expect(msp_problem_set_groups(problem.pointer, [7, 8, 7]) == MSP_ERR_INVALID_ARGUMENT)
        #expect(lastError().contains("have level bounds that do not intersect"), "\(lastError())")
        #expect(msp_problem_set_bounds(problem.pointer, nil, nil) == MSP_OK)
        unchanged()
        // NULL handles and outputs.
        var lo = -1.0, hi = -1.0
        #expect(msp_problem_set_target(nil, 0.5, 0.1) == MSP_ERR_INVALID_ARGUMENT)
        #expect(lastError() == "problem is NULL")
        #expect(msp_problem_set_groups(nil, nil) == MSP_ERR_INVALID_ARGUMENT)
        #expect(msp_problem_set_bounds(nil, nil, nil) == MSP_ERR_INVALID_ARGUMENT)
        #expect(msp_problem_range(nil, &lo, &hi) == MSP_ERR_INVALID_ARGUMENT)
        #expect(msp_problem_range(problem.pointer, &lo, nil) == MSP_ERR_INVALID_ARGUMENT)
        #expect(lastError() == "max_sparsity is NULL")
        #expect(msp_problem_range(problem.pointer, nil, &hi) == MSP_ERR_INVALID_ARGUMENT)
        #expect(lo == -1 && hi == -1)
        #expect(msp_problem_check_plan(problem.pointer, nil, &average) == MSP_ERR_INVALID_ARGUMENT)
        #expect(lastError() == "plan is NULL")
        #expect(msp_problem_check_plan(problem.pointer, [0, 0, 0], nil) == MSP_ERR_INVALID_ARGUMENT)
        #expect(lastError() == "average_out is NULL")
    }

    /// A random small problem (up to 4^5 plans): sizes that are multiples of 16 and sparsities that
    /// are eighths (N:8 or unstructured levels), so distinct plan averages lie at least 2 / total
    /// apart; groups and bounds on some seeds.
    private func smallProblem(seed: Int) -> (CProblem, groups: [Int], bounds: [ClosedRange<Int>], rng: SplitMix64) {
        var rng = SplitMix64(seed: UInt64(seed) &* 7919 &+ 3)
        let layers = 1 + Int(rng.next() % 5), levelCount = 2 + Int(rng.next() % 3)
        let sizes = (0..<layers).map { _ in Int64(1 + rng.next() % 50) * 16 }
        let eighths = Array((0..<8).shuffled(using: &rng).prefix(levelCount)).sorted()
        let levels = eighths.map { k in
            seed % 2 == 0
                ? msp_level(sparsity: Double(k) / 8, n: 0, m: 0) : msp_level(sparsity: Double(k) / 8, n: Int32(8 - k), m: 8)
        }
        let problem = CProblem(sizes, levels)
        let groups = seed % 3 == 1 ? (0..<layers).map { $0 / 2 } : Array(0..<layers)
        if seed % 3 == 1 { #expect(msp_problem_set_groups(problem.pointer, groups.map { Int64($0) }) == MSP_OK) }
        var bounds = [ClosedRange<Int>](repeating: 0...(levelCount - 1), count: layers)
        if seed % 4 == 2 {
            bounds = (0..<layers).map { groups[$0] % 2 == 0 ? 0...(levelCount - 2) : 1...(levelCount - 1) }
            #expect(msp_problem_set_bounds(problem.pointer, bounds.map { Int32($0.lowerBound) },
                                           bounds.map { Int32($0.upperBound) }) == MSP_OK)
        }
        return (problem, groups, bounds, rng)
    }

    /// Checks a plan the solver returned: within the bounds, one level per group, within the
    /// tolerance, of the cost total_out reported, and accepted by msp_problem_check_plan.
    private func expectFeasible(
        _ plan: [Int32], total: Double, _ problem: CProblem, groups: [Int], bounds: [ClosedRange<Int>],
        target: Double, tolerance: Double, costs: [Double], sourceLocation: SourceLocation = #_sourceLocation
    ) {
        let layers = plan.count, levels = problem.sparsity.count
        #expect(abs(problem.average(plan) - target) <= tolerance + 1e-12, sourceLocation: sourceLocation)
        #expect((0..<layers).allSatisfy { bounds[$0].contains(Int(plan[$0])) }, sourceLocation: sourceLocation)
        #expect((0..<layers).allSatisfy { l in (0..<layers).allSatisfy { groups[$0] != groups[l] || plan[$0] == plan[l] } },
                sourceLocation: sourceLocation)
        #expect((0..<layers).reduce(0.0) { $0 + costs[$1 * levels + Int(plan[$1])] } == total, sourceLocation: sourceLocation)
        var average = -1.0
        #expect(msp_problem_check_plan(problem.pointer, plan, &average) == MSP_OK, sourceLocation: sourceLocation)
    }

    /// With a tolerance below the 2 / total between distinct averages, the solver's budget cells
    /// (at most tolerance / groups wide) never mix plans of different averages, so its answer is
    /// the exact optimum: the same least cost as brute force, on a feasible plan.
    @Test(arguments: 0..<40)
    func solveAdditiveMatchesBruteForce(seed: Int) {
        var (problem, groups, bounds, rng) = smallProblem(seed: seed)
        defer { withExtendedLifetime(problem) {} }
        let layers = problem.sizes.count, levels = problem.sparsity.count
        let total = Double(problem.sizes.reduce(0, +))
        let tolerance = seed % 3 == 0 ? 0 : 1.8 / total
        // The target: the average of a random plan within the bounds, moved by less than the tolerance.
        let groupLevel = Dictionary(groups.map { ($0, Int32(0)) }, uniquingKeysWith: { a, _ in a }).mapValues { _ in rng.next() }
        let anchor = (0..<layers).map { l in Int32(bounds[l].lowerBound + Int(groupLevel[groups[l]]! % UInt64(bounds[l].count))) }
        let average = problem.average(anchor), offset = 0.4 * tolerance
        let target = seed % 4 < 2 || average < offset ? average + offset : average - offset
        // Integer costs: every sum is exact in any order.
        let costs = (0..<(layers * levels)).map { _ in Double(rng.next() % (seed % 5 == 0 ? 3 : 1000)) }
        let reference = bruteForce(problem, groups: groups, bounds: bounds, target: target, tolerance: tolerance + 1e-12, costs: costs)
        #expect(msp_problem_set_target(problem.pointer, target, tolerance) == MSP_OK, "\(lastError())")
        var totalOut = -1.0
        let (status, plan) = problem.plan { msp_solve_additive($0, costs, $1, &totalOut) }
        guard status == MSP_OK else {
            Issue.record("msp_solve_additive: \(status) \(lastError())")
            return
        }
        #expect(totalOut == reference)
        expectFeasible(plan, total: totalOut, problem, groups: groups, bounds: bounds, target: target,
                       tolerance: tolerance, costs: costs)
        // total_out may be NULL.
        #expect(problem.plan { msp_solve_additive($0, costs, $1, nil) } == (MSP_OK, plan))
    }

    /// Wider windows: the plan is feasible and never cheaper than the optimum (msp.h documents that
    /// a cell shared with a cheaper plan outside the tolerance can hide the optimum), and an
    /// infeasible report comes only when brute force finds no plan either, or from that rare miss.
    @Test(arguments: 0..<40)
    func solveAdditiveIsFeasibleForWideWindows(seed: Int) {
        var (problem, groups, bounds, rng) = smallProblem(seed: seed)
        defer { withExtendedLifetime(problem) {} }
        let layers = problem.sizes.count, levels = problem.sparsity.count
        let target = 0.1 + 0.6 * Double(rng.next() % 1000) / 1000, tolerance = [0.02, 0.05, 0.1][seed % 3]
        let costs = (0..<(layers * levels)).map { _ in Double(rng.next() % 1000) }
        let reference = bruteForce(problem, groups: groups, bounds: bounds, target: target, tolerance: tolerance, costs: costs)
        guard msp_problem_set_target(problem.pointer, target, tolerance) == MSP_OK else {
            // The window misses the reachable range: no plan lands in it.
            #expect(reference == nil)
            return
        }
        var totalOut = -1.0
        let (status, plan) = problem.plan { msp_solve_additive($0, costs, $1, &totalOut) }
        guard status == MSP_OK else {
            #expect(status == MSP_ERR_INFEASIBLE)
            #expect(plan.allSatisfy { $0 == -7 } && totalOut == -1)
            return
        }
        #expect(reference.map { totalOut >= $0 } ?? false)
        expectFeasible(plan, total: totalOut, problem, groups: groups, bounds: bounds, target: target,
                       tolerance: tolerance, costs: costs)
    }

    @Test func solveAdditiveRejectsBadInputWithoutWriting() {
        let problem = CProblem([10, 10], ratios([0, 0.5, 0.6]))
        defer { withExtendedLifetime(problem) {} }
        #expect(msp_problem_set_target(problem.pointer, 0.3, 0.05) == MSP_OK)
        var total = -1.0
        let costs: [Double] = [0, 1, 2, 0, 1, .infinity]
        let cases: [(OpaquePointer?, [Double]?, Bool, msp_status, String)] = [
            (nil, [0, 0, 0, 0, 0, 0], true, MSP_ERR_INVALID_ARGUMENT, "problem is NULL"),
            (problem.pointer, nil, true, MSP_ERR_INVALID_ARGUMENT, "costs is NULL"),
            (problem.pointer, [0, 0, 0, 0, 0, 0], false, MSP_ERR_INVALID_ARGUMENT, "plan_out is NULL"),
            (problem.pointer, costs, true, MSP_ERR_INVALID_ARGUMENT, "costs[1][2] (inf) is not finite"),
            (problem.pointer, [0, .nan, 0, 0, 0, 0], true, MSP_ERR_INVALID_ARGUMENT, "costs[0][1] (nan) is not finite"),
        ]
        for (pointer, costs, hasOut, status, message) in cases {
            var plan: [Int32] = [-7, -7]
            let got = hasOut
                ? msp_solve_additive(pointer, costs, &plan, &total) : msp_solve_additive(pointer, costs, nil, &total)
            #expect(got == status)
            #expect(lastError() == message)
            #expect(plan == [-7, -7] && total == -1)
        }
        // 0.3 ± 0: the averages are 0, 0.25, 0.3, 0.5, 0.55, 0.6: reachable only as (0, 0.6) or (0.6, 0).
        #expect(msp_problem_set_target(problem.pointer, 0.3, 0) == MSP_OK)
        #expect(problem.plan { msp_solve_additive($0, [0, 1, 2, 0, 1, 5], $1, &total) } == (MSP_OK, [2, 0]))
        #expect(total == 2)
        // 0.27 ± 0.01 lies within the range but no plan lands in it.
        #expect(msp_problem_set_target(problem.pointer, 0.27, 0.01) == MSP_OK)
        total = -1
        #expect(problem.plan { msp_solve_additive($0, [0, 1, 2, 0, 1, 5], $1, &total) } == (MSP_ERR_INFEASIBLE, [-7, -7]))
        #expect(lastError().contains("no plan meets target 0.27 ± 0.01"), "\(lastError())")
        #expect(total == -1)
    }

    @Test func priorParamsDefaultsAreTheDocumentedOnes() {
        let params = msp_prior_params_default()
        #expect(params.struct_size == UInt32(MemoryLayout<msp_prior_params>.size))
        #expect(params.strength == 1 && params.per_parameter == 0)
    }

    @Test func priorPlanIsHandChecked() {
        // Two layers of 100, levels 25/50/75%, target 50%: log-sensitivities 0 and log 100 have z = -1
        // and +1, so the continuous prior is sigmoid(+1) = 0.731 and sigmoid(-1) = 0.269 (c = 0 by
        // symmetry). Of the plans averaging 50%, (75%, 25%) is nearest: (0.019² + 0.019²) against
        // (0.231² + 0.231²) for (50%, 50%).
        let problem = CProblem([100, 100], ratios([0.25, 0.5, 0.75]))
        defer { withExtendedLifetime(problem) {} }
        #expect(msp_problem_set_target(problem.pointer, 0.5, 0.001) == MSP_OK)
        #expect(problem.plan { msp_prior_plan($0, [1, 100], nil, $1) } == (MSP_OK, [2, 0]))
        #expect(problem.plan { msp_prior_plan($0, [100, 1], nil, $1) } == (MSP_OK, [0, 2]))
        // Strength 0 gives the uniform plan; zeros are raised to the smallest positive value, so
        // [0, 5] ranks like [5, 5]: equal sensitivities, the uniform plan.
        var params = msp_prior_params_default()
        params.strength = 0
        #expect(problem.plan { msp_prior_plan($0, [1, 100], &params, $1) } == (MSP_OK, [1, 1]))
        #expect(problem.plan { msp_prior_plan($0, [0, 5], nil, $1) } == (MSP_OK, [1, 1]))
        // Sizes 100 and 300, traces 1 and 3, target 0.5 ± 0.2. By total trace, u = (0, log 3) with
        // size weights (1/4, 3/4) gives z = (-1.732, 0.577) and, with c = 0.09 for the target, the
        // continuous prior (0.861, 0.381); of the plans averaging 0.3 to 0.7, (75%, 50%) is nearest
        // (100 * 0.111² + 300 * 0.119² = 5.5, next (75%, 25%) at 6.4). Per parameter both traces are
        // 0.01 per weight: z = 0, the prior is the target everywhere, and (50%, 50%) is exact.
        let uneven = CProblem([100, 300], ratios([0.25, 0.5, 0.75]))
        defer { withExtendedLifetime(uneven) {} }
        #expect(msp_problem_set_target(uneven.pointer, 0.5, 0.2) == MSP_OK)
        params = msp_prior_params_default()
        #expect(uneven.plan { msp_prior_plan($0, [1, 3], &params, $1) } == (MSP_OK, [2, 1]))
        params.per_parameter = 1
        #expect(uneven.plan { msp_prior_plan($0, [1, 3], &params, $1) } == (MSP_OK, [1, 1]))
    }

    @Test func priorPlanRejectsBadInputWithoutWriting() {
        let problem = CProblem([100, 100], ratios([0.25, 0.5, 0.75]))
        defer { withExtendedLifetime(problem) {} }
        var params = msp_prior_params_default()
        params.struct_size = 4
        var negative = msp_prior_params_default()
        negative.strength = -1
        let cases: [(OpaquePointer?, [Double]?, UnsafePointer<msp_prior_params>?, String)] = [
            (nil, [1, 2], nil, "problem is NULL"),
            (problem.pointer, nil, nil, "sensitivity is NULL"),
            (problem.pointer, [1, -2], nil, "sensitivity[1] (-2.0) must be finite and >= 0"),
            (problem.pointer, [.nan, 2], nil, "sensitivity[0] (nan) must be finite and >= 0"),
            (problem.pointer, [.infinity, 2], nil, "sensitivity[0] (inf) must be finite and >= 0"),
        ]
        for (pointer, sensitivity, params, message) in cases {
            var plan: [Int32] = [-7, -7]
            #expect(msp_prior_plan(pointer, sensitivity, params, &plan) == MSP_ERR_INVALID_ARGUMENT)
            #expect(lastError() == message)
            #expect(plan == [-7, -7])
        }
        #expect(problem.plan { msp_prior_plan($0, [1, 2], &params, $1) } == (MSP_ERR_INVALID_ARGUMENT, [-7, -7]))
        #expect(lastError().contains("params->struct_size (4) is not \(MemoryLayout<msp_prior_params>.size)"))
        #expect(problem.plan { msp_prior_plan($0, [1, 2], &negative, $1) } == (MSP_ERR_INVALID_ARGUMENT, [-7, -7]))
        #expect(lastError() == "strength (-1.0) must be finite and >= 0")
        #expect(msp_prior_plan(problem.pointer, [1, 2], nil, nil) == MSP_ERR_INVALID_ARGUMENT)
        #expect(lastError() == "plan_out is NULL")
    }
}
