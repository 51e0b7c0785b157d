// Calls the cost-table entry points through the declarations of include/msp.h, as a C program does.
// (The exported signatures are pinned to the header in HeaderSignatureTests.swift.)
import CMSPHeader
import Testing

/// The calling thread's last error message.
private func lastError() -> String { String(cString: msp_last_error_message()!) }

/// A level array as C builds it.
private func level(_ sparsity: Double, _ n: Int32 = 0, _ m: Int32 = 0) -> msp_level {
    msp_level(sparsity: sparsity, n: n, m: m)
}

@Suite("Cost-table entry points compute through the C ABI and reject bad input without writing")
struct CAPICostTableTests {
    /// 2 x 8 float32 weights: row 0 is 1...8, row 1 is -1...-8.
    static let weights: [Float] = (1...8).map { Float($0) } + (1...8).map { -Float($0) }
    static let levels = [level(0.25), level(0.5, 2, 4), level(0.75, 1, 4)]

    @Test func computesTheDocumentedCosts() {
        var w = Self.weights
        var costs = [Double](repeating: -1, count: 3)
        // Per row: 25% prunes the 2 smallest |w| (1, 2); 2:4 prunes 1, 2, 5, 6; 1:4 keeps only 4 and 8.
        let perRow: [Double] = [1 + 4, 1 + 4 + 25 + 36, 1 + 4 + 9 + 25 + 36 + 49]
        #expect(msp_cost_table_energy(&w, MSP_DTYPE_F32, 2, 8, Self.levels, 3, MSP_SCOPE_ROW, nil, nil, 0.5, &costs) == MSP_OK)
        #expect(lastError() == "")
        #expect(costs == perRow.map { 0.5 * 2 * $0 })
        // Per layer: 25% of 16 prunes the four smallest |w|: 1, 1, 2, 2.
        #expect(msp_cost_table_energy(&w, MSP_DTYPE_F32, 2, 8, Self.levels, 3, MSP_SCOPE_LAYER, nil, nil, 1, &costs) == MSP_OK)
        #expect(costs[0] == 10)
        // A diagonal of 2 doubles every cost; col_scale changes which weights an N:M group keeps.
        var diag = [Float](repeating: 2, count: 16)
        var colScale: [Float] = [8, 1, 1, 1, 1, 1, 1, 1]
        #expect(msp_cost_table_energy(&w, MSP_DTYPE_F32, 2, 8, Self.levels, 3, MSP_SCOPE_ROW, nil, &diag, 1, &costs) == MSP_OK)
        #expect(costs == perRow.map { 2 * 2 * $0 })
        #expect(msp_cost_table_energy(&w, MSP_DTYPE_F32, 2, 8, Self.levels, 3, MSP_SCOPE_ROW, &colScale, nil, 1, &costs) == MSP_OK)
        // Row scores 8, 2, 3, 4 | 5, 6, 7, 8: 1:4 keeps 1 (score 8) and 8; prunes 2, 3, 4, 5, 6, 7.
        #expect(costs[2] == 2 * (4 + 9 + 16 + 25 + 36 + 49))
        // With H = I the reconstruction error is the pruned energy.
        var identity = [Float](repeating: 0, count: 64)
        for i in 0..<8 { identity[i * 9] = 1 }
        #expect(msp_cost_table_reconstruction(&w, MSP_DTYPE_F32, 2, 8, Self.levels, 3, MSP_SCOPE_ROW, nil, &identity, &costs) == MSP_OK)
        #expect(costs == perRow.map { 2 * $0 })
        // With H = all ones it is Σ_r (Σ_{pruned} w)².
        var ones = [Float](repeating: 1, count: 64)
        #expect(msp_cost_table_reconstruction(&w, MSP_DTYPE_F32, 2, 8, Self.levels, 3, MSP_SCOPE_ROW, nil, &ones, &costs) == MSP_OK)
        #expect(costs == [18.0, 392, 1152])  // 2 rows x (3², 14², 24²)
    }

