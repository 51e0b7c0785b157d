// Calls the Gram and SparseGPT entry points through the declarations of include/msp.h, as a C
// program does: results equal the core's, one solver shared by threads, and every bad argument
// rejected with a message and every buffer unchanged.

import CMSPHeader
import Dispatch
import MSPCore
import Testing

/// The calling thread's last error message.
private func lastError() -> String { String(cString: msp_last_error_message()!) }

/// Expects `call` to fail with MSP_ERR_INVALID_ARGUMENT and a message.
private func rejects(_ what: String, _ call: () -> msp_status) {
    let status = call()
    #expect(status == MSP_ERR_INVALID_ARGUMENT && !lastError().isEmpty, "\(what): status \(status)")
}

/// Carries a handle and raw buffers into `concurrentPerform`, whose threads use them without races.
private struct Shared<T>: @unchecked Sendable {
    let value: T
}

/// A random SPD Gram matrix XᵀX (`tokens` tokens of `cols` features).
private func gramMatrix(cols: Int, tokens: Int, seed: UInt64) -> [Float] {
    var rng = SplitMix64(seed: seed)
    let x = (0..<(tokens * cols)).map { _ in Float.random(in: -1...1, using: &rng) }
    var h = [Float](repeating: 0, count: cols * cols)
    for i in 0..<cols { for j in 0..<cols { h[i * cols + j] = (0..<tokens).reduce(0) { $0 + x[$1 * cols + i] * x[$1 * cols + j] } } }
    return h
}

/// Random weights.
private func weights(_ count: Int, seed: UInt64) -> [Float] {
    var rng = SplitMix64(seed: seed)
    return (0..<count).map { _ in Float.random(in: -1...1, using: &rng) }
}

@Suite("Gram and SparseGPT entry points: core results, shared solvers, bad input rejected unchanged")
struct CAPIOBSTests {
    @Test func gramAccumulatorThroughTheCAPI() throws {
        var handle: OpaquePointer?
        #expect(msp_gram_create([3, 2], 2, &handle) == MSP_OK && lastError() == "")
        defer { msp_gram_free(handle) }
        let x: [Float] = [1, 2, 3, -4, 0, 5]
        #expect(msp_gram_add(handle, 0, x, MSP_DTYPE_F32, 2, 3) == MSP_OK)
        var h = [Float](repeating: .nan, count: 9)
        #expect(msp_gram_get(handle, 0, &h) == MSP_OK && h == [17, 2, -17, 2, 4, 6, -17, 6, 34])
        var tokens: Int64 = -1
        #expect(msp_gram_tokens(handle, 0, &tokens) == MSP_OK && tokens == 2)
        // Bad calls: a status, a message, and nothing changed.
        let nan: [Float] = [1, 2, .nan]
        rejects("NULL handle") { msp_gram_add(nil, 0, x, MSP_DTYPE_F32, 1, 3) }
        rejects("NULL x") { msp_gram_add(handle, 0, nil, MSP_DTYPE_F32, 1, 3) }
        rejects("layer 2") { msp_gram_add(handle, 2, x, MSP_DTYPE_F32, 1, 3) }
        rejects("layer -1") { msp_gram_add(handle, -1, x, MSP_DTYPE_F32, 1, 3) }
        rejects("dtype 7") { msp_gram_add(handle, 0, x, 7, 1, 3) }
        rejects("tokens 0") { msp_gram_add(handle, 0, x, MSP_DTYPE_F32, 0, 3) }
        rejects("cols 2") { msp_gram_add(handle, 0, x, MSP_DTYPE_F32, 1, 2) }
        rejects("overflow") { msp_gram_add(handle, 0, x, MSP_DTYPE_F32, Int64.max / 2, 3) }
        rejects("NaN") { msp_gram_add(handle, 0, nan, MSP_DTYPE_F32, 1, 3) }
        rejects("tokens out NULL") { msp_gram_tokens(handle, 0, nil) }
        rejects("get layer 5") { msp_gram_get(handle, 5, &h) }
        rejects("get out NULL") { msp_gram_get(handle, 0, nil) }
        rejects("reset NULL") { msp_gram_reset(nil) }
        var after = [Float](repeating: .nan, count: 9)
        #expect(msp_gram_get(handle, 0, &after) == MSP_OK && after == h)
        #expect(msp_gram_tokens(handle, 0, &tokens) == MSP_OK && tokens == 2)
        var untouched: OpaquePointer? = OpaquePointer(bitPattern: 0x1234)
        #expect(msp_gram_create([3, 0], 2, &untouched) == MSP_ERR_INVALID_ARGUMENT && !lastError().isEmpty)
        #expect(msp_gram_create(nil, 2, &untouched) == MSP_ERR_INVALID_ARGUMENT)
        #expect(msp_gram_create([3], 0, &untouched) == MSP_ERR_INVALID_ARGUMENT)
        #expect(msp_gram_create([3], 1, nil) == MSP_ERR_INVALID_ARGUMENT)
        #expect(untouched == OpaquePointer(bitPattern: 0x1234))
        msp_gram_free(nil)
    }

