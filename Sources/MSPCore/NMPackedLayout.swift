// NMPackedLayout: the compressed N:M format of one weight matrix, its sizes, and the check of a
// packed index that every reader runs before it trusts the index.

import CMSPKernels

/// The layout of an N:M weight matrix stored compressed: per row, the kept values in column order
/// (`n` of every group of `m`, in the weights' element type) and an index of one bit per column.
///
/// - values: `rows x valuesPerRow` elements, row-major, `valuesPerRow = cols / m * n`.
/// - index: `rows x indexStride` bytes, `indexStride = 4 * ceil(cols / 32)`: bit `c % 8` of byte
///   `c / 8` of a row is set when column `c` is kept (little-endian 32-bit words, one per chunk of
///   32 columns). Every group of `m` columns has exactly `n` bits set; bits at or past `cols` are 0.
///
/// A bitmask rather than log2(m)-bit positions: a chunk's word is the mask of one `vpexpandw` (or
/// four table shuffles on AVX2) with no decoding, and it takes fewer bytes from 4:8 up (at 2:8
/// 5 bytes per group of 8 bf16 weights against 4.75, at 1:8 3 against 2.375).
public struct NMPackedLayout: Sendable, Equatable {
    /// Columns per index word (and kernel chunk).
    public static let chunk = 32

    /// Rows of the matrix (> 0).
    public let rows: Int
    /// Columns of the matrix (> 0, a multiple of `pattern.m`).
    public let cols: Int
    /// The N:M pattern.
    public let pattern: NMPattern
    /// The element type of the weights and of the kept values.
    public let type: ElementType

    /// Kept values per row, `cols / m * n`.
    public var valuesPerRow: Int { cols / pattern.m * pattern.n }
    /// Index words (chunks of 32 columns) per row, `ceil(cols / 32)`.
    public var chunks: Int { (cols + Self.chunk - 1) / Self.chunk }
    /// Bytes of one row's values.
    public var valuesStride: Int { valuesPerRow * type.byteWidth }
    /// Bytes of one row's index, `4 * chunks`.
    public var indexStride: Int { 4 * chunks }
    /// Bytes of all values.
    public var valuesBytes: Int { rows * valuesStride }
    /// Bytes of the whole index.
    public var indexBytes: Int { rows * indexStride }

    /// Describes a packed matrix.
    /// - Parameters:
    ///   - rows: > 0.
    ///   - cols: > 0, a multiple of `pattern.m`.
    /// - Throws: `MSPError.invalidArgument` for a non-positive size, `cols % m != 0`, or byte counts
    ///   that overflow `Int`.
    public init(rows: Int, cols: Int, pattern: NMPattern, type: ElementType) throws {
        guard rows > 0 else { throw MSPError.invalidArgument("rows (\(rows)) must be > 0") }
        guard cols > 0 else { throw MSPError.invalidArgument("cols (\(cols)) must be > 0") }
        try pattern.validate(cols: cols)
        // A group's bits lie within two index words (the index check reads them as one UInt64).
        guard pattern.m <= Self.chunk else {
            throw MSPError.invalidArgument("m (\(pattern.m)) must be at most \(Self.chunk) in a packed matrix")
        }
        let perRow = cols / pattern.m * pattern.n * type.byteWidth
        let words = (cols - 1) / Self.chunk + 1
        guard !rows.multipliedReportingOverflow(by: perRow).overflow,
            !rows.multipliedReportingOverflow(by: 4 * words).overflow
        else {
            throw MSPError.invalidArgument("rows (\(rows)) x cols (\(cols)) is too large for a packed matrix")
        }
        self.rows = rows
        self.cols = cols
        self.pattern = pattern
        self.type = type
    }

