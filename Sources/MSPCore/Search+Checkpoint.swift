// Search+Checkpoint: a search's complete state as bytes, and a search restored from them.

extension Search {
    /// The checkpoint of this search: a search restored from it continues exactly as this one would
    /// (the same candidates, given the same values told). The bytes depend only on the state.
    ///
    /// Payload, in order (int = Int64, plan = one byte per unit, count = int):
    /// problem (layers; sizes; levels count and each level's sparsity, n, m as UInt32s; each
    /// layer's unit; each layer's lowest and highest level; target; tolerance), settings (every
    /// `SearchParams` field in declaration order, flags as bytes), sensitivities (count, doubles),
    /// proxy tables (count; each a counted array of unit costs), and the state: generator, started,
    /// done, generation, stage, generations since improvement, cheap evaluations, history (counted
    /// doubles), generation-0 plans, stage plans (each a count and plans), pending batch (flag, then
    /// fidelity, count, plans), population (count, then plan and fitness each), proposed plans
    /// (count, plans in ascending byte order), evaluated plans (count, plans) and their values
    /// (counted doubles).
    public func checkpoint() -> [UInt8] {
        var w = Checkpoint.Writer()
        w.int(problem.layerCount)
        for size in problem.sizes { w.int(size) }
        w.int(problem.levels.count)
        for level in problem.levels.levels {
            w.double(level.sparsity)
            w.u32(UInt32(level.nm?.n ?? 0))
            w.u32(UInt32(level.nm?.m ?? 0))
        }
        for unit in problem.unitOf { w.int(unit) }
        for bounds in problem.layerBounds {
            w.int(bounds.lowerBound)
            w.int(bounds.upperBound)
        }
        w.double(problem.target)
        w.double(problem.tolerance)

        let p = params
        for v in [p.generations, p.offspring, p.survivors] { w.int(v) }
        w.double(p.mutationRate)
        w.double(p.crossoverRate)
        w.u64(p.seed)
        w.double(p.prior.strength)
        w.bool(p.prior.perParameter)
        w.bool(p.priorGrid)
        for v in [p.maxEvaluations, p.patience, p.fidelityLevels] { w.int(v) }
        w.double(p.fidelityKeep)
        w.int(p.surrogateCandidates)
        for v in [p.surrogateRidge, p.surrogateExploration, p.pairRate] { w.double(v) }

        w.doubles(sensitivity)
        w.int(proxies.count)
        for table in proxies { w.doubles(table) }

        let s = state
        w.u64(s.rng.state)
        w.bool(s.started)
        w.bool(s.isDone)
        for v in [s.generation, s.stage, s.sinceImprovement, s.cheapEvaluations] { w.int(v) }
        w.doubles(s.history)
        for plans in [s.priors, s.stagePlans] { write(plans, to: &w) }
        w.bool(s.pending != nil)
        if let pending = s.pending {
            w.int(pending.fidelity)
            write(pending.plans, to: &w)
        }
        w.int(s.population.count)
        for member in s.population {
            w.raw(Self.key(member.plan))
            w.double(member.fitness)
        }
        let proposed = s.proposed.sorted { $0.lexicographicallyPrecedes($1) }
        w.int(proposed.count)
        for plan in proposed { w.raw(plan) }
        w.int(s.values.count)
        w.raw(s.evaluated)
        w.doubles(s.values)
        return w.framed()
    }

    private func write(_ plans: [[Int]], to w: inout Checkpoint.Writer) {
        w.int(plans.count)
        for plan in plans { w.raw(Self.key(plan)) }
    }

    /// Restores a search from `checkpoint()` bytes, checking everything it reads: the framing
    /// (magic, version, length, checksum), every count against the bytes left, the problem and the
    /// settings as their own initialisers do, every value's range, and every plan's feasibility.
    /// - Throws: `MSPError.invalidArgument` naming what is wrong; `MSPError.outOfMemory`.
    public convenience init(checkpoint data: UnsafeRawBufferPointer) throws {
        var r = try Checkpoint.Reader(framed: data)
        let problem = try Self.readProblem(&r)
        let params = try Self.readParams(&r)
        let sensitivity = try r.doubles("sensitivity", count: problem.layerCount) { _ in true }
        try Prior.validate(sensitivity, layers: problem.layerCount)
        let cells = problem.unitCount * problem.levels.count
        let proxies = try (0..<r.count("proxies", itemSize: 8, max: Self.maxProxies)).map { j in
            try r.doubles("proxy \(j)", count: cells) { $0.isFinite }
        }
        let reader = PlanReader(problem: problem)
        var state = SearchState(seed: try r.u64("generator"))
        state.started = try r.bool("started")
        state.isDone = try r.bool("done")
        state.generation = try r.int("generation", in: -1...params.generations)
        state.stage = try r.int("stage", in: 0...(params.fidelityLevels - 1))
        state.sinceImprovement = try r.int("since_improvement", in: 0...params.generations)
        state.cheapEvaluations = try r.int("cheap_evaluations", in: 0...(1 << 53))
        state.history = try r.doubles("history", count: state.generation + 1) { !$0.isNaN && $0 != -.infinity }
        let maxBatch = max(params.offspring, 2 * SearchParams.gridStrengths.count + Self.maxProxies)
        state.priors = try reader.plans(&r, "priors", max: maxBatch)
        state.stagePlans = try reader.plans(&r, "stage plans", max: maxBatch)
        if try r.bool("pending") {
            let fidelity = try r.int("pending fidelity", in: 0...(params.fidelityLevels - 1))
            let plans = try reader.plans(&r, "pending", max: maxBatch)
            guard !plans.isEmpty else { throw MSPError.invalidArgument("checkpoint field pending holds no plan") }
            state.pending = Batch(plans: plans, fidelity: fidelity)
        }
        let members = try r.count("population", itemSize: problem.unitCount + 8, max: params.survivors)
        for i in 0..<members {
            let plan = try reader.plan(&r, "population[\(i)]")
            let fitness = try r.double("population[\(i)] fitness")
            let previous = state.population.last?.fitness ?? -.infinity
            guard !fitness.isNaN, fitness != -.infinity, fitness >= previous else {
                throw MSPError.invalidArgument("checkpoint field population[\(i)] fitness (\(fitness)) is out of order")
            }
            state.population.append((plan, fitness))
        }
        for i in 0..<(try r.count("proposed", itemSize: problem.unitCount)) {
            let plan = try reader.plan(&r, "proposed[\(i)]")
            guard state.proposed.insert(Self.key(plan)).inserted else {
                throw MSPError.invalidArgument("checkpoint field proposed[\(i)] repeats a plan")
            }
        }
        let evaluated = try r.count("evaluated", itemSize: problem.unitCount)
        for i in 0..<evaluated { state.evaluated += Self.key(try reader.plan(&r, "evaluated[\(i)]")) }
        state.values = try r.doubles("values", count: evaluated) { !$0.isNaN && $0 != -.infinity }
        guard r.isAtEnd else { throw MSPError.invalidArgument("checkpoint has bytes after its last field") }
        self.init(problem: problem, params: params, sensitivity: sensitivity, proxies: proxies, state: state)
    }

