// Calls the search entry points (msp_search_*) through the declarations of include/msp.h, as a C
// program does: ask/tell and msp_search_run with C callbacks against hand-checked expectations
// (feasibility, no repeats, the best of what was told, the documented stopping rules and fidelity
// ladder, cancellation), and bad input that leaves every out-buffer and the search unchanged.

import CMSPHeader
import Testing

/// The calling thread's last error message.
private func lastError() -> String { String(cString: msp_last_error_message()!) }

/// Six layers, levels 0/8 ... 7/8 (unstructured), target 0.5 ± 0.02.
private let sizes: [Int64] = [100, 200, 300, 400, 500, 600]
private let sparsity = (0..<8).map { Double($0) / 8 }
private let sensitivity: [Double] = [5, 1, 3, 0.5, 2, 8]

/// The additive fitness of a per-layer plan: Σ sensitivity · size · sparsity².
private func cost(_ plan: UnsafeBufferPointer<Int32>) -> Double {
    plan.indices.reduce(0.0) { $0 + sensitivity[$1] * Double(sizes[$1]) * sparsity[Int(plan[$1])] * sparsity[Int(plan[$1])] }
}

/// The size-weighted average sparsity of a per-layer plan.
private func average(_ plan: [Int32]) -> Double {
    zip(sizes, plan).reduce(0.0) { $0 + Double($1.0) * sparsity[Int($1.1)] } / Double(sizes.reduce(0, +))
}

/// A problem and a search over it made through the C API; both freed with the instance.
private final class CSearch {
    let problem: OpaquePointer?
    let search: OpaquePointer?

    init(_ configure: (inout msp_search_params) -> Void = { _ in }) {
        var problem: OpaquePointer?
        let levels = sparsity.map { msp_level(sparsity: $0, n: 0, m: 0) }
        #expect(msp_problem_create(sizes, 6, levels, 8, &problem) == MSP_OK)
        #expect(msp_problem_set_target(problem, 0.5, 0.02) == MSP_OK)
        var params = msp_search_params_default()
        params.generations = 6
        configure(&params)
        var search: OpaquePointer?
        #expect(msp_search_create(problem, sensitivity, &params, &search) == MSP_OK, "\(lastError())")
        self.problem = problem
        self.search = search
    }

    deinit {
        msp_search_free(search)
        msp_problem_free(problem)
    }

    var progress: msp_search_progress {
        var out = msp_search_progress()
        #expect(msp_search_get_progress(search, &out) == MSP_OK)
        return out
    }

    /// One ask: the plans and the fidelity.
    func ask() -> (plans: [[Int32]], fidelity: Int32) {
        let capacity = msp_search_max_batch(search)
        var buffer = [Int32](repeating: -1, count: Int(capacity) * 6)
        var count: Int64 = -1
        var fidelity: Int32 = -1
        #expect(msp_search_ask(search, &buffer, capacity, &count, &fidelity) == MSP_OK, "\(lastError())")
        return ((0..<Int(count)).map { Array(buffer[($0 * 6)..<($0 * 6 + 6)]) }, fidelity)
    }

    /// Drives ask/tell with `fitness` until the search is done; the batches asked, in order.
    func drive(_ fitness: ([Int32], Int32) -> Double) -> [(plans: [[Int32]], fidelity: Int32)] {
        var batches: [(plans: [[Int32]], fidelity: Int32)] = []
        while true {
            let batch = ask()
            if batch.plans.isEmpty { return batches }
            batches.append(batch)
            let values = batch.plans.map { fitness($0, batch.fidelity) }
            #expect(msp_search_tell(search, values, Int64(values.count)) == MSP_OK, "\(lastError())")
        }
    }
}

/// What msp_search_run's callbacks saw, reached through user_data.
private final class Recorder {
    var plans: [[Int32]] = []
    var fidelities: [Int32] = []
    var progress: [msp_search_progress] = []
    /// Call number (1-based) at which the fitness callback returns `cancelStatus`, or gives `cancelValue`.
    var cancelAt = Int.max
    var cancelStatus: Int32 = 0
    var cancelValue = 0.0
    /// Progress call at which the progress callback returns 1.
    var stopProgressAt = Int.max

