// NMPack: N:M weights into the compressed format by msp's own masks, and back to the masked matrix.

/// Packing and unpacking of compressed N:M weights (the format of `NMPackedLayout`).
public enum NMPack {
    /// Bytes of keep mask computed at once while packing (a block of rows).
    static let maskBytes = 1 << 20

    /// Packs weights: in every group of `m` consecutive weights along a row the `n` with the highest
    /// score |w[r][c]| * colScale[c] are kept, with the order and ties of `NMMask.prune` (score
    /// descending, then column ascending), so a weight already pruned to the pattern packs its
    /// nonzeros (and zeros where a group holds fewer than `n`).
    /// - Parameters:
    ///   - weights: `rows x cols` elements of `layout.type`; not modified.
    ///   - colScale: `nil` for magnitude scores, else `cols` finite non-negative factors.
    ///   - values: `layout.valuesBytes` bytes, written with the kept values.
    ///   - index: `layout.indexBytes` bytes, written with the index.
    /// - Throws: `MSPError.invalidArgument` for a NaN weight or score or a bad `colScale` (nothing is
    ///   written then); `MSPError.outOfMemory`.
    public static func pack(
        weights: UnsafeRawPointer, _ layout: NMPackedLayout, colScale: UnsafeBufferPointer<Float>?,
        values: UnsafeMutableRawPointer, index: UnsafeMutableRawPointer
    ) throws {
        try validateColScale(colScale)
        let matrix = Matrix(rows: layout.rows, cols: layout.cols, type: layout.type)
        try validateScores(weights, matrix, .magnitude(colScale: colScale), name: "weights")
        switch layout.type {
        case .f32: try pack(UInt32.self, weights, layout, colScale, values, index)
        case .f16, .bf16: try pack(UInt16.self, weights, layout, colScale, values, index)
        }
    }

    /// Writes the dense masked matrix of a packed one: kept values at their columns, +0 elsewhere.
    /// - Parameters:
    ///   - values, index: a packed matrix of `layout` (`valuesBytes` and `indexBytes` bytes).
    ///   - weights: `rows x cols` elements of `layout.type`, overwritten.
    /// - Throws: `MSPError.invalidArgument` for an index that is not of `layout` (see
    ///   `NMPackedLayout.checkIndex`), before anything is written.
    public static func unpack(
        values: UnsafeRawPointer, index: UnsafeRawPointer, _ layout: NMPackedLayout, weights: UnsafeMutableRawPointer
    ) throws {
        try layout.checkIndex(index)
        switch layout.type {
        case .f32: try unpack(UInt32.self, values, index, layout, weights)
        case .f16, .bf16: try unpack(UInt16.self, values, index, layout, weights)
        }
    }

    private static func pack<B: FixedWidthInteger>(
        _: B.Type, _ weights: UnsafeRawPointer, _ layout: NMPackedLayout, _ colScale: UnsafeBufferPointer<Float>?,
        _ values: UnsafeMutableRawPointer, _ index: UnsafeMutableRawPointer
    ) throws {
        let cols = layout.cols
        let w = weights.assumingMemoryBound(to: B.self), v = values.assumingMemoryBound(to: B.self)
        let block = max(1, min(layout.rows, maskBytes / cols))
        try withScratch(UInt8.self, block * cols) { mask in
            for first in stride(from: 0, to: layout.rows, by: block) {
                let count = min(block, layout.rows - first)
                try NMMask.magnitudeMask(
                    weights: w + first * cols, Matrix(rows: count, cols: cols, type: layout.type),
                    pattern: layout.pattern, colScale: colScale, keepMask: mask)
                _ = try Threads.map(count, minimumPerThread: max(1, 65536 / cols)) { rows in
                    for r in rows {
                        packRow(
                            w + (first + r) * cols, mask + r * cols, layout,
                            v + (first + r) * layout.valuesPerRow, index + (first + r) * layout.indexStride)
                    }
                }
            }
        }
    }

    /// Packs one row from its keep mask: each chunk's index word, then its kept values in order.
    @inline(__always)
    private static func packRow<B: FixedWidthInteger>(
        _ w: UnsafePointer<B>, _ mask: UnsafePointer<UInt8>, _ layout: NMPackedLayout,
        _ values: UnsafeMutablePointer<B>, _ index: UnsafeMutableRawPointer
    ) {
        var kept = 0
        for c in 0..<layout.chunks {
            let start = c &* NMPackedLayout.chunk
            var word: UInt32 = 0
            for j in 0..<min(NMPackedLayout.chunk, layout.cols &- start) { word |= UInt32(mask[start &+ j] & 1) << j }
            index.storeBytes(of: word.littleEndian, toByteOffset: 4 &* c, as: UInt32.self)
            while word != 0 {
                values[kept] = w[start &+ word.trailingZeroBitCount]
                kept &+= 1
                word &= word &- 1
            }
        }
    }

    private static func unpack<B: FixedWidthInteger>(
        _: B.Type, _ values: UnsafeRawPointer, _ index: UnsafeRawPointer, _ layout: NMPackedLayout,
        _ weights: UnsafeMutableRawPointer
    ) throws {
        let cols = layout.cols
        let w = weights.assumingMemoryBound(to: B.self), v = values.assumingMemoryBound(to: B.self)
        _ = try Threads.map(layout.rows, minimumPerThread: max(1, 65536 / cols)) { rows in
            for r in rows {
                let out = w + r * cols, row = index + r * layout.indexStride
                var kept = r * layout.valuesPerRow
                out.update(repeating: 0, count: cols)
                for c in 0..<layout.chunks {
                    var word = layout.word(row, c)
                    while word != 0 {
                        out[c &* NMPackedLayout.chunk &+ word.trailingZeroBitCount] = v[kept]
                        kept &+= 1
                        word &= word &- 1
                    }
                }
            }
        }
    }
}
