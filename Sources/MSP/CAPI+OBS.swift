// CAPI+OBS: the SparseGPT solver handle (one factorised Gram matrix, any number of prunes).

import CMSPHeader
import MSPCore

/// Prepares and factorises a Gram matrix; see `include/msp.h`.
@_cdecl("msp_obs_create")
public func msp_obs_create(
    _ gram: UnsafePointer<Float>?, _ cols: Int64, _ damp: Double, _ out: UnsafeMutablePointer<OpaquePointer?>?
) -> msp_status {
    boundary {
        let gram = try required(gram, "gram")
        let out = try required(out, "out")
        let shape = try matrix(rows: cols, cols: cols, dtype: MSP_DTYPE_F32)
        out.pointee = retained(try OBSSolver(gram: gram, cols: shape.cols, damp: damp))
    }
}

/// Releases a solver; NULL is a no-op.
@_cdecl("msp_obs_free")
public func msp_obs_free(_ obs: OpaquePointer?) {
    release(obs, as: OBSSolver.self)
}

/// Prunes weights in place to one level with SparseGPT's sweep; see `include/msp.h`.
@_cdecl("msp_obs_prune")
public func msp_obs_prune(
    _ obs: OpaquePointer?, _ weights: UnsafeMutableRawPointer?, _ dtype: msp_dtype, _ rows: Int64, _ cols: Int64,
    _ level: UnsafePointer<msp_level>?, _ block: Int64, _ keep_out: UnsafeMutablePointer<UInt8>?
) -> msp_status {
    boundary {
        let solver: OBSSolver = try handle(obs, "obs")
        let weights = try required(weights, "weights")
        let level = try levelSet(try required(level, "level"), 1).levels[0]
        let shape = try matrix(rows: rows, cols: cols, dtype: dtype)
        guard block > 0 else { throw MSPError.invalidArgument("block (\(block)) must be > 0") }
        try solver.prune(weights: weights, shape, level: level, block: Int(clamping: block), keepMask: keep_out)
    }
}
