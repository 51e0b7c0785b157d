// Calls the Fisher entry points through the declarations of include/msp.h, as a C program does:
// results against exact references, thread-count independence, and bad input that leaves every
// buffer and the accumulator unchanged.

import CMSPHeader
import Dispatch
import MSPCore
import Testing

/// The calling thread's last error message.
private func lastError() -> String { String(cString: msp_last_error_message()!) }

/// `values` stored as `dtype` (each value must be exactly representable in it).
private func packed(_ values: [Float], _ dtype: msp_dtype) -> [UInt8] {
    switch dtype {
    case MSP_DTYPE_F16: values.flatMap { v in withUnsafeBytes(of: Float16(v).bitPattern) { Array($0) } }
    case MSP_DTYPE_BF16: values.flatMap { v in withUnsafeBytes(of: UInt16(v.bitPattern >> 16)) { Array($0) } }
    default: values.flatMap { v in withUnsafeBytes(of: v.bitPattern) { Array($0) } }
    }
}

/// Carries a handle and raw buffers into `concurrentPerform`, whose threads use them without races.
private struct UncheckedSendable<T>: @unchecked Sendable {
    let value: T
}

/// The three dtypes.
private let dtypes: [msp_dtype] = [MSP_DTYPE_F32, MSP_DTYPE_F16, MSP_DTYPE_BF16]

/// k/4 for |k| <= 255: exact in f32, f16 and bf16, with exactly representable sums of squares.
private func quarters(_ count: Int, seed: UInt64) -> [Float] {
    var rng = SplitMix64(seed: seed)
    return (0..<count).map { _ in Float(Int(rng.next() % 511) - 255) / 4 }
}

/// Σ v² in double; exact for `quarters` (multiples of 1/16 far below 2^53).
private func exactSumOfSquares(_ values: [Float]) -> Double {
    values.reduce(0) { $0 + Double($1) * Double($1) }
}

@Suite("Fisher entry points: exact results, thread independence, bad input rejected unchanged")
struct CAPIFisherTests {
    @Test(arguments: dtypes)
    func sumSquaresIsExactForRepresentableSums(dtype: msp_dtype) {
        for count in [1, 9, 4096, 100_003] {
            let values = quarters(count, seed: UInt64(count))
            let bytes = packed(values, dtype)
            var out = -1.0
            #expect(msp_sum_squares(bytes, dtype, Int64(count), &out) == MSP_OK)
            #expect(out == exactSumOfSquares(values), "count \(count)")
            #expect(lastError() == "")
        }
    }

    @Test(arguments: dtypes)
    func sumSquaresIsBitIdenticalForOneTwoAndThreeThreads(dtype: msp_dtype) {
        var rng = SplitMix64(seed: 3)
        let count = 3 * 128 * 4096 + 1001
        // Random bit patterns with exponents over a wide range, finite in every dtype.
        let bytes: [UInt8] =
            dtype == MSP_DTYPE_F32
            ? (0..<count).flatMap { _ -> [UInt8] in
                let r = rng.next()
                let bits = UInt32(r & 0x807F_FFFF) | UInt32(97 + (r >> 32) % 60) << 23
                return withUnsafeBytes(of: bits) { Array($0) }
            }
            : (0..<count).flatMap { _ -> [UInt8] in
                let r = rng.next()
                let bits = dtype == MSP_DTYPE_F16
                    ? UInt16(r & 0x83FF) | UInt16((r >> 32) % 31) << 10
                    : UInt16(r & 0x807F) | UInt16(97 + (r >> 32) % 60) << 7
                return withUnsafeBytes(of: bits) { Array($0) }
            }
        var sums: [UInt64] = []
        for threads: Int32 in [1, 2, 3] {
            #expect(msp_set_num_threads(threads) == MSP_OK)
            var out = 0.0
            #expect(msp_sum_squares(bytes, dtype, Int64(count), &out) == MSP_OK)
            sums.append(out.bitPattern)
        }
        #expect(msp_set_num_threads(0) == MSP_OK)
        #expect(Set(sums).count == 1)
    }

