// Calls the search entry points added with the surrogate (proxy tables, checkpoints) through the
// declarations of include/msp.h, as a C program does.
import CMSPHeader
import Testing

/// The calling thread's last error message.
private func lastError() -> String { String(cString: msp_last_error_message()!) }

/// 6 layers of 1024 weights, the N:4 levels 4:4 .. 1:4, target 0.5.
private func makeProblem() -> OpaquePointer? {
    let sizes = [Int64](repeating: 1024, count: 6)
    let levels = (0..<4).map { msp_level(sparsity: Double($0) / 4, n: Int32(4 - $0), m: 4) }
    var problem: OpaquePointer?
    guard msp_problem_create(sizes, 6, levels, 4, &problem) == MSP_OK,
        msp_problem_set_target(problem, 0.5, 0.001) == MSP_OK
    else { return nil }
    return problem
}

/// Costs that make layer l prefer sparsity in proportion to l: the optimum at 0.5 prunes the
/// last layers most.
private let proxyCosts: [Double] = (0..<6).flatMap { l in (0..<4).map { Double($0 * $0) * Double(7 - l) } }

/// A search with the given settings tweaks.
private func makeSearch(_ tweak: (inout msp_search_params) -> Void = { _ in }) -> OpaquePointer? {
    guard let problem = makeProblem() else { return nil }
    defer { msp_problem_free(problem) }
    var params = msp_search_params_default()
    params.generations = 4
    params.offspring = 4
    tweak(&params)
    var search: OpaquePointer?
    let sensitivity = [Double](repeating: 1, count: 6)
    return msp_search_create(problem, sensitivity, &params, &search) == MSP_OK ? search : nil
}

/// One ask and one tell with the proxy costs as fitness; the plans asked, or nil when done.
private func step(_ search: OpaquePointer?) -> [Int32]? {
    let capacity = msp_search_max_batch(search)
    var plans = [Int32](repeating: -1, count: Int(capacity) * 6)
    var count: Int64 = 0
    var fidelity: Int32 = 0
    guard msp_search_ask(search, &plans, capacity, &count, &fidelity) == MSP_OK, count > 0 else { return nil }
    let values = (0..<Int(count)).map { i in (0..<6).reduce(0.0) { $0 + proxyCosts[$1 * 4 + Int(plans[i * 6 + $1])] } }
    guard msp_search_tell(search, values, count) == MSP_OK else { return nil }
    return Array(plans.prefix(Int(count) * 6))
}

/// The search's checkpoint bytes.
private func save(_ search: OpaquePointer?) -> [UInt8] {
    var size: Int64 = -1
    guard msp_search_save_size(search, &size) == MSP_OK, size > 0 else { return [] }
    var bytes = [UInt8](repeating: 0, count: Int(size))
    var written: Int64 = -1
    guard msp_search_save(search, &bytes, size, &written) == MSP_OK, written == size else { return [] }
    return bytes
}

@Suite("Search entry points: proxy tables and checkpoints through the C ABI")
struct CAPISearchCheckpointTests {
    @Test func theParamsStructGrewByTheSurrogateFields() {
        let params = msp_search_params_default()
        #expect(Int(params.struct_size) == MemoryLayout<msp_search_params>.size)
        #expect(MemoryLayout<msp_search_params>.size == 112)
        #expect(params.surrogate_candidates >= 0 && params.surrogate_ridge > 0)
        #expect(params.surrogate_exploration >= 0 && (0...1).contains(params.pair_rate))
        var bad = params
        bad.surrogate_ridge = 0
        var search: OpaquePointer? = OpaquePointer(bitPattern: 8)
        let problem = makeProblem()
        defer { msp_problem_free(problem) }
        #expect(msp_search_create(problem, [Double](repeating: 1, count: 6), &bad, &search) == MSP_ERR_INVALID_ARGUMENT)
        #expect(lastError() == "surrogate_ridge (0.0) must be finite and > 0")
        #expect(search == OpaquePointer(bitPattern: 8))
    }

    @Test func aProxysOptimumJoinsGenerationZero() throws {
        let search = try #require(makeSearch())
        defer { msp_search_free(search) }
        #expect(msp_search_add_proxy(search, proxyCosts) == MSP_OK)
        // Brute force: the cheapest of the 4^6 plans that average exactly 0.5 (levels in quarters).
        var best = Double.infinity, optimum: [Int32] = []
        for code in 0..<4096 {
            let plan = (0..<6).map { Int32((code >> (2 * $0)) & 3) }
            guard plan.reduce(0, +) == 12 else { continue }
            let cost = (0..<6).reduce(0.0) { $0 + proxyCosts[$1 * 4 + Int(plan[$1])] }
            if cost < best { (best, optimum) = (cost, plan) }
        }
        let first = try #require(step(search))
        let plans = stride(from: 0, to: first.count, by: 6).map { Array(first[$0..<($0 + 6)]) }
        #expect(plans.contains(optimum))
        #expect(plans.last == optimum)  // after the prior grid
    }

