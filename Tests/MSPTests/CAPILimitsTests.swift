// Every limit the library enforces is the header's macro: each entry point that checks one accepts
// the macro's value and rejects one past it. (msp_get_limits reporting the macros is checked in
// CAPILibraryTests.swift; python/tests/test_limits.py does the same through Python.)

import CMSPHeader
import Testing

/// The calling thread's last error message.
private func lastError() -> String { String(cString: msp_last_error_message()!) }

/// `count` unstructured levels of increasing sparsity in [0, 0.99).
private func ratioLevels(_ count: Int) -> [msp_level] {
    (0..<count).map { msp_level(sparsity: 0.99 * Double($0) / Double(count), n: 0, m: 0) }
}

/// Creates a problem over `sizes` and `levels`, frees it, and gives the status.
private func createStatus(_ sizes: [Int64], _ levels: [msp_level]) -> msp_status {
    var problem: OpaquePointer?
    let status = msp_problem_create(sizes, Int64(sizes.count), levels, Int64(levels.count), &problem)
    msp_problem_free(problem)
    return status
}

/// The status of the energy cost table of one row of `cols` weights at `levels` (row scope).
private func energyStatus(cols: Int, _ levels: [msp_level]) -> msp_status {
    var weights = (0..<cols).map { Float($0 + 1) }
    var costs = [Double](repeating: 0, count: levels.count)
    return msp_cost_table_energy(
        &weights, MSP_DTYPE_F32, 1, Int64(cols), levels, Int64(levels.count), MSP_SCOPE_ROW, nil, nil, 1, &costs)
}

@Suite("Each limit the library enforces is the header's macro: the macro accepted, one past it rejected")
struct CAPILimitsTests {
    @Test func largestGroupSizeIsMSP_MAX_M() {
        let m = Int(MSP_MAX_M)
        // One row of scores 1...m at 1:m keeps only the largest; m + 1 is refused.
        var scores = (0...m).map { Float($0 + 1) }
        var keep = [UInt8](repeating: 9, count: m + 1)
        #expect(msp_nm_mask(&scores, MSP_DTYPE_F32, 1, Int64(m), 1, Int32(m), &keep) == MSP_OK)
        #expect(keep == [UInt8](repeating: 0, count: m - 1) + [1, 9])
        #expect(msp_nm_mask(&scores, MSP_DTYPE_F32, 1, Int64(m + 1), 1, Int32(m + 1), &keep) == MSP_ERR_INVALID_ARGUMENT)
        #expect(lastError() == "m (\(m + 1)) must be in [2, \(m)]")
        #expect(msp_nm_prune(&scores, MSP_DTYPE_F32, 1, Int64(m), 1, Int32(m), nil, nil) == MSP_OK)
        #expect(scores[m - 1] == Float(m) && scores[0..<(m - 1)].allSatisfy { $0 == 0 })
        #expect(msp_nm_prune(&scores, MSP_DTYPE_F32, 1, Int64(m + 1), 1, Int32(m + 1), nil, nil) == MSP_ERR_INVALID_ARGUMENT)
        // N:M levels of a problem and of a cost table.
        let widest = msp_level(sparsity: 1 - 1 / Double(m), n: 1, m: Int32(m))
        let tooWide = msp_level(sparsity: 1 - 1 / Double(m + 1), n: 1, m: Int32(m + 1))
        #expect(createStatus([64], [widest]) == MSP_OK)
        #expect(createStatus([64], [tooWide]) == MSP_ERR_INVALID_ARGUMENT)
        #expect(lastError() == "level 1:\(m + 1) must have 0 < n <= m <= \(m)")
        #expect(energyStatus(cols: m, [widest]) == MSP_OK)
        #expect(energyStatus(cols: m + 1, [tooWide]) == MSP_ERR_INVALID_ARGUMENT)
        #expect(lastError() == "level 1:\(m + 1) must have 0 < n <= m <= \(m)")
    }

    @Test func mostLevelsIsMSP_MAX_LEVELS() {
        let most = Int(MSP_MAX_LEVELS)
        #expect(createStatus([10, 20], ratioLevels(most)) == MSP_OK)
        #expect(createStatus([10, 20], ratioLevels(most + 1)) == MSP_ERR_INVALID_ARGUMENT)
        #expect(lastError() == "num_levels (\(most + 1)) must be in [1, \(most)]")
        #expect(energyStatus(cols: 8, ratioLevels(most)) == MSP_OK)
        #expect(energyStatus(cols: 8, ratioLevels(most + 1)) == MSP_ERR_INVALID_ARGUMENT)
        #expect(lastError() == "num_levels (\(most + 1)) must be in [1, \(most)]")
    }

