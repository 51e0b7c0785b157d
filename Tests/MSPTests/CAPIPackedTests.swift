// Calls the compressed N:M entry points through the declarations of include/msp.h, as a C program does.
import CMSPHeader
import MSPCore
import Testing

/// The calling thread's last error message.
private func lastError() -> String { String(cString: msp_last_error_message()!) }

/// Buffers of a 4 x 16 float32 matrix at 2:8: weights, its packed values and index, 2 tokens and
/// their results, each filled with a marker so that any write shows.
struct PackedBuffers {
    var weights: [Float] = (0..<64).map { Float(($0 * 5) % 13) - 6 }
    var values = [Float](repeating: 7, count: 16)
    var index = [UInt8](repeating: 0xA5, count: 16)
    var x: [Float] = (0..<32).map { Float($0 % 5) - 2 }
    var y = [Float](repeating: -3, count: 8)
    var scale = [Float](repeating: 1, count: 16)
}

@Suite("Compressed N:M entry points: results, and bad input rejected without touching buffers")
struct CAPIPackedTests {
    /// Calls `body` on fresh buffers (packed by `prepare` first) and checks it fails with `status`,
    /// a message containing `message`, and unchanged buffers.
    func expectRejected(
        _ status: msp_status, _ message: String, prepare: (inout PackedBuffers) -> Void = { _ in },
        _ body: (inout PackedBuffers) -> msp_status, sourceLocation: SourceLocation = #_sourceLocation
    ) {
        var b = PackedBuffers()
        prepare(&b)
        let before = b
        #expect(body(&b) == status, sourceLocation: sourceLocation)
        #expect(lastError().contains(message), "\(lastError())", sourceLocation: sourceLocation)
        #expect(b.weights.map(\.bitPattern) == before.weights.map(\.bitPattern), sourceLocation: sourceLocation)
        #expect(b.values.map(\.bitPattern) == before.values.map(\.bitPattern), sourceLocation: sourceLocation)
        #expect(b.index == before.index, sourceLocation: sourceLocation)
        #expect(b.x.map(\.bitPattern) == before.x.map(\.bitPattern), sourceLocation: sourceLocation)
        #expect(b.y.map(\.bitPattern) == before.y.map(\.bitPattern), sourceLocation: sourceLocation)
        #expect(b.scale.map(\.bitPattern) == before.scale.map(\.bitPattern), sourceLocation: sourceLocation)
    }

    /// Packs the weights of `b` at 2:8.
    static func packed(_ b: inout PackedBuffers) {
        #expect(msp_nm_pack(b.weights, MSP_DTYPE_F32, 4, 16, 2, 8, nil, &b.values, &b.index) == MSP_OK)
    }

