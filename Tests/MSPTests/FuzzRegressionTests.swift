// Inputs the fuzz targets in Tests/Fuzz found, replayed through the declarations of include/msp.h.
// Each test names the target that found it; `make fuzz` runs the targets.
import CMSPHeader
import Testing

/// The calling thread's last error message.
private func lastError() -> String { String(cString: msp_last_error_message()!) }

@Suite("Inputs found by fuzzing stay fixed")
struct FuzzRegressionTests {
    /// fuzz_cost_table: finite weights and Gram matrix whose float32 product dW·H overflows gave a NaN
    /// cost with MSP_OK (0 · inf in the row dot product), which msp_solve_additive then rejects.
    @Test func reconstructionThatOverflowsFloat32IsAnError() {
        var w: [Float] = [1e20, 1e20]  // 1 x 2; the 1:2 level prunes w[1] (ties keep the lower index)
        var gram: [Float] = [1e30, 1e30, 1e30, 1e30]  // dW·H = [1e50, 1e50]: inf in float32
        let levels = [msp_level(sparsity: 0, n: 2, m: 2), msp_level(sparsity: 0.5, n: 1, m: 2)]
        var costs: [Double] = [-1, -1]
        #expect(
            msp_cost_table_reconstruction(&w, MSP_DTYPE_F32, 1, 2, levels, 2, MSP_SCOPE_ROW, nil, &gram, &costs)
                == MSP_ERR_INVALID_ARGUMENT)
        #expect(costs == [-1, -1])
        #expect(lastError().contains("cost of level 1 overflows"))
        // Smaller magnitudes of the same shape are fine.
        gram = [1, 1, 1, 1]
        #expect(
            msp_cost_table_reconstruction(&w, MSP_DTYPE_F32, 1, 2, levels, 2, MSP_SCOPE_ROW, nil, &gram, &costs) == MSP_OK)
        let x = Double(Float(1e20))
        #expect(costs == [0, x * x])
    }

    /// fuzz_cost_table: an energy whose double sum overflows (a huge `scale`) gave +inf with MSP_OK.
    @Test func energyThatOverflowsDoubleIsAnError() {
        var w: [Float] = [3e38, 3e38, 3e38, 3e38]
        var diag: [Float] = [1, 1, 3e38, 3e38]
        let levels = [msp_level(sparsity: 0, n: 4, m: 4), msp_level(sparsity: 0.5, n: 2, m: 4)]
        var costs: [Double] = [-1, -1]
        #expect(
            msp_cost_table_energy(&w, MSP_DTYPE_F32, 1, 4, levels, 2, MSP_SCOPE_ROW, nil, &diag, 1e300, &costs)
                == MSP_ERR_INVALID_ARGUMENT)
        #expect(costs == [-1, -1])
        #expect(lastError().contains("cost of level 1 overflows"))
        #expect(msp_cost_table_energy(&w, MSP_DTYPE_F32, 1, 4, levels, 2, MSP_SCOPE_ROW, nil, &diag, 1, &costs) == MSP_OK)
        #expect(costs[0] == 0 && costs[1].isFinite && costs[1] > 0)
    }
}
