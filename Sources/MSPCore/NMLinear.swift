// NMLinear: the product of compressed N:M weights with a few tokens, Y = X Wᵀ (y = W x for one).

import CMSPKernels

/// Multiplies compressed N:M weights (`NMPackedLayout`) with tokens without decompressing them to
/// memory: each row's kept values are expanded chunk by chunk in registers and multiplied by fused
/// multiply-adds in float32.
///
/// The summation order is fixed (see `CMSPKernels/include/mspkernels.h`): the result is the same,
/// bit for bit, for any thread count, any instruction set (`KernelISA`) and any batch a token comes
/// in. It is the float32 product of the masked dense matrix computed in that order: pruned
/// positions contribute 0 · x, so an infinite or NaN token element makes its outputs NaN, as in a
/// dense product. Rows are split across threads; tokens go in tiles of `tileTokens`, each reading
/// the weights once, so the cost grows with the batch (the kernels are made for decoding, 1 to 16
/// tokens).
public enum NMLinear {
    /// Tokens multiplied per pass over the weights.
    public static let tileTokens = Int(MSPK_MAX_TOKENS)
    /// Rows whose index is checked and computed per kernel call (their index stays in L1).
    static let blockRows = 8
    /// Weights per thread at least: smaller matrices (576x1536 included) stay on one thread, where
    /// a second one measured no faster (tens of microseconds of work).
    static let minimumWeightsPerThread = 1 << 20
    /// Chunks of rows per thread of one product.
    static let chunksPerThread = 4

    /// Computes `y[t][r] = Σ_c W[r][c] · x[t][c]` for every token `t < batch` and row `r`.
    /// - Parameters:
    ///   - values, index: a packed matrix of `layout` (`valuesBytes` and `indexBytes` bytes).
    ///   - x: `batch x cols` elements of `xType`, row-major.
    ///   - y: `batch x rows` elements of `yType`, row-major, written with the float32 results rounded
    ///     to nearest even in `yType`; must not overlap the inputs.
    ///   - isa: the kernels to use (all give the same result); one of `KernelISA.supported`.
    /// - Throws: `MSPError.invalidArgument` for `batch <= 0`, an unsupported `isa` or an index that
    ///   is not of `layout`, before `y` is written; `MSPError.outOfMemory` for the scratch (about
    ///   `16 x (cols + rows)` floats).
    public static func apply(
        values: UnsafeRawPointer, index: UnsafeRawPointer, _ layout: NMPackedLayout, x: UnsafeRawPointer,
        xType: ElementType, batch: Int, y: UnsafeMutableRawPointer, yType: ElementType, isa: KernelISA = .selected
    ) throws {
        guard batch > 0 else { throw MSPError.invalidArgument("batch (\(batch)) must be > 0") }
        guard KernelISA.supported.contains(isa) else {
            throw MSPError.invalidArgument("this CPU does not run the \(isa) kernels")
        }
        let tile = min(batch, tileTokens)
        let (xCount, xOverflow) = (tile * NMPackedLayout.chunk).multipliedReportingOverflow(by: layout.chunks)
        let (yCount, yOverflow) = tile.multipliedReportingOverflow(by: layout.rows)
        guard !xOverflow, !yOverflow, xCount < Int.max - 16 else {
            throw MSPError.outOfMemory("cannot allocate the scratch of \(tile) tokens of \(layout.rows) x \(layout.cols)")
        }
        // One tile: its index is checked as it is read; several: the whole index first, since the
        // first tile's results are stored before the last rows are read again.
        let checkAhead = batch > tileTokens
        if checkAhead { try layout.checkIndex(index) }
        // Prepared tokens start on a cache line: the kernels' 64-byte loads of them then never
        // straddle two lines (measured 15% faster on one token).
        try withScratch(Float.self, xCount + 16) { xBuffer in
            let xs = xBuffer + (16 - Int(bitPattern: xBuffer) / 4 % 16) % 16
            try withScratch(Float.self, yCount) { ys in
                for first in stride(from: 0, to: batch, by: tileTokens) {
                    let tokens = min(tileTokens, batch - first)
                    prepare(x, xType, layout, tokens: first..<(first + tokens), into: xs)
                    try multiply(values, index, layout, xs, tokens: tokens, ys, isa: isa, checkIndex: !checkAhead)
                    store(ys, count: tokens * layout.rows, into: y, at: first * layout.rows, yType)
                }
            }
        }
    }

