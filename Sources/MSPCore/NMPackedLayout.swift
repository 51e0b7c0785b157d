// NMPackedLayout: the compressed N:M format of one weight matrix, its sizes, and the check of a
// packed index that every reader runs before it trusts the index.

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
    /// - Parameter index: the whole index (`indexBytes` bytes).
    /// - Throws: `MSPError.invalidArgument` naming the first bad row and group, in row order.
    public func checkIndex(_ index: UnsafeRawPointer, rows: Range<Int>) throws {
        for r in rows {
            let row = index + r &* indexStride
            let good: Bool
            switch pattern.m {
            // Literal group sizes make the per-word count a few constant shifts and masks.
            case 2: good = wordsHoldGroups(row, m: 2)
            case 4: good = wordsHoldGroups(row, m: 4)
            case 8: good = wordsHoldGroups(row, m: 8)
            case 16: good = wordsHoldGroups(row, m: 16)
            case 32: good = wordsHoldGroups(row, m: 32)
            default: good = firstBadGroup(row) == nil && paddingIsClear(row)
            }
            if !good { throw indexError(row: r, index: row) }
        }
    }

    /// Word `w` of a row's index.
    @inline(__always)
    func word(_ row: UnsafeRawPointer, _ w: Int) -> UInt32 {
        UInt32(littleEndian: row.loadUnaligned(fromByteOffset: 4 &* w, as: UInt32.self))
    }

    /// Whether a row's index is right for a group size `m` that divides 32: each word's set bits
    /// counted per field of `m` bits (groups never straddle words) must be `n` in every field below
    /// `cols` and 0 above.
    @inline(__always)
    private func wordsHoldGroups(_ row: UnsafeRawPointer, m: Int) -> Bool {
        let ones = m == 32 ? UInt32(1) : UInt32.max / (UInt32.max >> (32 &- m))
        let full = ones &* UInt32(truncatingIfNeeded: pattern.n)
        var bad: UInt32 = 0
        let last = chunks &- 1
        for w in 0..<last { bad |= Self.groupCounts(word(row, w), m: m) ^ full }
        let tail = cols &- last &* Self.chunk
        let expected = tail == Self.chunk ? full : full & (UInt32(1) << tail &- 1)
        bad |= Self.groupCounts(word(row, last), m: m) ^ expected
        return bad == 0
    }

    /// The set bits of `w` counted per field of `m` bits (m = 2, 4, 8, 16 or 32), each count in its
    /// field.
    @inline(__always)
    static func groupCounts(_ w: UInt32, m: Int) -> UInt32 {
        var x = w &- (w >> 1 & 0x5555_5555)
        if m == 2 { return x }
        x = (x & 0x3333_3333) &+ (x >> 2 & 0x3333_3333)
        if m == 4 { return x }
        x = (x &+ x >> 4) & 0x0F0F_0F0F
        if m == 8 { return x }
        x = (x &+ x >> 8) & 0x00FF_00FF
        if m == 16 { return x }
        return (x &+ x >> 16) & 0x0000_FFFF
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

    /// The error for a row whose index failed the check.
    private func indexError(row r: Int, index row: UnsafeRawPointer) -> MSPError {
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