    @Test func sumSquaresRejectsBadInputWithoutWritingOut() {
        let data = packed([1, 2, 3, .infinity, 5, .nan], MSP_DTYPE_F32)
        let cases: [(msp_dtype, Int64, Bool, Bool, String)] = [
            (MSP_DTYPE_F32, 3, false, true, "data is NULL"),
            (MSP_DTYPE_F32, 3, true, false, "out is NULL"),
            (MSP_DTYPE_F32, 0, true, true, "count (0) must be > 0"),
            (MSP_DTYPE_F32, -1, true, true, "count (-1) must be > 0"),
            (MSP_DTYPE_F32, Int64.max, true, true, "count (9223372036854775807) is too large"),
            (3, 3, true, true, "dtype (3) is not MSP_DTYPE_F32"),
            (-1, 3, true, true, "dtype (-1)"),
            (MSP_DTYPE_F32, 6, true, true, "data[3] (inf) is not finite"),
        ]
        for (dtype, count, passData, passOut, message) in cases {
            var out = -7.0
            let status = data.withUnsafeBytes { d in
                withUnsafeMutablePointer(to: &out) { o in
                    msp_sum_squares(passData ? d.baseAddress : nil, dtype, count, passOut ? o : nil)
                }
            }
            #expect(status == MSP_ERR_INVALID_ARGUMENT, "\(message)")
            #expect(lastError().contains(message), "\(lastError())")
            #expect(out == -7)
        }
        var out = -7.0
        let nanFirst = packed([1, .nan], MSP_DTYPE_F16)
        #expect(msp_sum_squares(nanFirst, MSP_DTYPE_F16, 2, &out) == MSP_ERR_INVALID_ARGUMENT)
        #expect(lastError() == "data[1] (nan) is not finite")
        #expect(out == -7)
    }

    /// Creates an accumulator over `sizes`, runs `body`, frees it.
    func withAccumulator(_ sizes: [Int64], _ body: (OpaquePointer) throws -> Void) rethrows {
        var handle: OpaquePointer? = nil
        #expect(msp_fisher_create(sizes, Int64(sizes.count), &handle) == MSP_OK)
        guard let handle else {
            Issue.record("msp_fisher_create returned no handle")
            return
        }
        defer { msp_fisher_free(handle) }
        try body(handle)
    }

    /// The traces (or nil with the status) and the sample count of an accumulator of `layers`.
    func state(_ fisher: OpaquePointer, layers: Int, perParameter: Int32 = 0) -> ([Double]?, Int64) {
        var traces = [Double](repeating: -1, count: layers)
        var samples: Int64 = -1
        #expect(msp_fisher_num_samples(fisher, &samples) == MSP_OK)
        return (msp_fisher_traces(fisher, perParameter, &traces) == MSP_OK ? traces : nil, samples)
    }

