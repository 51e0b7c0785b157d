// CAPI+Library: version, status strings, error messages and thread settings.

import CMSPHeader
import CMSPSupport
import MSPCore

/// The library version, "MAJOR.MINOR.PATCH".
@_cdecl("msp_version_string")
public func msp_version_string() -> UnsafePointer<CChar>? {
    cString("0.1.0")
}

/// The ABI version; bindings compare it with `MSP_ABI_VERSION`.
@_cdecl("msp_abi_version")
public func msp_abi_version() -> Int32 {
    MSP_ABI_VERSION
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