    var pointer: UnsafeMutableRawPointer { Unmanaged.passUnretained(self).toOpaque() }
}

/// The C fitness callback: records the plan and answers the additive cost (or cancels as told).
private let recordingFitness: msp_fitness_fn = { plan, layers, fidelity, user, out in
    let recorder = Unmanaged<Recorder>.fromOpaque(user!).takeUnretainedValue()
    let buffer = UnsafeBufferPointer(start: plan, count: Int(layers))
    recorder.plans.append(Array(buffer))
    recorder.fidelities.append(fidelity)
    out!.pointee = recorder.plans.count == recorder.cancelAt ? recorder.cancelValue : cost(buffer)
    return recorder.plans.count == recorder.cancelAt ? recorder.cancelStatus : 0
}

/// The C progress callback: records the progress (and stops as told).
private let recordingProgress: msp_progress_fn = { progress, user in
    let recorder = Unmanaged<Recorder>.fromOpaque(user!).takeUnretainedValue()
    recorder.progress.append(progress!.pointee)
    return recorder.progress.count == recorder.stopProgressAt ? 1 : 0
}

@Suite("Search entry points: ask/tell and run with C callbacks, bad input rejected unchanged")
struct CAPISearchTests {
    @Test func defaultsAreTheDocumentedOnes() {
        let p = msp_search_params_default()
        #expect(p.struct_size == UInt32(MemoryLayout<msp_search_params>.size))
        #expect([p.generations, p.offspring, p.survivors, p.prior_per_parameter, p.prior_grid, p.patience, p.fidelity_levels]
                == [20, 8, 4, 0, 1, 0, 1])
        #expect([p.mutation_rate, p.crossover_rate, p.prior_strength, p.fidelity_keep] == [0.5, 0.5, 1, 0.25])
        #expect(p.seed == 0 && p.max_evaluations == 0)
    }

    @Test func askTellGivesFeasibleNewPlansAndTheBestOfWhatWasTold() {
        let s = CSearch()
        defer { withExtendedLifetime(s) {} }
        // Nothing evaluated yet.
        var best = [Int32](repeating: -7, count: 6)
        var bestFitness = -7.0
        #expect(msp_search_best(s.search, &best, &bestFitness) == MSP_ERR_INVALID_STATE)
        #expect(lastError() == "no plan has been evaluated yet")
        #expect(best == [Int32](repeating: -7, count: 6) && bestFitness == -7)
        let start = s.progress
        #expect(start.generation == -1 && start.done == 0 && start.evaluations == 0 && start.best_fitness == .infinity)
        #expect(msp_search_max_batch(s.search) == 8 + Int64(MSP_MAX_PROXIES))  // max(offspring, generation 0)
        // Asking again before telling gives the same batch.
        let first = s.ask()
        #expect(s.ask().plans == first.plans)
        var told: [([Int32], Double)] = []
        let batches = [first] + s.drive { plan, _ in
            let value = plan.withUnsafeBufferPointer(cost)
            told.append((plan, value))
            return value
        }
        // The first batch was told by drive too (it asked again and got it).
        #expect(batches.count >= 2 && batches[0].plans == batches[1].plans)
        let plans = batches.dropFirst().flatMap(\.plans)
        #expect(plans.count == told.count)
        #expect(Set(plans).count == plans.count, "a plan was proposed twice")
        var averageOut = 0.0
        for plan in plans {
            #expect(abs(average(plan) - 0.5) <= 0.02 + 1e-12)
            #expect(msp_problem_check_plan(s.problem, plan, &averageOut) == MSP_OK)
        }
        #expect(batches.allSatisfy { $0.fidelity == 0 && $0.plans.count <= 8 })
        // The best is the first plan told with the least value.
        let least = told.min { $0.1 < $1.1 }!
        #expect(msp_search_best(s.search, &best, &bestFitness) == MSP_OK)
        #expect(best == least.0 && bestFitness == least.1)
        let end = s.progress
        #expect(end.done == 1 && end.evaluations == Int64(told.count) && end.cheap_evaluations == 0)
        #expect(end.generation == 6 && end.best_fitness == least.1)
        // Finished: ask gives nothing, and tell has no batch.
        #expect(s.ask().plans.isEmpty)
        #expect(msp_search_tell(s.search, nil, 0) == MSP_ERR_INVALID_STATE)
        #expect(lastError() == "tell without a pending batch: call ask first")
    }

    @Test func theSameSeedAndValuesGiveTheSameCandidates() {
        let fitness: ([Int32], Int32) -> Double = { plan, _ in plan.withUnsafeBufferPointer(cost) }
        let a = CSearch { $0.seed = 11 }.drive(fitness), b = CSearch { $0.seed = 11 }.drive(fitness)
        let c = CSearch { $0.seed = 12 }.drive(fitness)
        #expect(a.map(\.plans) == b.map(\.plans))
        #expect(a.map(\.plans) != c.map(\.plans))
    }

    @Test func runWithCallbacksEqualsAskTell() {
        let recorder = Recorder()
        let run = CSearch { $0.seed = 5 }
        defer { withExtendedLifetime(run) {} }
        #expect(msp_search_run(run.search, recordingFitness, recordingProgress, recorder.pointer) == MSP_OK)
        let manual = CSearch { $0.seed = 5 }.drive { plan, _ in plan.withUnsafeBufferPointer(cost) }
        #expect(recorder.plans == manual.flatMap(\.plans))
        #expect(recorder.fidelities.allSatisfy { $0 == 0 })
        // One progress call per batch, counting the evaluations so far; the last one says done.
        #expect(recorder.progress.count == manual.count)
        var told: Int64 = 0
        for (progress, batch) in zip(recorder.progress, manual) {
            told += Int64(batch.plans.count)
            #expect(progress.evaluations == told)
        }
        #expect(recorder.progress.map(\.generation) == Array(0..<Int32(manual.count)))
        #expect(recorder.progress.last?.done == 1)
        // Without a progress callback the run is the same.
        let quiet = Recorder(), again = CSearch { $0.seed = 5 }
        defer { withExtendedLifetime(again) {} }
        #expect(msp_search_run(again.search, recordingFitness, nil, quiet.pointer) == MSP_OK)
        #expect(quiet.plans == recorder.plans && quiet.progress.isEmpty)
    }

    @Test(arguments: [(Int32(7), 0.0, "the fitness callback returned 7"), (0, Double.nan, "the fitness callback gave nan"),
                      (0, -Double.infinity, "the fitness callback gave -inf")])
    func callbacksCancelAndLeaveTheSearchUsable(status: Int32, value: Double, message: String) {
        let s = CSearch { $0.seed = 3 }
        defer { withExtendedLifetime(s) {} }
        let recorder = Recorder()
        let priors = s.ask().plans.count  // the prior grid's batch, left pending
        recorder.cancelAt = priors + 3  // in the first bred batch
        (recorder.cancelStatus, recorder.cancelValue) = (status, value)
        #expect(msp_search_run(s.search, recordingFitness, recordingProgress, recorder.pointer) == MSP_ERR_CANCELLED)
        #expect(lastError() == message)
        // The prior grid was told, the cancelled batch dropped; the best so far stays available.
        #expect(s.progress.evaluations == Int64(priors) && s.progress.done == 0)
        var best = [Int32](repeating: -7, count: 6)
        var fitness = -7.0
        #expect(msp_search_best(s.search, &best, &fitness) == MSP_OK)
        #expect(recorder.plans.prefix(priors).contains(best))
        // Running again finishes.
        recorder.cancelAt = .max
        #expect(msp_search_run(s.search, recordingFitness, nil, recorder.pointer) == MSP_OK)
        #expect(s.progress.done == 1)
    }

    @Test func progressCallbackCancelsAfterItsBatch() {
        let s = CSearch()
        defer { withExtendedLifetime(s) {} }
        let recorder = Recorder()
        recorder.stopProgressAt = 2
        #expect(msp_search_run(s.search, recordingFitness, recordingProgress, recorder.pointer) == MSP_ERR_CANCELLED)
        #expect(lastError() == "the progress callback returned 1")
        // Both batches were told before the callback stopped the run.
        #expect(s.progress.evaluations == Int64(recorder.plans.count) && recorder.progress.count == 2)
        #expect(s.progress.generation == 1)
    }

    @Test func infinityMarksTheWorstWithoutCancelling() {
        let s = CSearch { $0.generations = 2 }
        defer { withExtendedLifetime(s) {} }
        var told: [Double] = []
        _ = s.drive { plan, _ in
            let value = plan[0] % 2 == 0 ? Double.infinity : plan.withUnsafeBufferPointer(cost)
            told.append(value)
            return value
        }
        var best = [Int32](repeating: 0, count: 6)
        var fitness = 0.0
        #expect(msp_search_best(s.search, &best, &fitness) == MSP_OK)
        #expect(fitness == told.min())
        #expect(s.progress.done == 1)
    }

    @Test func stoppingRules() {
        // max_evaluations: never more full-fidelity evaluations than allowed.
        let limited = CSearch { $0.max_evaluations = 11 }
        defer { withExtendedLifetime(limited) {} }
        let batches = limited.drive { plan, _ in plan.withUnsafeBufferPointer(cost) }
        #expect(batches.reduce(0) { $0 + $1.plans.count } == 11 && limited.progress.evaluations == 11)
        // patience 2 with a constant fitness: the priors improve on +inf (generation 0), then
        // generations 1 and 2 do not, and the search stops.
        let patient = CSearch { $0.patience = 2 }
        defer { withExtendedLifetime(patient) {} }
        _ = patient.drive { _, _ in 1 }
        #expect(patient.progress.generation == 2 && patient.progress.done == 1)
    }

    @Test func fidelityLadderPromotesTheBestAndCountsOnlyTheLastFidelity() {
        let s = CSearch {
            $0.fidelity_levels = 2
            $0.fidelity_keep = 0.5
        }
        defer { withExtendedLifetime(s) {} }
        // Fidelity 0 answers a cheap value far below every full one: it must never be the best.
        let cheap: (([Int32]) -> Double) = { plan in -1000 - plan.withUnsafeBufferPointer(cost) }
        let batches = s.drive { plan, fidelity in fidelity == 0 ? cheap(plan) : plan.withUnsafeBufferPointer(cost) }
        // The prior grid at the last fidelity, then offspring at 0 and the best half of them at 1.
        #expect(batches[0].fidelity == 1)
        var promoted = 0, cheapCount = 0
        for (previous, batch) in zip(batches, batches.dropFirst()) where batch.fidelity == 1 && previous.fidelity == 0 {
            let order = previous.plans.indices.sorted {
                cheap(previous.plans[$0]) != cheap(previous.plans[$1])
                    ? cheap(previous.plans[$0]) < cheap(previous.plans[$1]) : $0 < $1
            }
            let keep = (previous.plans.count + 1) / 2
            #expect(batch.plans == order.prefix(keep).map { previous.plans[$0] })
            promoted += 1
        }
        for batch in batches where batch.fidelity == 0 { cheapCount += batch.plans.count }
        #expect(promoted >= 1 && cheapCount > 0)
        #expect(s.progress.cheap_evaluations == Int64(cheapCount))
        #expect(s.progress.best_fitness >= 0)
        // msp_search_run passes the fidelity to the callback.
        let recorder = Recorder()
        let run = CSearch {
            $0.fidelity_levels = 2
            $0.fidelity_keep = 0.5
        }
        defer { withExtendedLifetime(run) {} }
        #expect(msp_search_run(run.search, recordingFitness, nil, recorder.pointer) == MSP_OK)
        #expect(Set(recorder.fidelities) == [0, 1])
    }

    @Test func createRejectsBadInputWithoutWritingTheHandle() {
        let s = CSearch()
        defer { withExtendedLifetime(s) {} }
        let marker = OpaquePointer(bitPattern: 0xBEEF)
        let cases: [(String, (inout msp_search_params) -> Void)] = [
            ("params->struct_size (0) is not", { $0.struct_size = 0 }),
            ("generations (0) must be > 0", { $0.generations = 0 }),
            ("offspring (0) must be in [1, \(MSP_MAX_OFFSPRING)]", { $0.offspring = 0 }),
            ("survivors (-3) must be in [1, \(MSP_MAX_SURVIVORS)]", { $0.survivors = -3 }),
            ("mutation_rate (1.5) must be in [0, 1]", { $0.mutation_rate = 1.5 }),
            ("crossover_rate (nan) must be in [0, 1]", { $0.crossover_rate = .nan }),
            ("prior_strength (-1.0) must be >= 0", { $0.prior_strength = -1 }),
            ("max_evaluations (-1) must be >= 0", { $0.max_evaluations = -1 }),
            ("patience (-1) must be >= 0", { $0.patience = -1 }),
            ("fidelity_levels (0) must be in [1, \(MSP_MAX_FIDELITY_LEVELS)]", { $0.fidelity_levels = 0 }),
            ("fidelity_keep (0.0) must be in (0, 1]", { $0.fidelity_keep = 0 }),
            ("fidelity_keep (1.5) must be in (0, 1]", { $0.fidelity_keep = 1.5 }),
        ]
        for (message, change) in cases {
            var params = msp_search_params_default()
            change(&params)
            var out = marker
            #expect(msp_search_create(s.problem, sensitivity, &params, &out) == MSP_ERR_INVALID_ARGUMENT)
            #expect(lastError().contains(message), "\(lastError())")
            #expect(out == marker)
        }
        var out = marker
        #expect(msp_search_create(nil, sensitivity, nil, &out) == MSP_ERR_INVALID_ARGUMENT)
        #expect(lastError() == "problem is NULL")
        #expect(msp_search_create(s.problem, nil, nil, &out) == MSP_ERR_INVALID_ARGUMENT)
        #expect(lastError() == "sensitivity is NULL")
        #expect(msp_search_create(s.problem, [1, 1, 1, -1, 1, 1], nil, &out) == MSP_ERR_INVALID_ARGUMENT)
        #expect(lastError() == "sensitivity[3] (-1.0) must be finite and >= 0")
        #expect(msp_search_create(s.problem, sensitivity, nil, nil) == MSP_ERR_INVALID_ARGUMENT)
        #expect(lastError() == "out is NULL")
        #expect(out == marker)
        // A reachable range whose levels cannot land in the window: no prior plan exists.
        var coarse: OpaquePointer?
        let levels = [msp_level(sparsity: 0, n: 0, m: 0), msp_level(sparsity: 0.9, n: 0, m: 0)]
        #expect(msp_problem_create([1, 1], 2, levels, 2, &coarse) == MSP_OK)
        defer { msp_problem_free(coarse) }
        #expect(msp_problem_set_target(coarse, 0.3, 0.01) == MSP_OK)
        #expect(msp_search_create(coarse, [1, 2], nil, &out) == MSP_ERR_INFEASIBLE)
        #expect(out == marker)
        msp_search_free(nil)
    }

    @Test func askTellBestAndProgressRejectBadInputUnchanged() {
        let s = CSearch()
        defer { withExtendedLifetime(s) {} }
        let batch = s.ask().plans
        #expect(batch.count > 2)
        // ask: a capacity below the batch, NULL outputs; nothing written.
        var plans = [Int32](repeating: -7, count: batch.count * 6)
        var count: Int64 = -7
        var fidelity: Int32 = -7
        let asks: [(msp_status, String, () -> msp_status)] = [
            (MSP_ERR_INVALID_ARGUMENT, "capacity (2) is smaller than the batch (\(batch.count))",
             { msp_search_ask(s.search, &plans, 2, &count, &fidelity) }),
            (MSP_ERR_INVALID_ARGUMENT, "search is NULL", { msp_search_ask(nil, &plans, 8, &count, &fidelity) }),
            (MSP_ERR_INVALID_ARGUMENT, "plans_out is NULL", { msp_search_ask(s.search, nil, 8, &count, &fidelity) }),
            (MSP_ERR_INVALID_ARGUMENT, "count_out is NULL", { msp_search_ask(s.search, &plans, 8, nil, &fidelity) }),
            (MSP_ERR_INVALID_ARGUMENT, "fidelity_out is NULL", { msp_search_ask(s.search, &plans, 8, &count, nil) }),
        ]
        for (status, message, call) in asks {
            #expect(call() == status)
            #expect(lastError().contains(message), "\(lastError())")
            #expect(plans.allSatisfy { $0 == -7 } && count == -7 && fidelity == -7)
        }
        // tell: bad values or counts change nothing; the batch is still pending afterwards.
        var values = batch.map { $0.withUnsafeBufferPointer(cost) }
        values[1] = .nan
        let maxBatch = msp_search_max_batch(s.search)
        let tells: [(msp_status, String, () -> msp_status)] = [
            (MSP_ERR_INVALID_ARGUMENT, "fitness[1] (nan) must be a number or +inf",
             { msp_search_tell(s.search, values, Int64(values.count)) }),
            (MSP_ERR_INVALID_STATE, "tell got 2 values for a batch of \(batch.count)", { msp_search_tell(s.search, values, 2) }),
            (MSP_ERR_INVALID_STATE, "tell got -1 values", { msp_search_tell(s.search, values, -1) }),
            (MSP_ERR_INVALID_STATE, "tell got \(maxBatch + 1) values; batches hold at most \(maxBatch)",
             { msp_search_tell(s.search, values, maxBatch + 1) }),
            (MSP_ERR_INVALID_ARGUMENT, "fitness is NULL", { msp_search_tell(s.search, nil, Int64(batch.count)) }),
            (MSP_ERR_INVALID_ARGUMENT, "search is NULL", { msp_search_tell(nil, values, Int64(batch.count)) }),
        ]
        for (status, message, call) in tells {
            #expect(call() == status)
            #expect(lastError().contains(message), "\(lastError())")
            #expect(s.progress.evaluations == 0)
        }
        values[1] = -.infinity
        #expect(msp_search_tell(s.search, values, Int64(values.count)) == MSP_ERR_INVALID_ARGUMENT)
        #expect(s.ask().plans == batch)
        values[1] = batch[1].withUnsafeBufferPointer(cost)
        #expect(msp_search_tell(s.search, values, Int64(values.count)) == MSP_OK)
        #expect(s.progress.evaluations == Int64(batch.count))
        // best and progress: NULL handles and outputs leave the others untouched.
        var best = [Int32](repeating: -7, count: 6)
        var fitness = -7.0
        #expect(msp_search_best(nil, &best, &fitness) == MSP_ERR_INVALID_ARGUMENT)
        #expect(msp_search_best(s.search, nil, &fitness) == MSP_ERR_INVALID_ARGUMENT)
        #expect(lastError() == "plan_out is NULL")
        #expect(msp_search_best(s.search, &best, nil) == MSP_ERR_INVALID_ARGUMENT)
        #expect(lastError() == "fitness_out is NULL")
        #expect(best.allSatisfy { $0 == -7 } && fitness == -7)
        #expect(msp_search_get_progress(s.search, nil) == MSP_ERR_INVALID_ARGUMENT)
        #expect(lastError() == "out is NULL")
        var progress = msp_search_progress(generation: -7, done: -7, evaluations: -7, cheap_evaluations: -7, best_fitness: -7)
        #expect(msp_search_get_progress(nil, &progress) == MSP_ERR_INVALID_ARGUMENT)
        #expect(progress.generation == -7 && progress.evaluations == -7 && progress.best_fitness == -7)
        // run: NULL search or fitness.
        #expect(msp_search_run(nil, recordingFitness, nil, nil) == MSP_ERR_INVALID_ARGUMENT)
        #expect(lastError() == "search is NULL")
        #expect(msp_search_run(s.search, nil, nil, nil) == MSP_ERR_INVALID_ARGUMENT)
        #expect(lastError() == "fitness is NULL")
        #expect(msp_search_max_batch(nil) == 0)
    }
}