    @Test func pruneEqualsTheCoreAndOneSolverServesManyThreads() throws {
        let rows = 40, cols = 32
        let gram = gramMatrix(cols: cols, tokens: 64, seed: 1)
        var obs: OpaquePointer?
        #expect(msp_obs_create(gram, Int64(cols), 0.01, &obs) == MSP_OK)
        defer { msp_obs_free(obs) }
        let core = try OBSSolver(gram: gram, cols: cols, damp: 0.01)
        let levels = [msp_level(sparsity: 0.6, n: 0, m: 0), msp_level(sparsity: 0.75, n: 2, m: 8), msp_level(sparsity: 0.5, n: 1, m: 2)]
        var serial: [[Float]] = []
        for (k, level) in levels.enumerated() {
            var w = weights(rows * cols, seed: UInt64(k)), expected = w
            var keep = [UInt8](repeating: 9, count: rows * cols)
            var level = level
            #expect(msp_obs_prune(obs, &w, MSP_DTYPE_F32, Int64(rows), Int64(cols), &level, 16, &keep) == MSP_OK)
            let coreLevel = level.m == 0 ? try Level(sparsity: level.sparsity) : try Level(n: Int(level.n), m: Int(level.m))
            try expected.withUnsafeMutableBytes {
                try core.prune(weights: $0.baseAddress!, Matrix(rows: rows, cols: cols, type: .f32), level: coreLevel, block: 16, keepMask: nil)
            }
            #expect(w.map(\.bitPattern) == expected.map(\.bitPattern))
            #expect(keep.allSatisfy { $0 <= 1 } && keep.filter { $0 == 0 }.count > 0)
            serial.append(w)
        }
        // Twelve prunes on one handle from four threads at once equal the serial ones.
        let results = UnsafeMutableBufferPointer<[Float]>.allocate(capacity: 12)
        results.initialize(repeating: [])
        defer {
            _ = results.deinitialize()
            results.deallocate()
        }
        let shared = Shared(value: (obs, levels, results))
        DispatchQueue.concurrentPerform(iterations: 12) { i in
            var w = weights(rows * cols, seed: UInt64(i % 3)), level = shared.value.1[i % 3]
            _ = msp_obs_prune(shared.value.0, &w, MSP_DTYPE_F32, Int64(rows), Int64(cols), &level, 16, nil)
            shared.value.2[i] = w
        }
        for i in 0..<12 { #expect(results[i].map(\.bitPattern) == serial[i % 3].map(\.bitPattern), "prune \(i)") }
    }

    @Test func badSolverArgumentsAreRejectedUnchanged() throws {
        let rows = 4, cols = 8
        let gram = gramMatrix(cols: cols, tokens: 20, seed: 2)
        var untouched: OpaquePointer? = OpaquePointer(bitPattern: 0x5678)
        rejects("NULL gram") { msp_obs_create(nil, Int64(cols), 0.01, &untouched) }
        rejects("NULL out") { msp_obs_create(gram, Int64(cols), 0.01, nil) }
        rejects("cols 0") { msp_obs_create(gram, 0, 0.01, &untouched) }
        rejects("cols overflow") { msp_obs_create(gram, Int64.max, 0.01, &untouched) }
        rejects("damp NaN") { msp_obs_create(gram, Int64(cols), .nan, &untouched) }
        rejects("damp -1") { msp_obs_create(gram, Int64(cols), -1, &untouched) }
        rejects("indefinite") { msp_obs_create((0..<(cols * cols)).map { $0 == 0 ? -9 : ($0 % (cols + 1) == 0 ? 1 : 0) }, Int64(cols), 0.01, &untouched) }
        #expect(lastError().contains("positive definite") && lastError().contains("damp"))
        #expect(untouched == OpaquePointer(bitPattern: 0x5678))
        var obs: OpaquePointer?
        #expect(msp_obs_create(gram, Int64(cols), 0.01, &obs) == MSP_OK)
        defer { msp_obs_free(obs) }
        let good = weights(rows * cols, seed: 3)
        var w = good, nan = good
        nan[5] = .nan
        var keep = [UInt8](repeating: 9, count: rows * cols)
        var level = msp_level(sparsity: 0.5, n: 0, m: 0)
        rejects("NULL obs") { msp_obs_prune(nil, &w, MSP_DTYPE_F32, Int64(rows), Int64(cols), &level, 128, &keep) }
        rejects("NULL weights") { msp_obs_prune(obs, nil, MSP_DTYPE_F32, Int64(rows), Int64(cols), &level, 128, &keep) }
        rejects("NULL level") { msp_obs_prune(obs, &w, MSP_DTYPE_F32, Int64(rows), Int64(cols), nil, 128, &keep) }
        rejects("dtype 3") { msp_obs_prune(obs, &w, 3, Int64(rows), Int64(cols), &level, 128, &keep) }
        rejects("rows 0") { msp_obs_prune(obs, &w, MSP_DTYPE_F32, 0, Int64(cols), &level, 128, &keep) }
        rejects("cols 4") { msp_obs_prune(obs, &w, MSP_DTYPE_F32, Int64(rows * 2), 4, &level, 128, &keep) }
        rejects("rows overflow") { msp_obs_prune(obs, &w, MSP_DTYPE_F32, Int64.max / 4, Int64(cols), &level, 128, &keep) }
        rejects("block 0") { msp_obs_prune(obs, &w, MSP_DTYPE_F32, Int64(rows), Int64(cols), &level, 0, &keep) }
        rejects("block -5") { msp_obs_prune(obs, &w, MSP_DTYPE_F32, Int64(rows), Int64(cols), &level, -5, &keep) }
        rejects("NaN weight") { msp_obs_prune(obs, &nan, MSP_DTYPE_F32, Int64(rows), Int64(cols), &level, 128, &keep) }
        for (what, bad) in [
            ("sparsity 1", msp_level(sparsity: 1, n: 0, m: 0)),
            ("sparsity NaN", msp_level(sparsity: .nan, n: 0, m: 0)),
            ("n > m", msp_level(sparsity: 0, n: 5, m: 4)),
            ("m 3", msp_level(sparsity: 1 - 1.0 / 3, n: 1, m: 3)),
            ("inconsistent", msp_level(sparsity: 0.5, n: 1, m: 4)),
            ("m 64", msp_level(sparsity: 0.5, n: 32, m: 64)),
        ] {
            var bad = bad
            rejects(what) { msp_obs_prune(obs, &w, MSP_DTYPE_F32, Int64(rows), Int64(cols), &bad, 128, &keep) }
        }
        #expect(w.map(\.bitPattern) == good.map(\.bitPattern) && keep.allSatisfy { $0 == 9 })
        #expect(msp_obs_prune(obs, &w, MSP_DTYPE_F32, Int64(rows), Int64(cols), &level, 128, nil) == MSP_OK)
        #expect(lastError() == "" && w.filter { $0 == 0 }.count == rows * cols / 2)
        msp_obs_free(nil)
    }
}