    /// Checks the index of `rows`: every group holds exactly `n` kept columns and no bit at or past
    /// `cols` is set. Readers run it before they follow an index into the values.
    ///
    /// Group sizes that divide 32 never straddle an index word: each word's set bits are counted
    /// per field of `m` bits, a loop in C that the compiler vectorises (Swift's took 15% of a
    /// one-token product at 2:8). Other group sizes are counted group by group.
    /// - Parameter index: the whole index (`indexBytes` bytes).
    /// - Throws: `MSPError.invalidArgument` naming the first bad row and group, in row order.
    public func checkIndex(_ index: UnsafeRawPointer, rows: Range<Int>) throws {
        guard !rows.isEmpty else { return }
        if let (full, last) = wordCounts {
            let first = (index + rows.lowerBound * indexStride).assumingMemoryBound(to: UInt8.self)
            let bad = mspk_index_first_bad_row(first, Int64(rows.count), Int64(chunks), Int32(pattern.m), full, last)
            if bad >= 0 { throw indexError(row: rows.lowerBound + Int(bad), index: index) }
        } else {
            for r in rows where firstBadGroup(index + r * indexStride) != nil || !paddingIsClear(index + r * indexStride) {
                throw indexError(row: r, index: index)
            }
        }
    }

    /// Checks the index of every row, rows split across threads (the first bad row in row order is
    /// reported, whatever the thread count).
    /// - Throws: as `checkIndex(_:rows:)`.
    public func checkIndex(_ index: UnsafeRawPointer) throws {
        _ = try Threads.map(rows, minimumPerThread: max(1, 65536 / cols)) { try checkIndex(index, rows: $0) }
    }

    /// For a group size that divides 32: the set bits every index word must count per field of `m`
    /// bits (`n` in each field), and those of a row's last word (`n` in the fields below `cols`, 0
    /// above). `nil` for other group sizes, whose groups straddle words.
    public var wordCounts: (full: UInt32, last: UInt32)? {
        let m = pattern.m
        guard Self.chunk % m == 0 else { return nil }
        let ones = m == Self.chunk ? UInt32(1) : UInt32.max / (UInt32.max >> (32 - m))
        let full = ones &* UInt32(pattern.n)
        let tail = cols - (chunks - 1) * Self.chunk
        return (full, tail == Self.chunk ? full : full & (UInt32(1) << tail - 1))
    }

    /// Word `w` of a row's index.
    @inline(__always)
    func word(_ row: UnsafeRawPointer, _ w: Int) -> UInt32 {
        UInt32(littleEndian: row.loadUnaligned(fromByteOffset: 4 &* w, as: UInt32.self))
    }

    /// The set bits of group `g` of a row's index.
    private func groupBits(_ row: UnsafeRawPointer, _ g: Int) -> UInt64 {
        let bit = g &* pattern.m, w = bit >> 5
        let low = UInt64(word(row, w)), high = w &+ 1 < chunks ? UInt64(word(row, w &+ 1)) : 0
        return (high << 32 | low) >> UInt64(bit & 31) & (UInt64(1) << UInt64(pattern.m) &- 1)
    }

    /// The first group of a row that does not hold exactly `n` kept columns, and its count.
    private func firstBadGroup(_ row: UnsafeRawPointer) -> (group: Int, count: Int)? {
        for g in 0..<(cols / pattern.m) {
            let count = groupBits(row, g).nonzeroBitCount
            if count != pattern.n { return (g, count) }
        }
        return nil
    }

    /// Whether no bit at or past `cols` is set in a row's index.
    private func paddingIsClear(_ row: UnsafeRawPointer) -> Bool {
        let tail = cols &- (chunks &- 1) &* Self.chunk
        return tail == Self.chunk || word(row, chunks &- 1) >> tail == 0
    }

    /// The error for a row of `index` that failed the check.
    private func indexError(row r: Int, index: UnsafeRawPointer) -> MSPError {
        let row = index + r * indexStride
        if let (g, count) = firstBadGroup(row) {
            return .invalidArgument(
                "index row \(r): group \(g) (columns \(g * pattern.m)..<\((g + 1) * pattern.m)) marks \(count) "
                    + "kept columns, not n = \(pattern.n)")
        }
        let tail = cols - (chunks - 1) * Self.chunk
        let extra = (word(row, chunks - 1) >> tail).trailingZeroBitCount + (chunks - 1) * Self.chunk + tail
        return .invalidArgument("index row \(r) marks column \(extra), past cols (\(cols))")
    }
}