    @Test(arguments: dtypes)
    func accumulatorLifecycleGivesExactTraces(dtype: msp_dtype) {
        withAccumulator([4, 6, 5000]) { fisher in
            var expected = [Double](repeating: 0, count: 3)
            var traces = [Double](repeating: -1, count: 3)
            #expect(msp_fisher_traces(fisher, 0, &traces) == MSP_ERR_INVALID_STATE)
            #expect(traces == [-1, -1, -1])
            for s in 0..<3 {
                for layer in [2, 0, 1] {
                    let size = [4, 6, 5000][layer]
                    let values = quarters(size, seed: UInt64(10 * s + layer))
                    let bytes = packed(values, dtype)
                    let width = dtype == MSP_DTYPE_F32 ? 4 : 2
                    let split = size / 3  // two chunks, [0, split) and [split, size); split >= 1
                    let scale = layer == 1 ? 0.5 : 1
                    bytes.withUnsafeBytes { b in
                        let head = msp_fisher_add(fisher, Int64(layer), b.baseAddress, dtype, Int64(split), scale)
                        let tail = msp_fisher_add(
                            fisher, Int64(layer), b.baseAddress! + split * width, dtype, Int64(size - split), scale)
                        #expect(head == MSP_OK && tail == MSP_OK)
                    }
                    expected[layer] += scale * exactSumOfSquares(values)
                }
                #expect(msp_fisher_end_sample(fisher) == MSP_OK)
            }
            let (plain, samples) = state(fisher, layers: 3)
            #expect(samples == 3)
            #expect(plain == expected.map { $0 / 3 })
            let (perParameter, _) = state(fisher, layers: 3, perParameter: 7)  // any nonzero flag
            #expect(perParameter == zip(expected, [4.0, 6, 5000]).map { $0 / 3 / $1 })
            #expect(msp_fisher_reset(fisher) == MSP_OK)
            let (cleared, zero) = state(fisher, layers: 3)
            #expect(cleared == nil && zero == 0)
            #expect(lastError().contains("no calibration sample"))
        }
    }

    @Test func createRejectsBadInputWithoutWritingTheHandle() {
        let sentinel = OpaquePointer(bitPattern: 0x1234)
        let cases: [([Int64]?, Int64, Bool, String)] = [
            (nil, 2, true, "sizes is NULL"),
            ([4, 5], 2, false, "out is NULL"),
            ([4, 5], 0, true, "num_layers (0) must be > 0"),
            ([4, 5], -2, true, "num_layers (-2) must be > 0"),
            ([4, 5], Int64.max, true, "num_layers (9223372036854775807) is too large"),
            ([4, 0], 2, true, "sizes[1] (0) must be > 0"),
            ([-4, 5], 2, true, "sizes[0] (-4) must be > 0"),
        ]
        for (sizes, count, passOut, message) in cases {
            var handle = sentinel
            let status = withUnsafeMutablePointer(to: &handle) { out in
                if let sizes {
                    return sizes.withUnsafeBufferPointer {
                        msp_fisher_create($0.baseAddress, count, passOut ? out : nil)
                    }
                }
                return msp_fisher_create(nil, count, passOut ? out : nil)
            }
            #expect(status == MSP_ERR_INVALID_ARGUMENT, "\(message)")
            #expect(lastError().contains(message), "\(lastError())")
            #expect(handle == sentinel)
        }
        msp_fisher_free(nil)  // a no-op
    }

