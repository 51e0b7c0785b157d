// Calls the entry points through the declarations of include/msp.h, as a C program does.
import CMSPHeader
import Testing

/// The calling thread's last error message.
private func lastError() -> String { String(cString: msp_last_error_message()!) }

@Suite("Masking entry points reject bad input without touching buffers")
struct CAPIMaskingTests {
    /// Calls `body` on fresh buffers (4 x 8 weights, a keep mask, 8 column scales) and checks it
    /// fails with `status`, a message containing `message`, and unchanged buffers.
    func expectRejected(
        _ status: msp_status, _ message: String, weights: [Float] = (0..<32).map { Float($0) - 7 },
        scale initialScale: [Float] = [Float](repeating: 1, count: 8),
        _ body: (UnsafeMutablePointer<Float>, UnsafeMutablePointer<UInt8>, UnsafeMutablePointer<Float>) -> msp_status,
        sourceLocation: SourceLocation = #_sourceLocation
    ) {
        var w = weights
        var mask = [UInt8](repeating: 0xAB, count: 32)
        var scale = initialScale
        let (w0, scale0) = (w, scale)
        let got = body(&w, &mask, &scale)
        #expect(got == status, sourceLocation: sourceLocation)
        #expect(lastError().contains(message), "\(lastError())", sourceLocation: sourceLocation)
        #expect(w.map(\.bitPattern) == w0.map(\.bitPattern), sourceLocation: sourceLocation)
        #expect(mask == [UInt8](repeating: 0xAB, count: 32), sourceLocation: sourceLocation)
        #expect(scale.map(\.bitPattern) == scale0.map(\.bitPattern), sourceLocation: sourceLocation)
    }

    @Test func nullPointers() {
        expectRejected(MSP_ERR_INVALID_ARGUMENT, "weights is NULL") { _, k, _ in
            msp_nm_prune(nil, MSP_DTYPE_F32, 4, 8, 2, 4, nil, k)
        }
        expectRejected(MSP_ERR_INVALID_ARGUMENT, "scores is NULL") { _, k, _ in
            msp_nm_mask(nil, MSP_DTYPE_F32, 4, 8, 2, 4, k)
        }
        expectRejected(MSP_ERR_INVALID_ARGUMENT, "keep_mask_out is NULL") { w, _, _ in
            msp_nm_mask(w, MSP_DTYPE_F32, 4, 8, 2, 4, nil)
        }
        expectRejected(MSP_ERR_INVALID_ARGUMENT, "weights is NULL") { _, k, _ in
            msp_topk_prune(nil, MSP_DTYPE_F32, 4, 8, 0.5, MSP_SCOPE_ROW, nil, k)
        }
    }

    @Test func badSizes() {
        let cases: [(Int64, Int64, String)] = [(0, 8, "rows"), (4, 0, "cols"), (-1, 8, "rows"), (4, -8, "cols"),
                                   (Int64(1) << 62, 8, "overflows"), (Int64(1) << 61, 1, "too large")]
        for (rows, cols, text) in cases {
            expectRejected(MSP_ERR_INVALID_ARGUMENT, text) { w, k, _ in
                msp_nm_prune(w, MSP_DTYPE_F32, rows, cols, 1, 2, nil, k)
            }
            expectRejected(MSP_ERR_INVALID_ARGUMENT, text) { w, k, _ in
                msp_topk_prune(w, MSP_DTYPE_F32, rows, cols, 0.5, MSP_SCOPE_LAYER, nil, k)
            }
        }
    }

    @Test func badPatterns() {
        for (n, m, text) in [(4, 4, "n (4) must be less than m (4)"), (0, 4, "n (0) must be > 0"),
                             (-1, 4, "n (-1)"), (2, 1, "m (1)"), (1, 64, "m (64)"), (3, 16, "multiple of m (16)"),
                             (1, 3, "cols (8) must be a multiple of m (3)")] {
            expectRejected(MSP_ERR_INVALID_ARGUMENT, text) { w, k, s in
                msp_nm_prune(w, MSP_DTYPE_F32, 4, 8, Int32(n), Int32(m), s, k)
            }
            expectRejected(MSP_ERR_INVALID_ARGUMENT, text) { w, k, _ in
                msp_nm_mask(w, MSP_DTYPE_F32, 4, 8, Int32(n), Int32(m), k)
            }
        }
    }

    @Test func badDtypeScopeAndSparsity() {
        expectRejected(MSP_ERR_INVALID_ARGUMENT, "dtype (7)") { w, k, _ in
            msp_nm_prune(w, 7, 4, 8, 2, 4, nil, k)
        }
        expectRejected(MSP_ERR_INVALID_ARGUMENT, "scope (2)") { w, k, _ in
            msp_topk_prune(w, MSP_DTYPE_F32, 4, 8, 0.5, 2, nil, k)
        }
        for sparsity in [-0.1, 1.0, Double.nan] {
            expectRejected(MSP_ERR_INVALID_ARGUMENT, "sparsity") { w, k, _ in
                msp_topk_prune(w, MSP_DTYPE_F32, 4, 8, sparsity, MSP_SCOPE_ROW, nil, k)
            }
        }
    }

    @Test func nanInputs() {
        var weights = (0..<32).map { Float($0) }
        weights[19] = .nan
        expectRejected(MSP_ERR_INVALID_ARGUMENT, "weights[2][3] is NaN", weights: weights) { w, k, _ in
            msp_nm_prune(w, MSP_DTYPE_F32, 4, 8, 2, 4, nil, k)
        }
        expectRejected(MSP_ERR_INVALID_ARGUMENT, "scores[2][3] is NaN", weights: weights) { w, k, _ in
            msp_nm_mask(w, MSP_DTYPE_F32, 4, 8, 2, 4, k)
        }
        expectRejected(MSP_ERR_INVALID_ARGUMENT, "weights[2][3] is NaN", weights: weights) { w, k, _ in
            msp_topk_prune(w, MSP_DTYPE_F32, 4, 8, 0.5, MSP_SCOPE_LAYER, nil, k)
        }
        var scale = [Float](repeating: 1, count: 8)
        scale[5] = .nan
        expectRejected(MSP_ERR_INVALID_ARGUMENT, "col_scale[5] (nan)", scale: scale) { w, k, s in
            msp_nm_prune(w, MSP_DTYPE_F32, 4, 8, 2, 4, s, k)
        }
        scale[5] = 1
        scale[1] = -1
        expectRejected(MSP_ERR_INVALID_ARGUMENT, "col_scale[1] (-1.0)", scale: scale) { w, k, s in
            msp_topk_prune(w, MSP_DTYPE_F32, 4, 8, 0.5, MSP_SCOPE_ROW, s, k)
        }
        weights = (0..<32).map { Float($0) }
        weights[10] = .infinity
        scale[1] = 1
        scale[2] = 0
        expectRejected(MSP_ERR_INVALID_ARGUMENT, "score of weights[1][2] is NaN", weights: weights, scale: scale) {
            w, k, s in
            msp_nm_prune(w, MSP_DTYPE_F32, 4, 8, 2, 4, s, k)
        }
    }

    @Test func successClearsTheMessage() {
        var w = (0..<32).map { Float($0) }
        _ = msp_nm_prune(nil, MSP_DTYPE_F32, 4, 8, 2, 4, nil, nil)
        #expect(lastError() != "")
        #expect(msp_nm_prune(&w, MSP_DTYPE_F32, 4, 8, 2, 4, nil, nil) == MSP_OK)
        #expect(lastError() == "")
        #expect(w[0...3] == [0, 0, 2, 3])
    }
}
