// Calls the library entry points (version, limits, status strings, error messages, threads) through
// the declarations of include/msp.h, as a C program does.

import CMSPHeader
import Dispatch
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// The calling thread's last error message.
private func lastError() -> String { String(cString: msp_last_error_message()!) }

/// Holds what a worker thread saw, for the test thread to read after waiting on it.
private final class Observed: @unchecked Sendable {
    var before = "", after = ""
}

/// `msp_limits` with every byte set to `byte`, then `struct_size` set to `size`.
private func limitsFilled(with byte: UInt8, size: UInt32) -> msp_limits {
    var limits = msp_limits()
    withUnsafeMutableBytes(of: &limits) { _ = $0.initializeMemory(as: UInt8.self, repeating: byte) }
    limits.struct_size = size
    return limits
}

/// The bytes of a value.
private func bytes<T>(of value: T) -> [UInt8] { withUnsafeBytes(of: value) { Array($0) } }

@Suite("Library entry points: version, limits, status strings, error messages, threads")
struct CAPILibraryTests {
    @Test func versionIsTheHeadersMacros() {
        let text = String(cString: msp_version_string()!)
        #expect(text == "\(MSP_VERSION_MAJOR).\(MSP_VERSION_MINOR).\(MSP_VERSION_PATCH)")
        // (MSP_VERSION_NUMBER and MSP_VERSION_STRING are preprocessor expressions Swift does not
        // import: examples/c/prune_example.c and python/tests/test_library.py check them.)
        // Static storage: the same pointer every call.
        #expect(msp_version_string() == msp_version_string())
        #expect(msp_abi_version() == MSP_ABI_VERSION)
        #expect(msp_abi_version() == 1)
    }