    @Test func sixteenBitWeights() {
        var half = Self.weights.map { Float16($0).bitPattern }
        var brain = Self.weights.map { UInt16($0.bitPattern >> 16) }
        var costs = [Double](repeating: 0, count: 3)
        var expected = [Double](repeating: 0, count: 3)
        var w = Self.weights
        #expect(msp_cost_table_energy(&w, MSP_DTYPE_F32, 2, 8, Self.levels, 3, MSP_SCOPE_LAYER, nil, nil, 1, &expected) == MSP_OK)
        #expect(msp_cost_table_energy(&half, MSP_DTYPE_F16, 2, 8, Self.levels, 3, MSP_SCOPE_LAYER, nil, nil, 1, &costs) == MSP_OK)
        #expect(costs == expected)
        #expect(msp_cost_table_energy(&brain, MSP_DTYPE_BF16, 2, 8, Self.levels, 3, MSP_SCOPE_LAYER, nil, nil, 1, &costs) == MSP_OK)
        #expect(costs == expected)
    }

    /// Calls `body` with fresh 2 x 8 weights, the level array, an 8-entry col_scale, a 16-entry diag,
    /// an 8 x 8 gram and 3 costs preset to a marker; expects `status`, `message` and untouched costs.
    func expectRejected(
        _ status: msp_status, _ message: String, weights: [Float] = CAPICostTableTests.weights,
        levels: [msp_level] = CAPICostTableTests.levels, colScale: [Float] = [Float](repeating: 1, count: 8),
        diag: [Float] = [Float](repeating: 1, count: 16), gram: [Float] = [Float](repeating: 1, count: 64),
        _ body: (
            UnsafeMutablePointer<Float>, UnsafePointer<msp_level>, UnsafePointer<Float>, UnsafePointer<Float>,
            UnsafePointer<Float>, UnsafeMutablePointer<Double>
        ) -> msp_status,
        sourceLocation: SourceLocation = #_sourceLocation
    ) {
        var (w, l, s, d, h) = (weights, levels, colScale, diag, gram)
        var costs = [Double](repeating: 42, count: 3)
        let got = body(&w, &l, &s, &d, &h, &costs)
        #expect(got == status, sourceLocation: sourceLocation)
        #expect(lastError().contains(message), "\(lastError())", sourceLocation: sourceLocation)
        #expect(costs == [42, 42, 42], sourceLocation: sourceLocation)
        #expect(w.map(\.bitPattern) == weights.map(\.bitPattern), sourceLocation: sourceLocation)
    }

    @Test func nullPointers() {
        let invalid = MSP_ERR_INVALID_ARGUMENT
        expectRejected(invalid, "weights is NULL") { _, l, _, _, _, c in
            msp_cost_table_energy(nil, MSP_DTYPE_F32, 2, 8, l, 3, MSP_SCOPE_ROW, nil, nil, 1, c)
        }
        expectRejected(invalid, "levels is NULL") { w, _, _, _, _, c in
            msp_cost_table_energy(w, MSP_DTYPE_F32, 2, 8, nil, 3, MSP_SCOPE_ROW, nil, nil, 1, c)
        }
        expectRejected(invalid, "costs_out is NULL") { w, l, _, _, _, _ in
            msp_cost_table_energy(w, MSP_DTYPE_F32, 2, 8, l, 3, MSP_SCOPE_ROW, nil, nil, 1, nil)
        }
        expectRejected(invalid, "weights is NULL") { _, l, _, _, h, c in
            msp_cost_table_reconstruction(nil, MSP_DTYPE_F32, 2, 8, l, 3, MSP_SCOPE_ROW, nil, h, c)
        }
        expectRejected(invalid, "levels is NULL") { w, _, _, _, h, c in
            msp_cost_table_reconstruction(w, MSP_DTYPE_F32, 2, 8, nil, 3, MSP_SCOPE_ROW, nil, h, c)
        }
        expectRejected(invalid, "gram is NULL") { w, l, _, _, _, c in
            msp_cost_table_reconstruction(w, MSP_DTYPE_F32, 2, 8, l, 3, MSP_SCOPE_ROW, nil, nil, c)
        }
        expectRejected(invalid, "costs_out is NULL") { w, l, _, _, h, _ in
            msp_cost_table_reconstruction(w, MSP_DTYPE_F32, 2, 8, l, 3, MSP_SCOPE_ROW, nil, h, nil)
        }
    }

