// CAPI+Library: version, limits, status strings, error messages and thread settings.

import CMSPHeader
import CMSPSupport
import MSPCore

/// The library version, `MSP_VERSION_STRING` ("MAJOR.MINOR.PATCH").
@_cdecl("msp_version_string")
public func msp_version_string() -> UnsafePointer<CChar>? {
    mspsupport_version_string()
}

/// The ABI version; bindings compare it with `MSP_ABI_VERSION`.
@_cdecl("msp_abi_version")
public func msp_abi_version() -> Int32 {
    MSP_ABI_VERSION
}

/// The limits this library enforces, the header's `MSP_*` limit macros; see `include/msp.h`.
@_cdecl("msp_get_limits")
public func msp_get_limits(_ out: UnsafeMutablePointer<msp_limits>?) -> msp_status {
    boundary {
        let out = try required(out, "out")
        let size = Int(UnsafeRawPointer(out).load(as: UInt32.self))
        let (smallest, largest) = (MemoryLayout<UInt32>.size, MemoryLayout<msp_limits>.size)
        guard size >= smallest, size <= largest else {
            throw MSPError.invalidArgument(
                "out->struct_size (\(size)) must be in [\(smallest), \(largest)]: set it to sizeof(msp_limits)")
        }
        let limits = msp_limits(
            struct_size: UInt32(size), max_m: Int64(MSP_MAX_M), max_levels: Int64(MSP_MAX_LEVELS),
            max_layers: Int64(MSP_MAX_LAYERS), max_offspring: Int64(MSP_MAX_OFFSPRING),
            max_survivors: Int64(MSP_MAX_SURVIVORS), max_fidelity_levels: Int64(MSP_MAX_FIDELITY_LEVELS),
            max_topk_cols: Int64(MSP_MAX_TOPK_COLS), solve_max_cells: Int64(MSP_SOLVE_MAX_CELLS),
            solve_max_steps: Int64(MSP_SOLVE_MAX_STEPS), max_tolerance: MSP_MAX_TOLERANCE,
            level_sparsity_tolerance: MSP_LEVEL_SPARSITY_TOLERANCE, max_proxies: Int64(MSP_MAX_PROXIES))
        // The fields an older header declares: the first struct_size bytes.
        withUnsafeBytes(of: limits) { bytes in
            UnsafeMutableRawBufferPointer(start: out, count: size).copyMemory(
                from: UnsafeRawBufferPointer(rebasing: bytes[..<size]))
        }
    }
}

/// Static text for a status code.
@_cdecl("msp_status_string")
public func msp_status_string(_ status: msp_status) -> UnsafePointer<CChar>? {
    switch status {
    case MSP_OK: return cString("ok")
    case MSP_ERR_INVALID_ARGUMENT: return cString("invalid argument")
    case MSP_ERR_OUT_OF_MEMORY: return cString("out of memory")
    case MSP_ERR_INFEASIBLE: return cString("infeasible")
    case MSP_ERR_CANCELLED: return cString("cancelled")
    case MSP_ERR_INVALID_STATE: return cString("invalid state")
    case MSP_ERR_INTERNAL: return cString("internal error")
    default: return cString("unknown status")
    }
}

/// The calling thread's last error message ("" after a success).
@_cdecl("msp_last_error_message")
public func msp_last_error_message() -> UnsafePointer<CChar>? {
    mspsupport_error()
}

/// Sets the kernels' thread count (0 = one per core).
@_cdecl("msp_set_num_threads")
public func msp_set_num_threads(_ n: Int32) -> msp_status {
    boundary { try Threads.set(Int(n)) }
}

/// The kernels' thread count now.
@_cdecl("msp_get_num_threads")
public func msp_get_num_threads() -> Int32 {
    Int32(clamping: Threads.count)
}

/// A C string with static storage: Swift string literals are NUL-terminated in the binary.
func cString(_ text: StaticString) -> UnsafePointer<CChar> {
    UnsafeRawPointer(text.utf8Start).assumingMemoryBound(to: CChar.self)
}