    @Test func statusStringsAreTheDocumentedStaticTexts() {
        let texts: [(msp_status, String)] = [
            (MSP_OK, "ok"), (MSP_ERR_INVALID_ARGUMENT, "invalid argument"), (MSP_ERR_OUT_OF_MEMORY, "out of memory"),
            (MSP_ERR_INFEASIBLE, "infeasible"), (MSP_ERR_CANCELLED, "cancelled"), (MSP_ERR_INVALID_STATE, "invalid state"),
            (MSP_ERR_INTERNAL, "internal error"), (-1, "unknown status"), (7, "unknown status"),
            (Int32.min, "unknown status"), (Int32.max, "unknown status"),
        ]
        for (status, text) in texts {
            #expect(String(cString: msp_status_string(status)!) == text, "status \(status)")
            #expect(msp_status_string(status) == msp_status_string(status))
        }
        // The pinned values of the header.
        #expect([MSP_OK, MSP_ERR_INVALID_ARGUMENT, MSP_ERR_OUT_OF_MEMORY, MSP_ERR_INFEASIBLE, MSP_ERR_CANCELLED,
                 MSP_ERR_INVALID_STATE, MSP_ERR_INTERNAL] == [0, 1, 2, 3, 4, 5, 6])
    }

    @Test func lastErrorIsPerThreadAndClearedBySuccess() {
        #expect(msp_set_num_threads(-1) == MSP_ERR_INVALID_ARGUMENT)
        #expect(lastError() == "num_threads (-1) must be >= 0")
        // Another thread starts with its own empty message, and its error does not reach this one.
        let seen = Observed()
        let done = DispatchSemaphore(value: 0)
        DispatchQueue(label: "msp.test.error").async {
            seen.before = String(cString: msp_last_error_message()!)
            _ = msp_set_num_threads(-7)
            seen.after = String(cString: msp_last_error_message()!)
            done.signal()
        }
        done.wait()
        #expect(seen.before == "")
        #expect(seen.after == "num_threads (-7) must be >= 0")
        #expect(lastError() == "num_threads (-1) must be >= 0")
        // A success on this thread clears it.
        var limits = msp_limits()
        limits.struct_size = UInt32(MemoryLayout<msp_limits>.size)
        #expect(msp_get_limits(&limits) == MSP_OK)
        #expect(lastError() == "")
    }

    /// Other suites set the process-wide thread count concurrently (results never depend on it), so
    /// a setting is read back right after it is made, a few times until no other test interleaved.
    @Test func threadCountIsSetAndReadBack() {
        let cores = max(1, Int32(sysconf(Int32(_SC_NPROCESSORS_ONLN))))
        for (set, expected) in [(Int32(3), Int32(3)), (1, 1), (0, cores)] {
            let readBack = (0..<1000).contains { _ in msp_set_num_threads(set) == MSP_OK && msp_get_num_threads() == expected }
            #expect(readBack, "set \(set), expected \(expected)")
        }
        for bad in [Int32(-1), Int32.min] {
            #expect(msp_set_num_threads(bad) == MSP_ERR_INVALID_ARGUMENT)
            #expect(lastError() == "num_threads (\(bad)) must be >= 0")
        }
        #expect(msp_get_num_threads() >= 1)
    }

    @Test func limitsAreTheHeadersMacros() {
        var limits = limitsFilled(with: 0xAB, size: UInt32(MemoryLayout<msp_limits>.size))
        #expect(msp_get_limits(&limits) == MSP_OK)
        #expect(limits.struct_size == UInt32(MemoryLayout<msp_limits>.size))
        #expect(limits.max_m == Int64(MSP_MAX_M))
        #expect(limits.max_levels == Int64(MSP_MAX_LEVELS))
        #expect(limits.max_layers == Int64(MSP_MAX_LAYERS))
        #expect(limits.max_offspring == Int64(MSP_MAX_OFFSPRING))
        #expect(limits.max_proxies == Int64(MSP_MAX_PROXIES))
        #expect(limits.max_survivors == Int64(MSP_MAX_SURVIVORS))
        #expect(limits.max_fidelity_levels == Int64(MSP_MAX_FIDELITY_LEVELS))
        #expect(limits.max_topk_cols == Int64(MSP_MAX_TOPK_COLS))
        #expect(limits.solve_max_cells == Int64(MSP_SOLVE_MAX_CELLS))
        #expect(limits.solve_max_steps == Int64(MSP_SOLVE_MAX_STEPS))
        #expect(limits.max_tolerance == MSP_MAX_TOLERANCE)
        #expect(limits.level_sparsity_tolerance == MSP_LEVEL_SPARSITY_TOLERANCE)
        // The values the header documents.
        #expect([limits.max_m, limits.max_levels, limits.max_layers, limits.max_fidelity_levels] == [32, 256, (1 << 31) - 1, 16])
        #expect([limits.max_offspring, limits.max_survivors, limits.max_topk_cols] == [1 << 20, 1 << 20, (1 << 32) - 1])
        #expect([limits.solve_max_cells, limits.solve_max_steps] == [1 << 21, 1 << 27])
    }

    @Test func olderSmallerLimitsGetTheirPrefix() {
        // A struct that ends after max_m (as a header declaring only that field would have it).
        let size = MemoryLayout<msp_limits>.offset(of: \.max_levels)!
        var limits = limitsFilled(with: 0xAB, size: UInt32(size))
        let before = bytes(of: limits)
        #expect(msp_get_limits(&limits) == MSP_OK)
        #expect(limits.max_m == Int64(MSP_MAX_M))
        #expect(bytes(of: limits)[size...] == before[size...])
        // Only struct_size itself: nothing else is written.
        limits = limitsFilled(with: 0xCD, size: 4)
        let four = bytes(of: limits)
        #expect(msp_get_limits(&limits) == MSP_OK)
        #expect(bytes(of: limits) == four)
    }

    @Test func badLimitsRequestsLeaveTheStructUntouched() {
        #expect(msp_get_limits(nil) == MSP_ERR_INVALID_ARGUMENT)
        #expect(lastError() == "out is NULL")
        let full = MemoryLayout<msp_limits>.size
        for size in [0, 3, full + 1, Int(UInt32.max)] {
            var limits = limitsFilled(with: 0xAB, size: UInt32(size))
            let before = bytes(of: limits)
            #expect(msp_get_limits(&limits) == MSP_ERR_INVALID_ARGUMENT)
            #expect(lastError().contains("out->struct_size (\(size)) must be in [4, \(full)]"), "\(lastError())")
            #expect(bytes(of: limits) == before)
        }
    }
}