    @Test func packUnpackAndProductOfASmallCase() {
        var b = PackedBuffers()
        var valuesBytes: Int64 = -1, indexBytes: Int64 = -1
        #expect(msp_nm_packed_size(4, 16, 2, 8, MSP_DTYPE_F32, &valuesBytes, &indexBytes) == MSP_OK)
        #expect(valuesBytes == 4 * 4 * 4 && indexBytes == 4 * 4)
        Self.packed(&b)
        #expect(lastError() == "")
        // Row 0 is -6 -1 4 -4 1 6 -2 3 | -5 0 5 -3 2 -6 -1 4: columns 0 and 5 kept in the first
        // group, 8 and 13 in the second (|w| 5 ties at columns 8 and 10: the lower one is kept).
        #expect(b.values[0..<4] == [-6, 6, -5, -6])
        #expect(b.index[0..<4] == [0b0010_0001, 0b0010_0001, 0, 0])
        var dense = [Float](repeating: 9, count: 64)
        #expect(msp_nm_unpack(b.values, b.index, MSP_DTYPE_F32, 4, 16, 2, 8, &dense) == MSP_OK)
        #expect(dense[0..<16] == [-6, 0, 0, 0, 0, 6, 0, 0, -5, 0, 0, 0, 0, -6, 0, 0])
        #expect(
            msp_nm_linear(b.values, b.index, MSP_DTYPE_F32, 4, 16, 2, 8, b.x, MSP_DTYPE_F32, 2, &b.y, MSP_DTYPE_F32)
                == MSP_OK)
        // Small integers: the float32 products and sums are exact.
        for t in 0..<2 {
            for r in 0..<4 {
                let exact = (0..<16).reduce(Float(0)) { $0 + dense[r * 16 + $1] * b.x[t * 16 + $1] }
                #expect(b.y[t * 4 + r] == exact)
            }
        }
        #expect(["avx512", "avx2", "portable"].contains(String(cString: msp_nm_linear_isa()!)))
        #expect(String(cString: msp_nm_linear_isa()!) == KernelISA.selected.description)
    }

    @Test func nullPointers() {
        expectRejected(MSP_ERR_INVALID_ARGUMENT, "values_bytes_out is NULL") { _ in
            var i: Int64 = 0
            return msp_nm_packed_size(4, 16, 2, 8, MSP_DTYPE_F32, nil, &i)
        }
        expectRejected(MSP_ERR_INVALID_ARGUMENT, "weights is NULL") { b in
            msp_nm_pack(nil, MSP_DTYPE_F32, 4, 16, 2, 8, nil, &b.values, &b.index)
        }
        expectRejected(MSP_ERR_INVALID_ARGUMENT, "values_out is NULL") { b in
            msp_nm_pack(b.weights, MSP_DTYPE_F32, 4, 16, 2, 8, nil, nil, &b.index)
        }
        expectRejected(MSP_ERR_INVALID_ARGUMENT, "index_out is NULL") { b in
            msp_nm_pack(b.weights, MSP_DTYPE_F32, 4, 16, 2, 8, nil, &b.values, nil)
        }
        expectRejected(MSP_ERR_INVALID_ARGUMENT, "index is NULL", prepare: Self.packed) { b in
            msp_nm_unpack(b.values, nil, MSP_DTYPE_F32, 4, 16, 2, 8, &b.weights)
        }
        expectRejected(MSP_ERR_INVALID_ARGUMENT, "weights_out is NULL", prepare: Self.packed) { b in
            msp_nm_unpack(b.values, b.index, MSP_DTYPE_F32, 4, 16, 2, 8, nil)
        }
        expectRejected(MSP_ERR_INVALID_ARGUMENT, "x is NULL", prepare: Self.packed) { b in
            msp_nm_linear(b.values, b.index, MSP_DTYPE_F32, 4, 16, 2, 8, nil, MSP_DTYPE_F32, 2, &b.y, MSP_DTYPE_F32)
        }
        expectRejected(MSP_ERR_INVALID_ARGUMENT, "y is NULL", prepare: Self.packed) { b in
            msp_nm_linear(b.values, b.index, MSP_DTYPE_F32, 4, 16, 2, 8, b.x, MSP_DTYPE_F32, 2, nil, MSP_DTYPE_F32)
        }
        expectRejected(MSP_ERR_INVALID_ARGUMENT, "values is NULL", prepare: Self.packed) { b in
            msp_nm_linear(nil, b.index, MSP_DTYPE_F32, 4, 16, 2, 8, b.x, MSP_DTYPE_F32, 2, &b.y, MSP_DTYPE_F32)
        }
    }

    @Test func badSizesPatternsDtypesAndBatches() {
        let sizes: [(Int64, Int64, String)] = [
            (0, 16, "rows (0)"), (4, -16, "cols (-16)"), (Int64(1) << 62, 16, "overflows"),
            (4, 12, "cols (12) must be a multiple of m (8)"),
        ]
        for (rows, cols, text) in sizes {
            expectRejected(MSP_ERR_INVALID_ARGUMENT, text) { _ in
                var v: Int64 = 0, i: Int64 = 0
                return msp_nm_packed_size(rows, cols, 2, 8, MSP_DTYPE_F32, &v, &i)
            }
            expectRejected(MSP_ERR_INVALID_ARGUMENT, text) { b in
                msp_nm_pack(b.weights, MSP_DTYPE_F32, rows, cols, 2, 8, nil, &b.values, &b.index)
            }
            expectRejected(MSP_ERR_INVALID_ARGUMENT, text, prepare: Self.packed) { b in
                msp_nm_linear(b.values, b.index, MSP_DTYPE_F32, rows, cols, 2, 8, b.x, MSP_DTYPE_F32, 2, &b.y, MSP_DTYPE_F32)
            }
        }
        for (n, m, text) in [(8, 8, "n (8) must be less than m (8)"), (0, 8, "n (0)"), (1, 64, "m (64)")] {
            expectRejected(MSP_ERR_INVALID_ARGUMENT, text) { b in
                msp_nm_pack(b.weights, MSP_DTYPE_F32, 4, 16, Int32(n), Int32(m), nil, &b.values, &b.index)
            }
            expectRejected(MSP_ERR_INVALID_ARGUMENT, text, prepare: Self.packed) { b in
                msp_nm_unpack(b.values, b.index, MSP_DTYPE_F32, 4, 16, Int32(n), Int32(m), &b.weights)
            }
        }
        expectRejected(MSP_ERR_INVALID_ARGUMENT, "dtype (5)") { b in
            msp_nm_pack(b.weights, 5, 4, 16, 2, 8, nil, &b.values, &b.index)
        }
        expectRejected(MSP_ERR_INVALID_ARGUMENT, "x_dtype (3)", prepare: Self.packed) { b in
            msp_nm_linear(b.values, b.index, MSP_DTYPE_F32, 4, 16, 2, 8, b.x, 3, 2, &b.y, MSP_DTYPE_F32)
        }
        expectRejected(MSP_ERR_INVALID_ARGUMENT, "y_dtype (-1)", prepare: Self.packed) { b in
            msp_nm_linear(b.values, b.index, MSP_DTYPE_F32, 4, 16, 2, 8, b.x, MSP_DTYPE_F32, 2, &b.y, -1)
        }
        let batches: [(Int64, String)] = [
            (0, "batch (0) must be > 0"), (-2, "batch (-2)"), (1 << 60, "batch * cols (1152921504606846976 * 16) overflows"),
            (1 << 58, "batch * cols (4611686018427387904) is too large"),
        ]
        for (batch, text) in batches {
            expectRejected(MSP_ERR_INVALID_ARGUMENT, text, prepare: Self.packed) { b in
                msp_nm_linear(b.values, b.index, MSP_DTYPE_F32, 4, 16, 2, 8, b.x, MSP_DTYPE_F32, batch, &b.y, MSP_DTYPE_F32)
            }
        }
    }

    @Test func badDataLeavesTheOutputsUnchanged() {
        expectRejected(MSP_ERR_INVALID_ARGUMENT, "weights[2][3] is NaN", prepare: { $0.weights[35] = .nan }) { b in
            msp_nm_pack(b.weights, MSP_DTYPE_F32, 4, 16, 2, 8, nil, &b.values, &b.index)
        }
        expectRejected(MSP_ERR_INVALID_ARGUMENT, "col_scale[4] (-1.0)", prepare: { $0.scale[4] = -1 }) { b in
            msp_nm_pack(b.weights, MSP_DTYPE_F32, 4, 16, 2, 8, b.scale, &b.values, &b.index)
        }
        let corrupt: (inout PackedBuffers) -> Void = { b in
            Self.packed(&b)
            b.index[9] = 0b0000_0111  // row 2, group 1 (columns 8..<16): 3 kept
        }
        let message = "index row 2: group 1 (columns 8..<16) marks 3 kept columns, not n = 2"
        expectRejected(MSP_ERR_INVALID_ARGUMENT, message, prepare: corrupt) { b in
            msp_nm_unpack(b.values, b.index, MSP_DTYPE_F32, 4, 16, 2, 8, &b.weights)
        }
        expectRejected(MSP_ERR_INVALID_ARGUMENT, message, prepare: corrupt) { b in
            msp_nm_linear(b.values, b.index, MSP_DTYPE_F32, 4, 16, 2, 8, b.x, MSP_DTYPE_F32, 2, &b.y, MSP_DTYPE_F32)
        }
        expectRejected(MSP_ERR_INVALID_ARGUMENT, "index row 0 marks column 16, past cols (16)", prepare: { b in
            Self.packed(&b)
            b.index[2] = 1
        }) { b in
            msp_nm_linear(b.values, b.index, MSP_DTYPE_F32, 4, 16, 2, 8, b.x, MSP_DTYPE_F32, 2, &b.y, MSP_DTYPE_F32)
        }
    }
}
