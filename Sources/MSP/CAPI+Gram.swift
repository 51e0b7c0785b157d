// CAPI+Gram: the accumulator handle of per-layer Gram matrices of layer inputs.

import CMSPHeader
import MSPCore

/// Creates a Gram accumulator over `num_layers` layers; see `include/msp.h`.
@_cdecl("msp_gram_create")
public func msp_gram_create(
    _ cols: UnsafePointer<Int64>?, _ num_layers: Int64, _ out: UnsafeMutablePointer<OpaquePointer?>?
) -> msp_status {
    boundary {
        let cols = try required(cols, "cols")
        let out = try required(out, "out")
        guard num_layers > 0 else {
            throw MSPError.invalidArgument("num_layers (\(num_layers)) must be > 0")
        }
        guard let count = Int(exactly: num_layers),
            !count.multipliedReportingOverflow(by: MemoryLayout<Int64>.stride).overflow
        else {
            throw MSPError.invalidArgument("num_layers (\(num_layers)) is too large")
        }
        let widths = UnsafeBufferPointer(start: cols, count: count).lazy.map { Int($0) }
        let accumulator = try GramAccumulator(cols: widths)
        out.pointee = OpaquePointer(Unmanaged.passRetained(accumulator).toOpaque())
    }
}

/// Releases a Gram accumulator; NULL is a no-op.
@_cdecl("msp_gram_free")
public func msp_gram_free(_ gram: OpaquePointer?) {
    guard let gram else { return }
    Unmanaged<GramAccumulator>.fromOpaque(UnsafeRawPointer(gram)).release()
}

/// Adds the Gram matrix of one activation chunk to a layer; see `include/msp.h`.
@_cdecl("msp_gram_add")
public func msp_gram_add(
    _ gram: OpaquePointer?, _ layer: Int64, _ x: UnsafeRawPointer?, _ dtype: msp_dtype, _ tokens: Int64,
    _ cols: Int64
) -> msp_status {
    boundary {
        let accumulator = try gramHandle(gram)
        let layer = try layerIndex(layer, accumulator)
        let x = try required(x, "x")
        let shape = try matrix(rows: tokens, cols: cols, dtype: dtype)
        try accumulator.add(layer: layer, x, type: shape.type, tokens: shape.rows, cols: shape.cols)
    }
}

/// The tokens added to a layer; see `include/msp.h`.
@_cdecl("msp_gram_tokens")
public func msp_gram_tokens(_ gram: OpaquePointer?, _ layer: Int64, _ out: UnsafeMutablePointer<Int64>?)
    -> msp_status
{
    boundary {
        let accumulator = try gramHandle(gram)
        let layer = try layerIndex(layer, accumulator)
        let out = try required(out, "out")
        out.pointee = Int64(accumulator.tokens(ofLayer: layer) ?? 0)
    }
}

/// Writes a layer's Gram matrix; see `include/msp.h`.
@_cdecl("msp_gram_get")
public func msp_gram_get(_ gram: OpaquePointer?, _ layer: Int64, _ out: UnsafeMutablePointer<Float>?)
    -> msp_status
{
    boundary {
        let accumulator = try gramHandle(gram)
        let layer = try layerIndex(layer, accumulator)
        let out = try required(out, "out")
        let cols = accumulator.cols(ofLayer: layer) ?? 0
        try accumulator.gram(layer: layer, into: UnsafeMutableBufferPointer(start: out, count: cols * cols))
    }
}

/// Clears every layer's sums and token count; see `include/msp.h`.
@_cdecl("msp_gram_reset")
public func msp_gram_reset(_ gram: OpaquePointer?) -> msp_status {
    boundary { try gramHandle(gram).reset() }
}

/// The accumulator behind a handle from `msp_gram_create`, borrowed for the call.
/// - Throws: `MSPError.invalidArgument` "gram is NULL".
private func gramHandle(_ gram: OpaquePointer?) throws -> GramAccumulator {
    let gram = try required(gram, "gram")
    return Unmanaged<GramAccumulator>.fromOpaque(UnsafeRawPointer(gram)).takeUnretainedValue()
}

/// Converts a layer argument of a Gram accumulator.
/// - Throws: `MSPError.invalidArgument` for an index outside [0, num_layers).
private func layerIndex(_ layer: Int64, _ accumulator: GramAccumulator) throws -> Int {
    guard let index = Int(exactly: layer), accumulator.cols(ofLayer: index) != nil else {
        throw MSPError.invalidArgument("layer (\(layer)) must be in [0, \(accumulator.layerCount))")
    }
    return index
}
