// CAPI+Fisher: sums of squares, the Fisher-trace accumulator handle and the diagonal Fisher.

import CMSPHeader
import MSPCore

/// Sum of squares of a buffer in double; see `include/msp.h`.
@_cdecl("msp_sum_squares")
public func msp_sum_squares(
    _ data: UnsafeRawPointer?, _ dtype: msp_dtype, _ count: Int64, _ out: UnsafeMutablePointer<Double>?
) -> msp_status {
    boundary {
        let data = try required(data, "data")
        let out = try required(out, "out")
        let type = try elementType(dtype)
        let count = try elementCount(count, "count", type: type)
        out.pointee = try SumSquares.sum(data, type: type, count: count, name: "data")
    }
}

/// Creates a Fisher accumulator over `num_layers` layers; see `include/msp.h`.
@_cdecl("msp_fisher_create")
public func msp_fisher_create(
    _ sizes: UnsafePointer<Int64>?, _ num_layers: Int64, _ out: UnsafeMutablePointer<OpaquePointer?>?
) -> msp_status {
    boundary {
        let sizes = try layerValues(sizes, num_layers, "sizes")
        let out = try required(out, "out")
        let accumulator = try FisherAccumulator(sizes: sizes)
        out.pointee = retained(accumulator)
    }
}

/// Releases a Fisher accumulator; NULL is a no-op.
@_cdecl("msp_fisher_free")
public func msp_fisher_free(_ fisher: OpaquePointer?) {
    release(fisher, as: FisherAccumulator.self)
}

/// Adds scale * sum(grad^2) of a gradient chunk to one layer; see `include/msp.h`.
@_cdecl("msp_fisher_add")
public func msp_fisher_add(
    _ fisher: OpaquePointer?, _ layer: Int64, _ grad: UnsafeRawPointer?, _ dtype: msp_dtype,
    _ count: Int64, _ scale: Double
) -> msp_status {
    boundary {
        let accumulator: FisherAccumulator = try handle(fisher, "fisher")
        guard let layer = Int(exactly: layer), accumulator.size(ofLayer: layer) != nil else {
            throw MSPError.invalidArgument("layer (\(layer)) must be in [0, \(accumulator.layerCount))")
        }
        let grad = try required(grad, "grad")
        let type = try elementType(dtype)
        let count = try elementCount(count, "count", type: type)
        try accumulator.add(layer: layer, grad, type: type, count: count, scale: scale)
    }
}

/// Closes the current calibration sample; see `include/msp.h`.
@_cdecl("msp_fisher_end_sample")
public func msp_fisher_end_sample(_ fisher: OpaquePointer?) -> msp_status {
    boundary {
        let accumulator: FisherAccumulator = try handle(fisher, "fisher")
        accumulator.endSample()
    }
}

/// The number of closed samples; see `include/msp.h`.
@_cdecl("msp_fisher_num_samples")
public func msp_fisher_num_samples(_ fisher: OpaquePointer?, _ out: UnsafeMutablePointer<Int64>?)
    -> msp_status
{
    boundary {
        let accumulator: FisherAccumulator = try handle(fisher, "fisher")
        let out = try required(out, "out")
        out.pointee = Int64(accumulator.sampleCount)
    }
}

/// Writes every layer's trace; see `include/msp.h`.
@_cdecl("msp_fisher_traces")
public func msp_fisher_traces(
    _ fisher: OpaquePointer?, _ per_parameter: Int32, _ out: UnsafeMutablePointer<Double>?
) -> msp_status {
    boundary {
        let accumulator: FisherAccumulator = try handle(fisher, "fisher")
        let out = try required(out, "out")
        try accumulator.traces(
            perParameter: per_parameter != 0,
            into: UnsafeMutableBufferPointer(start: out, count: accumulator.layerCount))
    }
}

/// Clears all sums and the sample count; see `include/msp.h`.
@_cdecl("msp_fisher_reset")
public func msp_fisher_reset(_ fisher: OpaquePointer?) -> msp_status {
    boundary {
        let accumulator: FisherAccumulator = try handle(fisher, "fisher")
        accumulator.reset()
    }
}

/// Accumulates the diagonal Fisher element-wise into a float32 buffer; see `include/msp.h`.
@_cdecl("msp_fisher_add_diagonal")
public func msp_fisher_add_diagonal(
    _ grad: UnsafeRawPointer?, _ dtype: msp_dtype, _ count: Int64,
    _ diag_inout: UnsafeMutablePointer<Float>?, _ scale: Double
) -> msp_status {
    boundary {
        let grad = try required(grad, "grad")
        let diag = try required(diag_inout, "diag_inout")
        let type = try elementType(dtype)
        let count = try elementCount(count, "count", type: type)
        guard !count.multipliedReportingOverflow(by: MemoryLayout<Float>.stride).overflow else {
            throw MSPError.invalidArgument("count (\(count)) is too large")
        }
        try FisherAccumulator.addDiagonal(grad, type: type, count: count, to: diag, scale: scale)
    }
}
