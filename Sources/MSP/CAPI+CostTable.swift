// CAPI+CostTable: per-level proxy costs of one layer (pruned energy, reconstruction error).

import CMSPHeader
import MSPCore

/// The validated arguments every cost-table entry point shares.
private struct CostArguments {
    let weights: UnsafeRawPointer
    let shape: Matrix
    let levels: LevelSet
    let scope: TopKScope
    let colScale: UnsafeBufferPointer<Float>?
    let costs: UnsafeMutableBufferPointer<Double>

    init(
        _ weights: UnsafeRawPointer?, _ dtype: msp_dtype, _ rows: Int64, _ cols: Int64,
        _ levels: UnsafePointer<msp_level>?, _ numLevels: Int64, _ scope: Int32,
        _ colScale: UnsafePointer<Float>?, _ costsOut: UnsafeMutablePointer<Double>?
    ) throws {
        self.weights = try required(weights, "weights")
        let costsOut = try required(costsOut, "costs_out")
        _ = try required(levels, "levels")
        shape = try matrix(rows: rows, cols: cols, dtype: dtype)
        self.levels = try levelSet(levels, numLevels)
        self.scope = try topKScope(scope)
        let cols = shape.cols
        self.colScale = colScale.map { UnsafeBufferPointer(start: $0, count: cols) }
        costs = UnsafeMutableBufferPointer(start: costsOut, count: self.levels.count)
    }

    /// Copies the computed costs out (the only write to caller memory, after every check passed).
    /// - Throws: `MSPError.invalidArgument` for a cost that is not finite: finite inputs whose products
    ///   overflow (float32 in the reconstruction's BLAS product, double in the energy) give inf or NaN,
    ///   which no caller can use (`msp_solve_additive` rejects them).
    func write(_ values: [Double]) throws {
        guard values.count == costs.count else {
            throw MSPError.invalidState("cost table has \(values.count) entries for \(costs.count) levels")
        }
        if let k = values.firstIndex(where: { !$0.isFinite }) {
            throw MSPError.invalidArgument(
                "the cost of level \(k) overflows (\(values[k])): scale the weights, diag, scale or gram down")
        }
        _ = costs.update(fromContentsOf: values)
    }
}

/// Pruned (Fisher- or diagonal-weighted) energy of one layer at every level; see `include/msp.h`.
@_cdecl("msp_cost_table_energy")
public func msp_cost_table_energy(
    _ weights: UnsafeRawPointer?, _ dtype: msp_dtype, _ rows: Int64, _ cols: Int64,
    _ levels: UnsafePointer<msp_level>?, _ num_levels: Int64, _ scope: Int32, _ col_scale: UnsafePointer<Float>?,
    _ diag: UnsafePointer<Float>?, _ scale: Double, _ costs_out: UnsafeMutablePointer<Double>?
) -> msp_status {
    boundary {
        let args = try CostArguments(weights, dtype, rows, cols, levels, num_levels, scope, col_scale, costs_out)
        var diagonal: UnsafeBufferPointer<Float>?
        if let diag {
            // diag holds float32s: its byte size must fit even where the weights are 16-bit.
            _ = try elementCount(Int64(args.shape.count), "rows * cols", type: .f32)
            diagonal = UnsafeBufferPointer(start: diag, count: args.shape.count)
        }
        try args.write(
            CostTable.energy(
                weights: args.weights, args.shape, levels: args.levels, scope: args.scope, colScale: args.colScale,
                diag: diagonal, scale: scale))
    }
}

/// Output reconstruction error tr(dW H dW^T) of one layer at every level; see `include/msp.h`.
@_cdecl("msp_cost_table_reconstruction")
public func msp_cost_table_reconstruction(
    _ weights: UnsafeRawPointer?, _ dtype: msp_dtype, _ rows: Int64, _ cols: Int64,
    _ levels: UnsafePointer<msp_level>?, _ num_levels: Int64, _ scope: Int32, _ col_scale: UnsafePointer<Float>?,
    _ gram: UnsafePointer<Float>?, _ costs_out: UnsafeMutablePointer<Double>?
) -> msp_status {
    boundary {
        let args = try CostArguments(weights, dtype, rows, cols, levels, num_levels, scope, col_scale, costs_out)
        let gram = try required(gram, "gram")
        let (squared, overflow) = cols.multipliedReportingOverflow(by: cols)
        guard !overflow else {
            throw MSPError.invalidArgument("cols * cols (\(cols) * \(cols)) overflows int64")
        }
        let count = try elementCount(squared, "cols * cols", type: .f32)
        try args.write(
            CostTable.reconstruction(
                weights: args.weights, args.shape, levels: args.levels, scope: args.scope, colScale: args.colScale,
                gram: UnsafeBufferPointer(start: gram, count: count)))
    }
}
