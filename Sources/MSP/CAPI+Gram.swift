// CAPI+Gram: the accumulator handle of per-layer Gram matrices of layer inputs.

import CMSPHeader
import MSPCore

/// Creates a Gram accumulator over `num_layers` layers; see `include/msp.h`.
@_cdecl("msp_gram_create")
public func msp_gram_create(
    _ cols: UnsafePointer<Int64>?, _ num_layers: Int64, _ out: UnsafeMutablePointer<OpaquePointer?>?
) -> msp_status {
    boundary {
        let cols = try layerValues(cols, num_layers, "cols")
        let out = try required(out, "out")
        out.pointee = retained(try GramAccumulator(cols: cols))
    }
}

/// Releases a Gram accumulator; NULL is a no-op.
@_cdecl("msp_gram_free")
public func msp_gram_free(_ gram: OpaquePointer?) {
    release(gram, as: GramAccumulator.self)
}

/// Adds the Gram matrix of one activation chunk to a layer; see `include/msp.h`.
@_cdecl("msp_gram_add")
public func msp_gram_add(
    _ gram: OpaquePointer?, _ layer: Int64, _ x: UnsafeRawPointer?, _ dtype: msp_dtype, _ tokens: Int64,
    _ cols: Int64
) -> msp_status {
    boundary {
        let (accumulator, layer) = try gramLayer(gram, layer)
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
        let (accumulator, layer) = try gramLayer(gram, layer)
        try required(out, "out").pointee = Int64(accumulator.tokens(ofLayer: layer) ?? 0)
    }
}

/// Writes a layer's Gram matrix; see `include/msp.h`.
@_cdecl("msp_gram_get")
public func msp_gram_get(_ gram: OpaquePointer?, _ layer: Int64, _ out: UnsafeMutablePointer<Float>?)
    -> msp_status
{
    boundary {
        let (accumulator, layer) = try gramLayer(gram, layer)
        let cols = accumulator.cols(ofLayer: layer) ?? 0
        let out = UnsafeMutableBufferPointer(start: try required(out, "out"), count: cols * cols)
        try accumulator.gram(layer: layer, into: out)
    }
}

/// Clears every layer's sums and token count; see `include/msp.h`.
@_cdecl("msp_gram_reset")
public func msp_gram_reset(_ gram: OpaquePointer?) -> msp_status {
    boundary {
        let accumulator: GramAccumulator = try handle(gram, "gram")
        accumulator.reset()
    }
}

/// The accumulator behind a handle and a layer argument checked against it.
/// - Throws: `MSPError.invalidArgument` for a NULL handle or a layer outside [0, num_layers).
private func gramLayer(_ gram: OpaquePointer?, _ layer: Int64) throws -> (GramAccumulator, Int) {
    let accumulator: GramAccumulator = try handle(gram, "gram")
    guard let index = Int(exactly: layer), accumulator.cols(ofLayer: index) != nil else {
        throw MSPError.invalidArgument("layer (\(layer)) must be in [0, \(accumulator.layerCount))")
    }
    return (accumulator, index)
}