    @Test func badShapesDtypeAndScope() {
        let invalid = MSP_ERR_INVALID_ARGUMENT
        for (rows, cols, text) in [(Int64(0), Int64(8), "rows"), (2, -8, "cols"), (Int64(1) << 62, 8, "overflows")] {
            expectRejected(invalid, text) { w, l, _, _, _, c in
                msp_cost_table_energy(w, MSP_DTYPE_F32, rows, cols, l, 3, MSP_SCOPE_ROW, nil, nil, 1, c)
            }
            expectRejected(invalid, text) { w, l, _, _, h, c in
                msp_cost_table_reconstruction(w, MSP_DTYPE_F32, rows, cols, l, 3, MSP_SCOPE_ROW, nil, h, c)
            }
        }
        // rows * cols fits 16-bit weights but not the float32 diag; cols * cols overflows for the gram.
        expectRejected(invalid, "rows * cols (2305843009213693952) is too large") { w, l, _, d, _, c in
            msp_cost_table_energy(w, MSP_DTYPE_F16, Int64(1) << 57, 16, l, 3, MSP_SCOPE_ROW, nil, d, 1, c)
        }
        expectRejected(invalid, "cols * cols") { w, l, _, _, h, c in
            msp_cost_table_reconstruction(w, MSP_DTYPE_F16, 1, Int64(1) << 40, l, 3, MSP_SCOPE_ROW, nil, h, c)
        }
        expectRejected(invalid, "dtype (3)") { w, l, _, _, _, c in
            msp_cost_table_energy(w, 3, 2, 8, l, 3, MSP_SCOPE_ROW, nil, nil, 1, c)
        }
        expectRejected(invalid, "scope (2) is not MSP_SCOPE_ROW or MSP_SCOPE_LAYER") { w, l, _, _, _, c in
            msp_cost_table_energy(w, MSP_DTYPE_F32, 2, 8, l, 3, 2, nil, nil, 1, c)
        }
        expectRejected(invalid, "scope (-1)") { w, l, _, _, h, c in
            msp_cost_table_reconstruction(w, MSP_DTYPE_F32, 2, 8, l, 3, -1, nil, h, c)
        }
    }

    @Test func badLevels() {
        let invalid = MSP_ERR_INVALID_ARGUMENT
        for count in [Int64(0), -1, 257] {
            expectRejected(invalid, "num_levels (\(count))") { w, l, _, _, _, c in
                msp_cost_table_energy(w, MSP_DTYPE_F32, 2, 8, l, count, MSP_SCOPE_ROW, nil, nil, 1, c)
            }
        }
        let cases: [([msp_level], String)] = [
            ([level(0.5), level(0.25)], "strictly increasing"),
            ([level(1)], "must be in [0, 1)"),
            ([level(-0.1)], "must be in [0, 1)"),
            ([level(.nan)], "must be in [0, 1)"),
            ([level(0.5, 2, 4), level(0.5, 1, 4)], "sparsity"),
            ([level(0.5, 3, 2)], "3:2"),
            ([level(0.5, 0, 4)], "0:4"),
            ([level(0.5, 32, 64)], "32:64"),
            ([level(0.5 + 1e-9, 2, 4)], "sparsity"),
            ([level(0.25), level(0.5, 3, 6)], "level 1 (3:6): cols (8) is not a multiple of m"),
            ([level(0.25), level(0.8, 1, 5), level(0.9)], "level 1 (1:5): cols (8) is not a multiple of m"),
        ]
        for (levels, text) in cases {
            let count = Int64(levels.count)
            expectRejected(invalid, text, levels: levels) { w, l, _, _, _, c in
                msp_cost_table_energy(w, MSP_DTYPE_F32, 2, 8, l, count, MSP_SCOPE_ROW, nil, nil, 1, c)
            }
            expectRejected(invalid, text, levels: levels) { w, l, _, _, h, c in
                msp_cost_table_reconstruction(w, MSP_DTYPE_F32, 2, 8, l, count, MSP_SCOPE_LAYER, nil, h, c)
            }
        }
        // Consistent N:M sparsity within 1e-12 is accepted.
        var w = Self.weights
        var levels = [level(0.5 + 1e-13, 2, 4)]
        var costs = [0.0]
        #expect(msp_cost_table_energy(&w, MSP_DTYPE_F32, 2, 8, &levels, 1, MSP_SCOPE_ROW, nil, nil, 1, &costs) == MSP_OK)
        #expect(costs == [2 * (1 + 4 + 25 + 36)])
    }

