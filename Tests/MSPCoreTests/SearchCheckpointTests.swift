@testable import MSPCore
import Testing

/// A deterministic fitness that is not additive: per-unit costs, a pairwise term between
/// neighbouring units, a fidelity-dependent offset, and +inf for some plans.
func interactingFitness(_ plan: [Int], fidelity: Int) -> Double {
    var hash: UInt64 = 0xcbf2_9ce4_8422_2325
    for k in plan { hash = (hash ^ UInt64(k)) &* 0x0000_0100_0000_01b3 }
    if hash % 23 == 0 { return .infinity }
    var value = Double(fidelity)
    for (u, k) in plan.enumerated() {
        value += Double((u * 7 + 3) % 11 + 1) * Double(k * k)
        if u > 0 { value += 0.5 * Double(k * plan[u - 1]) }
    }
    return value
}

/// Calls a search makes: ask when nothing is pending, else tell the pending batch's values.
struct SearchDriver {
    /// Every batch asked and every value told, in order.
    var transcript: [String] = []

    /// Makes the next call (checking that every plan asked is feasible); false once the search has
    /// finished.
    mutating func step(_ search: Search) throws -> Bool {
        if let batch = search.state.pending {
            try search.tell(batch.plans.map { interactingFitness($0, fidelity: batch.fidelity) })
            transcript.append("tell")
            return true
        }
        if search.isDone { return false }
        let batch = try search.ask()
        for plan in batch.plans { #expect(search.problem.isFeasible(plan)) }
        transcript.append("ask \(batch.fidelity) \(batch.plans)")
        return !batch.plans.isEmpty
    }

    /// Runs to the end.
    mutating func finish(_ search: Search) throws {
        while try step(search) {}
    }
}

/// The FNV-1a 64-bit hash (the checkpoint's checksum, written here from its definition).
func fnv1a(_ bytes: ArraySlice<UInt8>) -> UInt64 {
    bytes.reduce(0xcbf2_9ce4_8422_2325) { ($0 ^ UInt64($1)) &* 0x0000_0100_0000_01b3 }
}

/// `bytes` with its trailing checksum recomputed.
func resealed(_ bytes: [UInt8]) -> [UInt8] {
    let body = bytes.dropLast(8)
    let hash = fnv1a(body)
    return Array(body) + (0..<8).map { UInt8(truncatingIfNeeded: hash >> (8 * $0)) }
}

func restored(_ bytes: [UInt8]) throws -> Search {
    try bytes.withUnsafeBytes { try Search(checkpoint: $0) }
}

@Suite("Search checkpoints: resume bit-identically, refuse anything damaged")
struct SearchCheckpointTests {
    /// A search over a random problem with every feature of the state in use.
    static func makeSearch(_ variant: Int) throws -> Search {
        let problem = try randomProblem(
            seed: UInt64(variant) + 70, layers: 7 + variant, levels: 4 + variant % 4, grouped: variant % 2 == 1,
            bounded: variant % 3 == 0)
        var params = SearchParams()
        params.seed = UInt64(variant) * 1000 + 17
        params.generations = 5
        params.offspring = 5
        params.survivors = 3
        params.fidelityLevels = 1 + variant % 2
        params.fidelityKeep = 0.5
        params.surrogateCandidates = variant == 2 ? 0 : 2
        params.pairRate = variant == 3 ? 0 : 0.7
        params.priorGrid = variant != 1
        let sensitivity = (0..<problem.layerCount).map { Double(($0 * 13) % 7 + 1) }
        let search = try Search(problem: problem, sensitivity: sensitivity, params: params)
        if variant % 2 == 0 {
            let levels = problem.levels.count
            try search.addProxy(layerCosts: (0..<(problem.layerCount * levels)).map { Double(($0 % levels) * ($0 % 5 + 1)) })
        }
        return search
    }

    @Test(arguments: 0..<4)
    func resumingAfterAnyCallContinuesIdentically(variant: Int) throws {
        var reference = SearchDriver()
        let whole = try Self.makeSearch(variant)
        try reference.finish(whole)
        let calls = reference.transcript.count
        #expect(calls > 10)
        for cut in 0...calls {
            let original = try Self.makeSearch(variant)
            var before = SearchDriver()
            for _ in 0..<cut { _ = try before.step(original) }
            let bytes = original.checkpoint()
            let resumed = try restored(bytes)
            #expect(resumed.checkpoint() == bytes, "a restored search saves the same bytes (cut \(cut))")
            var a = before, b = before
            try a.finish(original)
            try b.finish(resumed)
            #expect(a.transcript == reference.transcript, "cut \(cut)")
            #expect(b.transcript == reference.transcript, "cut \(cut)")
            #expect(resumed.best?.plan == whole.best?.plan && resumed.best?.fitness == whole.best?.fitness)
            #expect(resumed.history == whole.history && resumed.evaluations == whole.evaluations)
            #expect(resumed.cheapEvaluations == whole.cheapEvaluations && resumed.isDone)
            #expect(resumed.checkpoint() == whole.checkpoint())
        }
    }