    @Test func addRejectsBadInputAndLeavesTheAccumulatorUnchanged() {
        withAccumulator([3, 5]) { fisher in
            // One closed sample, and an open one where layer 1 already holds 2 of its 5 elements.
            let ones = packed([1, 1, 1, 1, 1, 1], MSP_DTYPE_F32)
            #expect(msp_fisher_add(fisher, 0, ones, MSP_DTYPE_F32, 3, 2) == MSP_OK)
            #expect(msp_fisher_end_sample(fisher) == MSP_OK)
            #expect(msp_fisher_add(fisher, 1, ones, MSP_DTYPE_F32, 2, 1) == MSP_OK)
            let before = state(fisher, layers: 2)
            let bad = packed([1, 2, .nan, 4], MSP_DTYPE_F32)
            let cases: [(OpaquePointer?, Int64, [UInt8]?, msp_dtype, Int64, Double, String)] = [
                (nil, 0, ones, MSP_DTYPE_F32, 1, 1, "fisher is NULL"),
                (fisher, -1, ones, MSP_DTYPE_F32, 1, 1, "layer (-1) must be in [0, 2)"),
                (fisher, 2, ones, MSP_DTYPE_F32, 1, 1, "layer (2) must be in [0, 2)"),
                (fisher, Int64.min, ones, MSP_DTYPE_F32, 1, 1, "layer (-9223372036854775808)"),
                (fisher, 1, nil, MSP_DTYPE_F32, 1, 1, "grad is NULL"),
                (fisher, 1, ones, 9, 1, 1, "dtype (9)"),
                (fisher, 1, ones, MSP_DTYPE_F32, 0, 1, "count (0) must be > 0"),
                (fisher, 1, ones, MSP_DTYPE_F32, -3, 1, "count (-3) must be > 0"),
                (fisher, 1, ones, MSP_DTYPE_F32, Int64.max, 1, "count (9223372036854775807) is too large"),
                (fisher, 1, ones, MSP_DTYPE_F32, 1, .nan, "scale (nan) must be finite and >= 0"),
                (fisher, 1, ones, MSP_DTYPE_F32, 1, -0.5, "scale (-0.5)"),
                (fisher, 1, ones, MSP_DTYPE_F32, 1, .infinity, "scale (inf)"),
                (fisher, 1, ones, MSP_DTYPE_F32, 4, 1, "layer 1: count (4) exceeds the 3 of its 5 elements"),
                (fisher, 0, ones, MSP_DTYPE_F32, 4, 1, "layer 0: count (4) exceeds the 3 of its 3 elements"),
                (fisher, 1, bad, MSP_DTYPE_F32, 3, 1, "layer 1: grad[2] (nan) is not finite"),
            ]
            for (handle, layer, grad, dtype, count, scale, message) in cases {
                let status =
                    if let grad {
                        grad.withUnsafeBytes { msp_fisher_add(handle, layer, $0.baseAddress, dtype, count, scale) }
                    } else {
                        msp_fisher_add(handle, layer, nil, dtype, count, scale)
                    }
                #expect(status == MSP_ERR_INVALID_ARGUMENT, "\(message)")
                #expect(lastError().contains(message), "\(lastError())")
                #expect(state(fisher, layers: 2) == before, "\(message)")
            }
            // The open sample is intact: layer 1 takes exactly its 3 remaining elements.
            #expect(msp_fisher_add(fisher, 1, ones, MSP_DTYPE_F32, 3, 1) == MSP_OK)
            #expect(msp_fisher_add(fisher, 1, ones, MSP_DTYPE_F32, 1, 1) == MSP_ERR_INVALID_ARGUMENT)
            #expect(msp_fisher_end_sample(fisher) == MSP_OK)
            #expect(state(fisher, layers: 2) == ([3, 2.5], 2))
        }
    }

    @Test func nullHandlesAndOutputsAreRejected() {
        var samples: Int64 = -1
        var traces = [Double](repeating: -1, count: 1)
        #expect(msp_fisher_end_sample(nil) == MSP_ERR_INVALID_ARGUMENT)
        #expect(lastError() == "fisher is NULL")
        #expect(msp_fisher_num_samples(nil, &samples) == MSP_ERR_INVALID_ARGUMENT)
        #expect(msp_fisher_traces(nil, 0, &traces) == MSP_ERR_INVALID_ARGUMENT)
        #expect(msp_fisher_reset(nil) == MSP_ERR_INVALID_ARGUMENT)
        #expect(samples == -1 && traces == [-1])
        withAccumulator([2]) { fisher in
            #expect(msp_fisher_num_samples(fisher, nil) == MSP_ERR_INVALID_ARGUMENT)
            #expect(lastError() == "out is NULL")
            #expect(msp_fisher_end_sample(fisher) == MSP_OK)
            #expect(msp_fisher_traces(fisher, 0, nil) == MSP_ERR_INVALID_ARGUMENT)
            #expect(lastError() == "out is NULL")
        }
    }