    @Test func badValues() {
        let invalid = MSP_ERR_INVALID_ARGUMENT
        var weights = Self.weights
        weights[11] = .nan
        expectRejected(invalid, "weights[1][3] is NaN", weights: weights) { w, l, _, _, _, c in
            msp_cost_table_energy(w, MSP_DTYPE_F32, 2, 8, l, 3, MSP_SCOPE_ROW, nil, nil, 1, c)
        }
        expectRejected(invalid, "weights[1][3] is NaN", weights: weights) { w, l, _, _, h, c in
            msp_cost_table_reconstruction(w, MSP_DTYPE_F32, 2, 8, l, 3, MSP_SCOPE_ROW, nil, h, c)
        }
        weights[11] = -.infinity
        expectRejected(invalid, "weights[1][3] (-inf) is not finite", weights: weights) { w, l, _, _, _, c in
            msp_cost_table_energy(w, MSP_DTYPE_F32, 2, 8, l, 3, MSP_SCOPE_ROW, nil, nil, 1, c)
        }
        var colScale = [Float](repeating: 1, count: 8)
        colScale[3] = 0
        expectRejected(invalid, "score of weights[1][3] is NaN", weights: weights, colScale: colScale) {
            w, l, s, _, h, c in
            msp_cost_table_reconstruction(w, MSP_DTYPE_F32, 2, 8, l, 3, MSP_SCOPE_LAYER, s, h, c)
        }
        colScale[3] = -2
        expectRejected(invalid, "col_scale[3] (-2.0) must be finite and >= 0", colScale: colScale) { w, l, s, _, _, c in
            msp_cost_table_energy(w, MSP_DTYPE_F32, 2, 8, l, 3, MSP_SCOPE_ROW, s, nil, 1, c)
        }
        var diag = [Float](repeating: 1, count: 16)
        diag[9] = .nan
        expectRejected(invalid, "diag[1][1] (nan) is not finite", diag: diag) { w, l, _, d, _, c in
            msp_cost_table_energy(w, MSP_DTYPE_F32, 2, 8, l, 3, MSP_SCOPE_ROW, nil, d, 1, c)
        }
        var gram = [Float](repeating: 1, count: 64)
        gram[63] = .infinity
        expectRejected(invalid, "gram[7][7] (inf) is not finite", gram: gram) { w, l, _, _, h, c in
            msp_cost_table_reconstruction(w, MSP_DTYPE_F32, 2, 8, l, 3, MSP_SCOPE_ROW, nil, h, c)
        }
        for scale in [-1.0, .nan, .infinity] {
            expectRejected(invalid, "scale (\(scale)) must be finite and >= 0") { w, l, _, _, _, c in
                msp_cost_table_energy(w, MSP_DTYPE_F32, 2, 8, l, 3, MSP_SCOPE_ROW, nil, nil, scale, c)
            }
        }
    }
}