    /// One tile: the float32 results of all rows for `tokens` prepared tokens into `ys[t * rows + r]`.
    private static func multiply(
        _ values: UnsafeRawPointer, _ index: UnsafeRawPointer, _ layout: NMPackedLayout, _ xs: UnsafePointer<Float>,
        tokens: Int, _ ys: UnsafeMutablePointer<Float>, isa: KernelISA, checkIndex: Bool
    ) throws {
        let perThread = max(1, minimumWeightsPerThread / layout.cols)
        let scratchCount = isa == .avx2 && tokens > 1 ? layout.chunks * NMPackedLayout.chunk : 0
        // The AVX-512 kernel checks the index of group sizes dividing 32 as it reads it; other
        // kernels and group sizes have each block checked first.
        let counts = isa == .avx512 && checkIndex ? layout.wordCounts : nil
        let checkFirst = checkIndex && counts == nil
        // Several chunks per thread: a thread that starts late or is preempted leaves its chunks to
        // the others (the worker pool hands chunks out one at a time).
        let chunks = Threads.chunks(layout.rows, minimumPerThread: perThread, threads: chunksPerThread * Threads.count)
        _ = try Threads.map(chunks) { _, rows in
            try withScratch(Float.self, scratchCount) { scratch in
                var job = mspk_nm_rows(
                    values: nil, index: nil, values_end: values + layout.valuesBytes, rows: 0,
                    chunks: Int64(layout.chunks), values_stride: Int64(layout.valuesStride),
                    index_stride: Int64(layout.indexStride), dtype: layout.type.rawValue, tokens: Int32(tokens),
                    x: xs, y: nil, y_stride: Int64(layout.rows), scratch: scratch,
                    check_m: counts == nil ? 0 : Int32(layout.pattern.m), check_full: counts?.full ?? 0,
                    check_last: counts?.last ?? 0)
                for start in stride(from: rows.lowerBound, to: rows.upperBound, by: blockRows) {
                    let end = min(start + blockRows, rows.upperBound)
                    if checkFirst { try layout.checkIndex(index, rows: start..<end) }
                    job.values = values + start * layout.valuesStride
                    job.index = (index + start * layout.indexStride).assumingMemoryBound(to: UInt8.self)
                    job.rows = Int64(end - start)
                    job.y = ys + start
                    if isa.run(&job) >= 0 {
                        // The block's first bad row in row order, with its message.
                        try layout.checkIndex(index, rows: start..<end)
                        throw KernelDisagreement(rows: start..<end)
                    }
                }
            }
        }
    }

    /// A kernel reported a bad index that the index check passes: a bug (an internal error at the C
    /// boundary).
    struct KernelDisagreement: Error {
        let rows: Range<Int>
    }

    /// Writes `tokens` of x widened to float32 in the kernels' chunk layout: per token `chunks x 32`
    /// floats, each chunk's `first` then `second` half vector (mspkernels.h), zero past `cols`.
    private static func prepare(
        _ x: UnsafeRawPointer, _ type: ElementType, _ layout: NMPackedLayout, tokens: Range<Int>,
        into out: UnsafeMutablePointer<Float>
    ) {
        switch type {
        case .f32: prepare(F32.self, x, layout, tokens, out)
        case .f16: prepare(F16.self, x, layout, tokens, out)
        case .bf16: prepare(BF16.self, x, layout, tokens, out)
        }
    }

    private static func prepare<E: Element>(
        _: E.Type, _ x: UnsafeRawPointer, _ layout: NMPackedLayout, _ tokens: Range<Int>, _ out: UnsafeMutablePointer<Float>
    ) {
        let cols = layout.cols, width = layout.chunks * NMPackedLayout.chunk
        let interleaved = mspk_x_interleaved(layout.type.rawValue) != 0
        for (i, t) in tokens.enumerated() {
            let src = x.assumingMemoryBound(to: E.Bits.self) + t * cols, dst = out + i * width
            (dst + width - NMPackedLayout.chunk).update(repeating: 0, count: NMPackedLayout.chunk)
            if interleaved {
                // Chunk position q = 2j goes to lane j of `first`, q = 2j + 1 to lane j of `second`.
                for p in 0..<cols { dst[p & ~31 | (p & 1) << 4 | (p & 31) >> 1] = E.widen(src[p]) }
            } else {
                for p in 0..<cols { dst[p] = E.widen(src[p]) }
            }
        }
    }

    /// Writes `count` float32 results to `y` from element `offset` on, rounded to nearest even in
    /// `type` (NaN stays NaN).
    private static func store(
        _ ys: UnsafePointer<Float>, count: Int, into y: UnsafeMutableRawPointer, at offset: Int, _ type: ElementType
    ) {
        switch type {
        case .f32:
            (y + offset * 4).copyMemory(from: ys, byteCount: count * 4)
        case .f16:
            let out = y.assumingMemoryBound(to: UInt16.self) + offset
            for i in 0..<count { out[i] = Float16(ys[i]).bitPattern }
        case .bf16:
            let out = y.assumingMemoryBound(to: UInt16.self) + offset
            for i in 0..<count {
                let bits = ys[i].bitPattern
                out[i] = ys[i].isNaN
                    ? UInt16(truncatingIfNeeded: bits >> 16) | 0x0040
                    : UInt16(truncatingIfNeeded: (bits &+ 0x7FFF &+ (bits >> 16 & 1)) >> 16)
            }
        }
    }
}
