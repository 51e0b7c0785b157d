// CAPI+Packed: compressed N:M weights: sizes, packing, unpacking and the product with tokens.

import CMSPHeader
import MSPCore

/// Converts the shape and pattern arguments of a packed matrix.
/// - Throws: `MSPError.invalidArgument` naming the argument (sizes as for `matrix`, the pattern as
///   for `NMPattern`, cols % m, byte counts that overflow).
private func packedLayout(rows: Int64, cols: Int64, n: Int32, m: Int32, dtype: msp_dtype) throws -> NMPackedLayout {
    let shape = try matrix(rows: rows, cols: cols, dtype: dtype)
    return try NMPackedLayout(rows: shape.rows, cols: shape.cols, pattern: NMPattern(n: Int(n), m: Int(m)), type: shape.type)
}

/// Bytes of a packed matrix's values and index; see `include/msp.h`.
@_cdecl("msp_nm_packed_size")
public func msp_nm_packed_size(
    _ rows: Int64, _ cols: Int64, _ n: Int32, _ m: Int32, _ dtype: msp_dtype,
    _ values_bytes_out: UnsafeMutablePointer<Int64>?, _ index_bytes_out: UnsafeMutablePointer<Int64>?
) -> msp_status {
    boundary {
        let valuesOut = try required(values_bytes_out, "values_bytes_out")
        let indexOut = try required(index_bytes_out, "index_bytes_out")
        let layout = try packedLayout(rows: rows, cols: cols, n: n, m: m, dtype: dtype)
        valuesOut.pointee = Int64(layout.valuesBytes)
        indexOut.pointee = Int64(layout.indexBytes)
    }
}

/// Packs weights into the compressed N:M format by magnitude (times col_scale); see `include/msp.h`.
@_cdecl("msp_nm_pack")
public func msp_nm_pack(
    _ weights: UnsafeRawPointer?, _ dtype: msp_dtype, _ rows: Int64, _ cols: Int64, _ n: Int32, _ m: Int32,
    _ col_scale: UnsafePointer<Float>?, _ values_out: UnsafeMutableRawPointer?, _ index_out: UnsafeMutablePointer<UInt8>?
) -> msp_status {
    boundary {
        let weights = try required(weights, "weights")
        let values = try required(values_out, "values_out")
        let index = try required(index_out, "index_out")
        let layout = try packedLayout(rows: rows, cols: cols, n: n, m: m, dtype: dtype)
        try NMPack.pack(
            weights: weights, layout, colScale: col_scale.map { UnsafeBufferPointer(start: $0, count: layout.cols) },
            values: values, index: UnsafeMutableRawPointer(index))
    }
}

/// The dense masked matrix of a packed one; see `include/msp.h`.
@_cdecl("msp_nm_unpack")
public func msp_nm_unpack(
    _ values: UnsafeRawPointer?, _ index: UnsafePointer<UInt8>?, _ dtype: msp_dtype, _ rows: Int64, _ cols: Int64,
    _ n: Int32, _ m: Int32, _ weights_out: UnsafeMutableRawPointer?
) -> msp_status {
    boundary {
        let values = try required(values, "values")
        let index = try required(index, "index")
        let weights = try required(weights_out, "weights_out")
        let layout = try packedLayout(rows: rows, cols: cols, n: n, m: m, dtype: dtype)
        try NMPack.unpack(values: values, index: UnsafeRawPointer(index), layout, weights: weights)
    }
}

/// Y = X Wᵀ of packed weights and `batch` tokens; see `include/msp.h`.
@_cdecl("msp_nm_linear")
public func msp_nm_linear(
    _ values: UnsafeRawPointer?, _ index: UnsafePointer<UInt8>?, _ dtype: msp_dtype, _ rows: Int64, _ cols: Int64,
    _ n: Int32, _ m: Int32, _ x: UnsafeRawPointer?, _ x_dtype: msp_dtype, _ batch: Int64,
    _ y: UnsafeMutableRawPointer?, _ y_dtype: msp_dtype
) -> msp_status {
    boundary {
        let values = try required(values, "values")
        let index = try required(index, "index")
        let x = try required(x, "x")
        let y = try required(y, "y")
        let layout = try packedLayout(rows: rows, cols: cols, n: n, m: m, dtype: dtype)
        let xType = try elementType(x_dtype, "x_dtype")
        let yType = try elementType(y_dtype, "y_dtype")
        guard batch > 0 else { throw MSPError.invalidArgument("batch (\(batch)) must be > 0") }
        // The batch x cols tokens and batch x rows results must be addressable.
        for (count, type, name) in [(cols, xType, "batch * cols"), (rows, yType, "batch * rows")] {
            let (elements, overflow) = batch.multipliedReportingOverflow(by: count)
            guard !overflow else { throw MSPError.invalidArgument("\(name) (\(batch) * \(count)) overflows int64") }
            _ = try elementCount(elements, name, type: type)
        }
        try NMLinear.apply(
            values: values, index: UnsafeRawPointer(index), layout, x: x, xType: xType, batch: Int(batch), y: y,
            yType: yType)
    }
}

/// The instruction set msp_nm_linear uses in this process; see `include/msp.h`.
@_cdecl("msp_nm_linear_isa")
public func msp_nm_linear_isa() -> UnsafePointer<CChar>? {
    switch KernelISA.selected {
    case .portable: cString("portable")
    case .avx2: cString("avx2")
    case .avx512: cString("avx512")
    }
}