    @Test func mostLayersIsMSP_MAX_LAYERS() {
        // The count is checked before the sizes are read: at the limit the NULL sizes are what fails.
        var problem: OpaquePointer?
        let levels = ratioLevels(2)
        #expect(msp_problem_create(nil, Int64(MSP_MAX_LAYERS), levels, 2, &problem) == MSP_ERR_INVALID_ARGUMENT)
        #expect(lastError() == "sizes is NULL")
        #expect(msp_problem_create(nil, Int64(MSP_MAX_LAYERS) + 1, levels, 2, &problem) == MSP_ERR_INVALID_ARGUMENT)
        #expect(lastError() == "num_layers (\(Int64(MSP_MAX_LAYERS) + 1)) must be in [1, \(MSP_MAX_LAYERS)]")
        #expect(problem == nil)
    }

    @Test func widestUnstructuredRowIsMSP_MAX_TOPK_COLS() {
        // At the limit the column count passes and the next check, col_scale[0] = -1, rejects the
        // call before any buffer of that size is read; one column more is refused as too wide.
        let widest = Int64(MSP_MAX_TOPK_COLS)
        var weights: [Float] = [1, 2, 3, 4]
        var scale: [Float] = [-1, 1, 1, 1]
        var costs = [0.0]
        let level = [msp_level(sparsity: 0.5, n: 0, m: 0)]
        for (cols, message) in [(widest, "col_scale[0] (-1.0) must be finite and >= 0"),
                                (widest + 1, "cols (\(widest + 1)) must be at most \(widest)")] {
            #expect(msp_topk_prune(&weights, MSP_DTYPE_F32, 1, cols, 0.5, MSP_SCOPE_ROW, &scale, nil) == MSP_ERR_INVALID_ARGUMENT)
            #expect(lastError() == message)
            #expect(msp_cost_table_energy(&weights, MSP_DTYPE_F32, 1, cols, level, 1, MSP_SCOPE_ROW, &scale, nil, 1, &costs)
                    == MSP_ERR_INVALID_ARGUMENT)
            #expect(lastError().hasPrefix(message), "\(lastError())")
        }
        #expect(weights == [1, 2, 3, 4] && costs == [0])
    }

    @Test func widestToleranceIsMSP_MAX_TOLERANCE() {
        var problem: OpaquePointer?
        #expect(msp_problem_create([10, 30], 2, ratioLevels(4), 4, &problem) == MSP_OK)
        defer { msp_problem_free(problem) }
        #expect(msp_problem_set_target(problem, 0.5, MSP_MAX_TOLERANCE) == MSP_OK)
        let past = MSP_MAX_TOLERANCE.nextUp
        #expect(msp_problem_set_target(problem, 0.5, past) == MSP_ERR_INVALID_ARGUMENT)
        #expect(lastError() == "tolerance (\(past)) must be in [0, \(MSP_MAX_TOLERANCE)]")
    }

    @Test func levelSparsityToleranceIsMSP_LEVEL_SPARSITY_TOLERANCE() {
        // 1:2 has sparsity 0.5; offsets are exact to ~1e-16 at that magnitude.
        let within = msp_level(sparsity: 0.5 + 0.99 * MSP_LEVEL_SPARSITY_TOLERANCE, n: 1, m: 2)
        let beyond = msp_level(sparsity: 0.5 - 1.01 * MSP_LEVEL_SPARSITY_TOLERANCE, n: 1, m: 2)
        #expect(createStatus([8], [within]) == MSP_OK)
        #expect(createStatus([8], [beyond]) == MSP_ERR_INVALID_ARGUMENT)
        #expect(lastError().contains("differs from 1 - n/m for 1:2"), "\(lastError())")
    }

    @Test(arguments: ["offspring", "survivors", "fidelity_levels"])
    func searchSettingsAtMostTheirMacro(field: String) {
        var problem: OpaquePointer?
        #expect(msp_problem_create([10, 20, 30], 3, ratioLevels(4), 4, &problem) == MSP_OK)
        defer { msp_problem_free(problem) }
        #expect(msp_problem_set_target(problem, 0.5, 0.2) == MSP_OK)
        let most: Int32
        switch field {
        case "offspring": most = MSP_MAX_OFFSPRING
        case "survivors": most = MSP_MAX_SURVIVORS
        default: most = MSP_MAX_FIDELITY_LEVELS
        }
        for (value, status) in [(most, MSP_OK), (most + 1, MSP_ERR_INVALID_ARGUMENT)] {
            var params = msp_search_params_default()
            switch field {
            case "offspring": params.offspring = value
            case "survivors": params.survivors = value
            default: params.fidelity_levels = value
            }
            var search: OpaquePointer?
            #expect(msp_search_create(problem, [1, 2, 3], &params, &search) == status, "\(field) = \(value)")
            if status != MSP_OK { #expect(lastError() == "\(field) (\(value)) must be in [1, \(most)]") }
            #expect((search != nil) == (status == MSP_OK))
            msp_search_free(search)
        }
    }
}
