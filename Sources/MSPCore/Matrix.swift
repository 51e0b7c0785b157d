// Matrix: the shape and element type of a row-major matrix in caller memory.

/// A row-major matrix of `rows` x `cols` elements in caller memory.
public struct Matrix: Sendable {
    /// Number of rows (> 0).
    public let rows: Int
    /// Number of columns (> 0).
    public let cols: Int
    /// Element type.
    public let type: ElementType

    /// Describes a matrix; the caller guarantees `rows * cols` does not overflow.
    public init(rows: Int, cols: Int, type: ElementType) {
        self.rows = rows
        self.cols = cols
        self.type = type
    }

    /// `rows * cols`.
    public var count: Int { rows * cols }
}
