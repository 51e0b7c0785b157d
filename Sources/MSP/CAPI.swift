// CAPI: the boundary every entry point goes through: argument checks on raw C values, and the
// mapping of thrown errors to a status code and the thread's error message.

import CMSPHeader
import CMSPSupport
import MSPCore

/// Runs an entry point's body: on success clears the calling thread's error message and returns
/// `MSP_OK`; on a thrown error stores its message and returns its status. Never traps.
func boundary(_ body: () throws -> Void) -> msp_status {
    do {
        try body()
        mspsupport_set_error("")
        return MSP_OK
    } catch let error as MSPError {
        mspsupport_set_error(error.message)
        switch error {
        case .invalidArgument: return MSP_ERR_INVALID_ARGUMENT
        case .outOfMemory: return MSP_ERR_OUT_OF_MEMORY
        case .infeasible: return MSP_ERR_INFEASIBLE
        case .cancelled: return MSP_ERR_CANCELLED
        case .invalidState: return MSP_ERR_INVALID_STATE
        }
    } catch {
        mspsupport_set_error("internal error: \(error)")
        return MSP_ERR_INTERNAL
    }
}

/// Unwraps a pointer argument.
/// - Throws: `MSPError.invalidArgument` "`name` is NULL".
func required<P>(_ pointer: P?, _ name: String) throws -> P {
    guard let pointer else { throw MSPError.invalidArgument("\(name) is NULL") }
    return pointer
}

/// The object behind a handle argument (`msp_problem *`, `msp_search *`, `msp_fisher *`, ...),
/// borrowed for the call: the caller's handle keeps its reference.
/// - Parameters:
///   - pointer: a handle made by `retained(_:)` for an object of type `T`, or NULL.
///   - name: the argument's name in the message.
/// - Throws: `MSPError.invalidArgument` "`name` is NULL".
func handle<T: AnyObject>(_ pointer: OpaquePointer?, _ name: String) throws -> T {
    Unmanaged<T>.fromOpaque(UnsafeRawPointer(try required(pointer, name))).takeUnretainedValue()
}

/// A new handle owning one reference to `object`, for a `*_create` function's out-parameter;
/// `release(_:as:)` gives the reference back.
func retained<T: AnyObject>(_ object: T) -> OpaquePointer {
    OpaquePointer(Unmanaged.passRetained(object).toOpaque())
}

/// Gives back the reference a handle from `retained(_:)` owns (a `*_free` function); NULL is a no-op.
/// - Parameters:
///   - pointer: the handle, or NULL.
///   - type: the type of the object the handle was made for.
func release<T: AnyObject>(_ pointer: OpaquePointer?, as type: T.Type) {
    guard let pointer else { return }
    Unmanaged<T>.fromOpaque(UnsafeRawPointer(pointer)).release()
}

/// Copies `count` values from a C array.
/// - Throws: `MSPError.invalidArgument` "`name` is NULL".
func array<T>(_ pointer: UnsafePointer<T>?, _ count: Int, _ name: String) throws -> [T] {
    Array(UnsafeBufferPointer(start: try required(pointer, name), count: count))
}

/// The `num_layers` values of an accumulator's int64 array argument (layer sizes or widths), as
/// `Int`s; their ranges are the accumulator's to check.
/// - Throws: `MSPError.invalidArgument` for NULL, `num_layers <= 0`, or an array too large to
///   address.
func layerValues(_ pointer: UnsafePointer<Int64>?, _ numLayers: Int64, _ name: String) throws -> [Int] {
    let pointer = try required(pointer, name)
    guard numLayers > 0 else { throw MSPError.invalidArgument("num_layers (\(numLayers)) must be > 0") }
    guard let count = Int(exactly: numLayers),
        !count.multipliedReportingOverflow(by: MemoryLayout<Int64>.stride).overflow
    else {
        throw MSPError.invalidArgument("num_layers (\(numLayers)) is too large")
    }
    return UnsafeBufferPointer(start: pointer, count: count).map { Int($0) }
}

/// Converts a scope argument.
/// - Throws: `MSPError.invalidArgument` for a value that is not an `MSP_SCOPE_*` constant.
func topKScope(_ scope: Int32) throws -> TopKScope {
    guard let value = TopKScope(rawValue: scope) else {
        throw MSPError.invalidArgument("scope (\(scope)) is not MSP_SCOPE_ROW or MSP_SCOPE_LAYER")
    }
    return value
}

/// Converts a dtype argument named `name` in messages.
/// - Throws: `MSPError.invalidArgument` for a value that is not an `MSP_DTYPE_*` constant.
func elementType(_ dtype: msp_dtype, _ name: String = "dtype") throws -> ElementType {
    guard let type = ElementType(rawValue: dtype) else {
        throw MSPError.invalidArgument("\(name) (\(dtype)) is not MSP_DTYPE_F32, MSP_DTYPE_F16 or MSP_DTYPE_BF16")
    }
    return type
}

/// Converts an element count argument: it must be positive and its byte size must fit in `Int`.
/// - Throws: `MSPError.invalidArgument` naming the argument.
func elementCount(_ count: Int64, _ name: String, type: ElementType) throws -> Int {
    guard count > 0 else { throw MSPError.invalidArgument("\(name) (\(count)) must be > 0") }
    guard let n = Int(exactly: count), !n.multipliedReportingOverflow(by: type.byteWidth).overflow else {
        throw MSPError.invalidArgument("\(name) (\(count)) is too large")
    }
    return n
}

/// Converts matrix shape arguments: both positive, and the element and byte counts must fit in `Int`.
/// - Throws: `MSPError.invalidArgument` naming the argument.
func matrix(rows: Int64, cols: Int64, dtype: msp_dtype) throws -> Matrix {
    let type = try elementType(dtype)
    guard rows > 0 else { throw MSPError.invalidArgument("rows (\(rows)) must be > 0") }
    guard cols > 0 else { throw MSPError.invalidArgument("cols (\(cols)) must be > 0") }
    let (count, overflow) = rows.multipliedReportingOverflow(by: cols)
    guard !overflow else {
        throw MSPError.invalidArgument("rows * cols (\(rows) * \(cols)) overflows int64")
    }
    _ = try elementCount(count, "rows * cols", type: type)
    return Matrix(rows: Int(rows), cols: Int(cols), type: type)
}

/// Reads a params struct whose first field is `uint32_t struct_size`; `nil` for a NULL pointer.
/// - Throws: `MSPError.invalidArgument` when `struct_size` differs from this library's size (the
///   rest of the struct is not read then).
func checkedParams<T>(_ pointer: UnsafePointer<T>?, _ name: String) throws -> T? {
    guard let pointer else { return nil }
    let size = UnsafeRawPointer(pointer).load(as: UInt32.self)
    guard size == UInt32(MemoryLayout<T>.size) else {
        throw MSPError.invalidArgument(
            "\(name)->struct_size (\(size)) is not \(MemoryLayout<T>.size): initialise it with its *_default() function")
    }
    return pointer.pointee
}
