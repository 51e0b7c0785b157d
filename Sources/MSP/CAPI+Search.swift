// CAPI+Search: the evolutionary search handle, ask/tell, and the callback-driven run.

import CMSPHeader
import MSPCore

/// The default search settings.
@_cdecl("msp_search_params_default")
public func msp_search_params_default() -> msp_search_params {
    let d = SearchParams()
    return msp_search_params(
        struct_size: UInt32(MemoryLayout<msp_search_params>.size), generations: Int32(d.generations),
        offspring: Int32(d.offspring), survivors: Int32(d.survivors), mutation_rate: d.mutationRate,
        crossover_rate: d.crossoverRate, seed: d.seed, prior_strength: d.prior.strength,
        prior_per_parameter: d.prior.perParameter ? 1 : 0, prior_grid: d.priorGrid ? 1 : 0,
        max_evaluations: Int64(d.maxEvaluations), patience: Int32(d.patience), fidelity_levels: Int32(d.fidelityLevels),
        fidelity_keep: d.fidelityKeep, surrogate_candidates: Int32(d.surrogateCandidates),
        surrogate_ridge: d.surrogateRidge, surrogate_exploration: d.surrogateExploration, pair_rate: d.pairRate)
}

/// Creates a search; see `include/msp.h`.
@_cdecl("msp_search_create")
public func msp_search_create(
    _ problem: OpaquePointer?, _ sensitivity: UnsafePointer<Double>?, _ params: UnsafePointer<msp_search_params>?,
    _ out: UnsafeMutablePointer<OpaquePointer?>?
) -> msp_status {
    boundary {
        let problem = try (handle(problem, "problem") as ProblemHandle).problem
        let out = try required(out, "out")
        let sensitivity = try array(sensitivity, problem.layerCount, "sensitivity")
        let c = try checkedParams(params, "params") ?? msp_search_params_default()
        guard let maxEvaluations = Int(exactly: c.max_evaluations) else {
            throw MSPError.invalidArgument("max_evaluations (\(c.max_evaluations)) is too large")
        }
        var p = SearchParams()
        p.generations = Int(c.generations)
        p.offspring = Int(c.offspring)
        p.survivors = Int(c.survivors)
        p.mutationRate = c.mutation_rate
        p.crossoverRate = c.crossover_rate
        p.seed = c.seed
        p.prior = PriorParams(strength: c.prior_strength, perParameter: c.prior_per_parameter != 0)
        p.priorGrid = c.prior_grid != 0
        p.maxEvaluations = maxEvaluations
        p.patience = Int(c.patience)
        p.fidelityLevels = Int(c.fidelity_levels)
        p.fidelityKeep = c.fidelity_keep
        p.surrogateCandidates = Int(c.surrogate_candidates)
        p.surrogateRidge = c.surrogate_ridge
        p.surrogateExploration = c.surrogate_exploration
        p.pairRate = c.pair_rate
        let search = try Search(problem: problem, sensitivity: sensitivity, params: p)
        out.pointee = retained(search)
    }
}

/// Adds a proxy cost table before the first ask; see `include/msp.h`.
@_cdecl("msp_search_add_proxy")
public func msp_search_add_proxy(_ search: OpaquePointer?, _ costs: UnsafePointer<Double>?) -> msp_status {
    boundary {
        let search: Search = try handle(search, "search")
        let problem = search.problem
        let (count, overflow) = problem.layerCount.multipliedReportingOverflow(by: problem.levels.count)
        guard !overflow else { throw MSPError.invalidArgument("num_layers * num_levels overflows") }
        try search.addProxy(layerCosts: try array(costs, count, "costs"))
    }
}

/// Releases a search; accepts NULL.
@_cdecl("msp_search_free")
public func msp_search_free(_ search: OpaquePointer?) {
    release(search, as: Search.self)
}

/// The most candidates one ask returns (0 for NULL).
@_cdecl("msp_search_max_batch")
public func msp_search_max_batch(_ search: OpaquePointer?) -> Int64 {
    guard let search: Search = try? handle(search, "search") else { return 0 }
    return Int64(search.maxBatch)
}