    @Test func distinctLayersFromManyThreadsMatchOneThread() {
        let layers = 12, size = 30_000
        let grads = (0..<layers).map { packed(quarters(size, seed: UInt64($0)), MSP_DTYPE_BF16) }
        withAccumulator([Int64](repeating: Int64(size), count: layers)) { serial in
            withAccumulator([Int64](repeating: Int64(size), count: layers)) { concurrent in
                for l in 0..<layers {
                    #expect(msp_fisher_add(serial, Int64(l), grads[l], MSP_DTYPE_BF16, Int64(size), 1) == MSP_OK)
                }
                let statuses = UnsafeMutableBufferPointer<msp_status>.allocate(capacity: layers)
                defer { statuses.deallocate() }
                // Each thread writes its own status slot and uses the handle as the header allows.
                let shared = UncheckedSendable(value: (concurrent, statuses))
                DispatchQueue.concurrentPerform(iterations: layers) { l in
                    let (handle, statuses) = shared.value
                    statuses[l] = grads[l].withUnsafeBytes {
                        msp_fisher_add(handle, Int64(l), $0.baseAddress, MSP_DTYPE_BF16, Int64(size), 1)
                    }
                }
                #expect(Array(statuses) == [msp_status](repeating: MSP_OK, count: layers))
                #expect(msp_fisher_end_sample(serial) == MSP_OK && msp_fisher_end_sample(concurrent) == MSP_OK)
                let (a, _) = state(serial, layers: layers)
                let (b, _) = state(concurrent, layers: layers)
                #expect(a != nil && a == b)
            }
        }
    }

    @Test(arguments: dtypes)
    func addDiagonalAccumulatesScaledSquares(dtype: msp_dtype) {
        let grad = quarters(1000, seed: 1)
        var diag = (0..<1000).map { Float($0 % 7) }
        let expected = zip(diag, grad).map { Float(Double($0) + 0.25 * Double($1) * Double($1)) }
        #expect(msp_fisher_add_diagonal(packed(grad, dtype), dtype, 1000, &diag, 0.25) == MSP_OK)
        #expect(diag == expected)
    }

    @Test func addDiagonalRejectsBadInputWithoutWritingDiag() {
        let grad = packed([1, 2, .infinity, 4], MSP_DTYPE_F32)
        let huge = packed([1, 3e30, 1, 1], MSP_DTYPE_F32)
        let cases: [([UInt8]?, Bool, msp_dtype, Int64, Double, String)] = [
            (nil, true, MSP_DTYPE_F32, 2, 1, "grad is NULL"),
            (grad, false, MSP_DTYPE_F32, 2, 1, "diag_inout is NULL"),
            (grad, true, 5, 2, 1, "dtype (5)"),
            (grad, true, MSP_DTYPE_F32, 0, 1, "count (0) must be > 0"),
            (grad, true, MSP_DTYPE_F32, Int64.max, 1, "too large"),
            (grad, true, MSP_DTYPE_F32, 2, -1, "scale (-1.0) must be finite and >= 0"),
            (grad, true, MSP_DTYPE_F32, 2, .nan, "scale (nan)"),
            (grad, true, MSP_DTYPE_F32, 4, 1, "grad[2] (inf) is not finite"),
            (huge, true, MSP_DTYPE_F32, 4, 1, "diag_inout[1] (1.0) + scale * grad[1]^2"),
        ]
        for (g, passDiag, dtype, count, scale, message) in cases {
            var diag: [Float] = [1, 1, 1, 1]
            let status = diag.withUnsafeMutableBufferPointer { d in
                if let g {
                    return g.withUnsafeBytes {
                        msp_fisher_add_diagonal($0.baseAddress, dtype, count, passDiag ? d.baseAddress : nil, scale)
                    }
                }
                return msp_fisher_add_diagonal(nil, dtype, count, d.baseAddress, scale)
            }
            #expect(status == MSP_ERR_INVALID_ARGUMENT, "\(message)")
            #expect(lastError().contains(message), "\(lastError())")
            #expect(diag == [1, 1, 1, 1])
        }
    }
}