    @Test func proxiesAreRefusedLateOrBadWithoutChangingTheSearch() throws {
        let search = try #require(makeSearch())
        defer { msp_search_free(search) }
        var nan = proxyCosts
        nan[5] = .nan
        #expect(msp_search_add_proxy(search, nan) == MSP_ERR_INVALID_ARGUMENT)
        #expect(lastError() == "costs[1][1] (nan) is not finite")
        #expect(msp_search_add_proxy(nil, proxyCosts) == MSP_ERR_INVALID_ARGUMENT)
        #expect(msp_search_add_proxy(search, nil) == MSP_ERR_INVALID_ARGUMENT)
        for _ in 0..<MSP_MAX_PROXIES { #expect(msp_search_add_proxy(search, proxyCosts) == MSP_OK) }
        #expect(msp_search_add_proxy(search, proxyCosts) == MSP_ERR_INVALID_STATE)
        #expect(lastError() == "a search holds at most 8 proxy tables")
        let late = try #require(makeSearch())
        defer { msp_search_free(late) }
        #expect(step(late) != nil)
        #expect(msp_search_add_proxy(late, proxyCosts) == MSP_ERR_INVALID_STATE)
        #expect(lastError() == "proxy tables can only be added before the first ask")
    }

    @Test func aLoadedSearchContinuesLikeTheSavedOne() throws {
        let search = try #require(makeSearch { $0.fidelity_levels = 2 })
        defer { msp_search_free(search) }
        #expect(msp_search_add_proxy(search, proxyCosts) == MSP_OK)
        _ = step(search)
        _ = step(search)
        let bytes = save(search)
        #expect(!bytes.isEmpty)
        var loaded: OpaquePointer?
        #expect(msp_search_load(bytes, Int64(bytes.count), &loaded) == MSP_OK)
        defer { msp_search_free(loaded) }
        #expect(msp_search_max_batch(loaded) == msp_search_max_batch(search))
        while let plans = step(search) { #expect(step(loaded) == plans) }
        #expect(step(loaded) == nil)
        var a = [Int32](repeating: 0, count: 6), b = a
        var fa = 0.0, fb = 0.0
        #expect(msp_search_best(search, &a, &fa) == MSP_OK && msp_search_best(loaded, &b, &fb) == MSP_OK)
        #expect(a == b && fa == fb)
        #expect(save(loaded) == save(search))
    }

    @Test func badCallsLeaveEveryBufferUntouched() throws {
        let search = try #require(makeSearch())
        defer { msp_search_free(search) }
        let bytes = save(search)
        var small = [UInt8](repeating: 0xEE, count: bytes.count - 1)
        var written: Int64 = -7
        #expect(msp_search_save(search, &small, Int64(small.count), &written) == MSP_ERR_INVALID_ARGUMENT)
        #expect(lastError().hasPrefix("capacity (\(bytes.count - 1)) is smaller than the checkpoint"))
        #expect(small.allSatisfy { $0 == 0xEE } && written == -7)
        var size: Int64 = -7
        #expect(msp_search_save_size(nil, &size) == MSP_ERR_INVALID_ARGUMENT && size == -7)
        #expect(msp_search_save_size(search, nil) == MSP_ERR_INVALID_ARGUMENT)
        #expect(msp_search_save(search, nil, 100, &written) == MSP_ERR_INVALID_ARGUMENT)
        var out: OpaquePointer? = OpaquePointer(bitPattern: 16)
        #expect(msp_search_load(nil, 10, &out) == MSP_ERR_INVALID_ARGUMENT)
        #expect(msp_search_load(bytes, -1, &out) == MSP_ERR_INVALID_ARGUMENT)
        #expect(msp_search_load(bytes, Int64(bytes.count), nil) == MSP_ERR_INVALID_ARGUMENT)
        let garbage = [UInt8](repeating: 0x4D, count: 64)
        #expect(msp_search_load(garbage, 64, &out) == MSP_ERR_INVALID_ARGUMENT)
        #expect(lastError() == "not a valid msp search checkpoint: the magic bytes differ")
        #expect(msp_search_load(bytes, Int64(bytes.count - 1), &out) == MSP_ERR_INVALID_ARGUMENT)
        #expect(out == OpaquePointer(bitPattern: 16))
        #expect(msp_search_load(bytes, Int64(bytes.count), &out) == MSP_OK)
        msp_search_free(out)
    }
}