/// Proposes candidates; see `include/msp.h`.
@_cdecl("msp_search_ask")
public func msp_search_ask(
    _ search: OpaquePointer?, _ plans_out: UnsafeMutablePointer<Int32>?, _ capacity: Int64,
    _ count_out: UnsafeMutablePointer<Int64>?, _ fidelity_out: UnsafeMutablePointer<Int32>?
) -> msp_status {
    boundary {
        let search: Search = try handle(search, "search")
        let plans = try required(plans_out, "plans_out")
        let count = try required(count_out, "count_out")
        let fidelity = try required(fidelity_out, "fidelity_out")
        let batch = try search.ask()
        guard Int64(batch.plans.count) <= capacity else {
            throw MSPError.invalidArgument(
                "capacity (\(capacity)) is smaller than the batch (\(batch.plans.count)); see msp_search_max_batch")
        }
        let layers = search.problem.layerCount
        for (i, plan) in batch.plans.enumerated() {
            writePlan(search.problem.layerPlan(plan), to: plans + i * layers)
        }
        count.pointee = Int64(batch.plans.count)
        fidelity.pointee = Int32(batch.fidelity)
    }
}

/// Reports fitness values; see `include/msp.h`.
@_cdecl("msp_search_tell")
public func msp_search_tell(_ search: OpaquePointer?, _ fitness: UnsafePointer<Double>?, _ count: Int64) -> msp_status {
    boundary {
        let search: Search = try handle(search, "search")
        guard count >= 0, count <= Int64(search.maxBatch) else {
            throw MSPError.invalidState("tell got \(count) values; batches hold at most \(search.maxBatch)")
        }
        try search.tell(count == 0 ? [] : try array(fitness, Int(count), "fitness"))
    }
}

/// The best plan so far; see `include/msp.h`.
@_cdecl("msp_search_best")
public func msp_search_best(
    _ search: OpaquePointer?, _ plan_out: UnsafeMutablePointer<Int32>?, _ fitness_out: UnsafeMutablePointer<Double>?
) -> msp_status {
    boundary {
        let search: Search = try handle(search, "search")
        let plan = try required(plan_out, "plan_out")
        let fitness = try required(fitness_out, "fitness_out")
        guard let best = search.best else { throw MSPError.invalidState("no plan has been evaluated yet") }
        writePlan(search.problem.layerPlan(best.plan), to: plan)
        fitness.pointee = best.fitness
    }
}

/// The progress of a search.
private func progress(of search: Search) -> msp_search_progress {
    msp_search_progress(
        generation: Int32(search.generation), done: search.isDone ? 1 : 0, evaluations: Int64(search.evaluations),
        cheap_evaluations: Int64(search.cheapEvaluations), best_fitness: search.best?.fitness ?? .infinity)
}

/// Fills in a search's progress; see `include/msp.h`.
@_cdecl("msp_search_get_progress")
public func msp_search_get_progress(
    _ search: OpaquePointer?, _ out: UnsafeMutablePointer<msp_search_progress>?
) -> msp_status {
    boundary {
        let search: Search = try handle(search, "search")
        try required(out, "out").pointee = progress(of: search)
    }
}

/// Drives ask/tell with callbacks; see `include/msp.h`.
@_cdecl("msp_search_run")
public func msp_search_run(
    _ search: OpaquePointer?, _ fitness: msp_fitness_fn?, _ progress_fn: msp_progress_fn?,
    _ user_data: UnsafeMutableRawPointer?
) -> msp_status {
    boundary {
        let search: Search = try handle(search, "search")
        let fitness = try required(fitness, "fitness")
        let layers = search.problem.layerCount
        var plan = [Int32](repeating: 0, count: layers)
        while true {
            let batch = try search.ask()
            if batch.plans.isEmpty { return }
            var values: [Double] = []
            for candidate in batch.plans {
                for (l, k) in search.problem.layerPlan(candidate).enumerated() { plan[l] = Int32(k) }
                var value = Double.nan
                let status = fitness(plan, Int64(layers), Int32(batch.fidelity), user_data, &value)
                guard status == 0, !value.isNaN, value != -.infinity else {
                    search.cancelPending()
                    throw MSPError.cancelled(
                        status != 0
                            ? "the fitness callback returned \(status)" : "the fitness callback gave \(value)")
                }
                values.append(value)
            }
            try search.tell(values)
            if let progress_fn {
                var state = progress(of: search)
                let status = progress_fn(&state, user_data)
                guard status == 0 else { throw MSPError.cancelled("the progress callback returned \(status)") }
            }
        }
    }
}