    private static func readProblem(_ r: inout Checkpoint.Reader) throws -> Problem {
        let layers = try r.count("layers", itemSize: 8, max: Int(Int32.max))
        guard layers > 0 else { throw MSPError.invalidArgument("checkpoint field layers is 0") }
        let sizes = try (0..<layers).map { try r.int("sizes[\($0)]", in: 1...Int.max) }
        let levelCount = try r.count("levels", itemSize: 16, max: 256)
        let levels = try LevelSet(
            (0..<levelCount).map { k in
                let sparsity = try r.double("levels[\(k)] sparsity")
                let n = Int(try r.u32("levels[\(k)] n")), m = Int(try r.u32("levels[\(k)] m"))
                let level = n == 0 && m == 0 ? try Level(sparsity: sparsity) : try Level(n: n, m: m)
                guard level.sparsity.bitPattern == sparsity.bitPattern else {
                    throw MSPError.invalidArgument(
                        "checkpoint field levels[\(k)] sparsity (\(sparsity)) is not 1 - n/m")
                }
                return level
            })
        var problem = try Problem(sizes: sizes, levels: levels)
        let groups = try (0..<layers).map { try r.int("groups[\($0)]", in: 0...(layers - 1)) }
        try problem.setGroups(groups)
        guard problem.unitOf == groups else {
            throw MSPError.invalidArgument("checkpoint field groups does not number groups by first layer")
        }
        var lo: [Int] = [], hi: [Int] = []
        for l in 0..<layers {
            lo.append(try r.int("min_level[\(l)]", in: 0...(levelCount - 1)))
            hi.append(try r.int("max_level[\(l)]", in: 0...(levelCount - 1)))
        }
        try problem.setBounds(min: lo, max: hi)
        try problem.setTarget(try r.double("target"), tolerance: try r.double("tolerance"))
        return problem
    }

    private static func readParams(_ r: inout Checkpoint.Reader) throws -> SearchParams {
        let int32 = -Int(Int32.max) - 1...Int(Int32.max)
        var p = SearchParams()
        p.generations = try r.int("generations", in: int32)
        p.offspring = try r.int("offspring", in: int32)
        p.survivors = try r.int("survivors", in: int32)
        p.mutationRate = try r.double("mutation_rate")
        p.crossoverRate = try r.double("crossover_rate")
        p.seed = try r.u64("seed")
        p.prior = PriorParams(strength: try r.double("prior_strength"), perParameter: try r.bool("prior_per_parameter"))
        p.priorGrid = try r.bool("prior_grid")
        p.maxEvaluations = try r.int("max_evaluations", in: 0...Int.max)
        p.patience = try r.int("patience", in: int32)
        p.fidelityLevels = try r.int("fidelity_levels", in: int32)
        p.fidelityKeep = try r.double("fidelity_keep")
        p.surrogateCandidates = try r.int("surrogate_candidates", in: int32)
        p.surrogateRidge = try r.double("surrogate_ridge")
        p.surrogateExploration = try r.double("surrogate_exploration")
        p.pairRate = try r.double("pair_rate")
        try p.validate()
        return p
    }
}

/// Reads per-unit plans of a problem and checks that each is feasible.
private struct PlanReader {
    let problem: Problem

    func plan(_ r: inout Checkpoint.Reader, _ field: String) throws -> [Int] {
        let plan = try r.raw(problem.unitCount, field).map(Int.init)
        guard problem.isFeasible(plan) else {
            throw MSPError.invalidArgument("checkpoint field \(field) is not a feasible plan of the problem")
        }
        return plan
    }

    func plans(_ r: inout Checkpoint.Reader, _ field: String, max: Int) throws -> [[Int]] {
        let count = try r.count("\(field) count", itemSize: problem.unitCount, max: max)
        return try (0..<count).map { try plan(&r, "\(field)[\($0)]") }
    }
}
