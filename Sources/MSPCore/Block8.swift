// Block8: an 8 x 8 block of float32 values in eight vectors, transposed in registers.

/// Eight rows of eight float32 values. `transpose()` turns rows into columns by three rounds of
/// even/odd lane interleaving (concrete shuffles of the standard library's SIMD8; measured 48
/// shuffle instructions for the block with AVX2), so that the copies between a row-major matrix
/// and its transpose read and write whole vectors.
struct Block8 {
    typealias Row = SIMD8<Float>
    var r0, r1, r2, r3, r4, r5, r6, r7: Row

    /// The block whose row i is `row(i)`.
    @inline(__always) init(_ row: (Int) -> Row) {
        (r0, r1, r2, r3) = (row(0), row(1), row(2), row(3))
        (r4, r5, r6, r7) = (row(4), row(5), row(6), row(7))
    }

    /// Row i (0..<8).
    @inline(__always) subscript(i: Int) -> Row {
        switch i {
        case 0: r0
        case 1: r1
        case 2: r2
        case 3: r3
        case 4: r4
        case 5: r5
        case 6: r6
        default: r7
        }
    }

    /// Transposes the block: row i becomes the vector of every row's lane i.
    @inline(__always) mutating func transpose() {
        @inline(__always) func interleave(_ a: Row, _ b: Row) -> (Row, Row) {
            (Row(lowHalf: a.evenHalf, highHalf: b.evenHalf), Row(lowHalf: a.oddHalf, highHalf: b.oddHalf))
        }
        // A round moves the element at row i, lane j to row (i >> 1) + 4 (j & 1), lane (j >> 1) + 4 (i & 1):
        // it rotates the six bits (i2 i1 i0 j2 j1 j0) of its position right by one, so three rounds
        // swap the row and lane bits.
        for _ in 0..<3 {
            let (b0, b4) = interleave(r0, r1), (b1, b5) = interleave(r2, r3)
            let (b2, b6) = interleave(r4, r5), (b3, b7) = interleave(r6, r7)
            (r0, r1, r2, r3, r4, r5, r6, r7) = (b0, b1, b2, b3, b4, b5, b6, b7)
        }
    }
}
