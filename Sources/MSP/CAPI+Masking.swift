// CAPI+Masking: N:M masks and in-place N:M and unstructured pruning.

import CMSPHeader
import MSPCore

/// N:M keep mask of explicit scores; see `include/msp.h`.
@_cdecl("msp_nm_mask")
public func msp_nm_mask(
    _ scores: UnsafeRawPointer?, _ dtype: msp_dtype, _ rows: Int64, _ cols: Int64, _ n: Int32,
    _ m: Int32, _ keep_mask_out: UnsafeMutablePointer<UInt8>?
) -> msp_status {
    boundary {
        let scores = try required(scores, "scores")
        let keep = try required(keep_mask_out, "keep_mask_out")
        let shape = try matrix(rows: rows, cols: cols, dtype: dtype)
        let pattern = try NMPattern(n: Int(n), m: Int(m))
        try NMMask.mask(scores: scores, shape, pattern: pattern, keepMask: keep)
    }
}

/// In-place N:M pruning by |w| * col_scale; see `include/msp.h`.
@_cdecl("msp_nm_prune")
public func msp_nm_prune(
    _ weights: UnsafeMutableRawPointer?, _ dtype: msp_dtype, _ rows: Int64, _ cols: Int64, _ n: Int32,
    _ m: Int32, _ col_scale: UnsafePointer<Float>?, _ keep_mask_out: UnsafeMutablePointer<UInt8>?
) -> msp_status {
    boundary {
        let weights = try required(weights, "weights")
        let shape = try matrix(rows: rows, cols: cols, dtype: dtype)
        let pattern = try NMPattern(n: Int(n), m: Int(m))
        try NMMask.prune(
            weights: weights, shape, pattern: pattern,
            colScale: col_scale.map { UnsafeBufferPointer(start: $0, count: shape.cols) },
            keepMask: keep_mask_out)
    }
}

/// In-place unstructured pruning per row or per layer; see `include/msp.h`.
@_cdecl("msp_topk_prune")
public func msp_topk_prune(
    _ weights: UnsafeMutableRawPointer?, _ dtype: msp_dtype, _ rows: Int64, _ cols: Int64,
    _ sparsity: Double, _ scope: Int32, _ col_scale: UnsafePointer<Float>?,
    _ keep_mask_out: UnsafeMutablePointer<UInt8>?
) -> msp_status {
    boundary {
        let weights = try required(weights, "weights")
        let shape = try matrix(rows: rows, cols: cols, dtype: dtype)
        try TopKPrune.prune(
            weights: weights, shape, sparsity: sparsity, scope: try topKScope(scope),
            colScale: col_scale.map { UnsafeBufferPointer(start: $0, count: shape.cols) },
            keepMask: keep_mask_out)
    }
}