    @Test func proxiesCanStillBeAddedAfterRestoringAnUnstartedSearch() throws {
        let search = try Self.makeSearch(1)
        let copy = try restored(search.checkpoint())
        let levels = search.problem.levels.count
        let costs = (0..<(search.problem.layerCount * levels)).map { Double($0 % levels) }
        try search.addProxy(layerCosts: costs)
        try copy.addProxy(layerCosts: costs)
        #expect(try copy.ask() == (try search.ask()))
        let started = try restored(search.checkpoint())
        #expect(throws: MSPError.invalidState("proxy tables can only be added before the first ask")) {
            try started.addProxy(layerCosts: costs)
        }
    }

    @Test func everyTruncationAndEveryFlippedByteIsRefused() throws {
        let search = try Self.makeSearch(0)
        var driver = SearchDriver()
        for _ in 0..<7 { _ = try driver.step(search) }
        let bytes = search.checkpoint()
        for length in 0..<bytes.count {
            #expect(throws: MSPError.self) { try restored(Array(bytes.prefix(length))) }
        }
        #expect(throws: MSPError.self) { try restored(bytes + [0]) }
        for i in bytes.indices {
            var damaged = bytes
            damaged[i] ^= UInt8(1 << (i % 8))
            #expect(throws: MSPError.self) { try restored(damaged) }
        }
    }

    @Test func theFramingIsCheckedWithAClearMessage() throws {
        let bytes = try Self.makeSearch(0).checkpoint()
        func message(_ data: [UInt8]) -> String {
            do {
                _ = try restored(data)
                return "accepted"
            } catch let error as MSPError {
                return error.message
            } catch {
                return "\(error)"
            }
        }
        #expect(message([]) == "not a valid msp search checkpoint: 0 bytes is shorter than the smallest checkpoint")
        #expect(message(Array("PK\u{3}\u{4} a zip file, not a checkpoint".utf8)).contains("magic bytes differ"))
        var version = bytes
        version[8] = 2
        #expect(message(resealed(version)) == "not a valid msp search checkpoint: format version 2, this library reads version 1")
        #expect(message(Array(bytes.dropLast(9)) + bytes.suffix(8)).contains("truncated or extended"))
        var flipped = bytes
        flipped[30] ^= 0x10
        #expect(message(flipped) == "not a valid msp search checkpoint: the checksum does not match (the data is corrupted)")
        // Huge counts behind a valid checksum: refused before anything is allocated.
        var huge = bytes
        for i in 20..<28 { huge[i] = i == 23 ? 0x40 : 0 }  // layers = 2^30
        #expect(message(resealed(huge)) == "checkpoint field layers (1073741824 items) runs past the end of the data")
        huge[25] = 0x10  // 2^44 + 2^30
        #expect(message(resealed(huge)) == "checkpoint field layers (17593259786240) is outside [0, 2147483647]")
    }

    @Test(arguments: 0..<3)
    func payloadsRewrittenWithAValidChecksumAreRefusedOrBehave(seed: Int) throws {
        let search = try Self.makeSearch(seed)
        var driver = SearchDriver()
        for _ in 0..<(5 + seed * 3) { _ = try driver.step(search) }
        let bytes = search.checkpoint()
        var rng = SplitMix64(seed: UInt64(seed))
        var refused = 0
        for _ in 0..<300 {
            var damaged = bytes
            for _ in 0..<(1 + rng.next() % 3) {
                let i = 20 + Int(rng.next() % UInt64(bytes.count - 28))
                damaged[i] = UInt8(truncatingIfNeeded: rng.next())
            }
            guard let loaded = try? restored(resealed(damaged)) else {
                refused += 1
                continue
            }
            // Whatever was accepted is a working search: every plan it emits is feasible.
            var check = SearchDriver()
            for _ in 0..<40 { guard try check.step(loaded) else { break } }
            for plan in loaded.state.pending?.plans ?? [] { #expect(loaded.problem.isFeasible(plan)) }
            if let best = loaded.best { #expect(loaded.problem.isFeasible(best.plan)) }
        }
        #expect(refused > 0)
    }
}
