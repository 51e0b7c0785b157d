// PackedReference: the compressed N:M format and the product with tokens written out plainly from
// their definitions (include/msp.h, mspkernels.h), for the packed tests to compare against.

import MSPCore

/// The packed form of `t` by the reference masks: scores |w| * scale[c], ties to the lower column.
/// - Returns: the kept values' bit patterns row by row, the index bytes, and the masked matrix (the
///   kept weights' bits, +0 elsewhere).
func referencePack(
    _ t: TestMatrix, n: Int, m: Int, scale: [Float]? = nil
) -> (values: [UInt32], index: [UInt8], dense: TestMatrix) {
    let chunks = (t.cols + 31) / 32
    var values: [UInt32] = [], index = [UInt8](repeating: 0, count: t.rows * 4 * chunks)
    var dense = TestMatrix(rows: t.rows, cols: t.cols, type: t.type, values: [Float](repeating: 0, count: t.rows * t.cols))
    for r in 0..<t.rows {
        for g in stride(from: 0, to: t.cols, by: m) {
            let scores = (g..<(g + m)).map { c in abs(t.value(r * t.cols + c)) * (scale?[c] ?? 1) }
            for (j, kept) in referenceKeep(scores, keep: n).enumerated() where kept {
                let c = g + j
                values.append(t.bits[r * t.cols + c])
                index[r * 4 * chunks + c / 8] |= UInt8(1) << (c % 8)
                dense.bits[r * t.cols + c] = t.bits[r * t.cols + c]
            }
        }
    }
    return (values, index, dense)
}

/// Runs `body` on a buffer holding `bits` as elements of `type` (4 or 2 bytes each), and returns
/// the bits afterwards.
func withElements<R>(
    _ bits: inout [UInt32], _ type: ElementType, _ body: (UnsafeMutableRawPointer) throws -> R
) rethrows -> R {
    var t = TestMatrix(rows: 1, cols: bits.count, type: type, values: [])
    t.bits = bits
    defer { bits = t.bits }
    return try t.withBuffer { p, _ in try body(p) }
}

/// The product of the library's definition, computed plainly: y[t][r] = Σ_c w[r][c] x[t][c] in the
/// summation order of mspkernels.h (chunks of 32 columns, two 16-lane half vectors per chunk mapped
/// even/odd for bfloat16 weights and low/high otherwise, four partial sums by chunk parity and half,
/// fused multiply-adds, then pairwise folds).
func referenceProduct(dense w: [Float], rows: Int, cols: Int, weightType: ElementType, x: [Float], batch: Int) -> [Float] {
    let chunks = (cols + 31) / 32
    var y = [Float](repeating: 0, count: batch * rows)
    for t in 0..<batch {
        for r in 0..<rows {
            var p = [[[Float]]](repeating: [[Float]](repeating: [Float](repeating: 0, count: 16), count: 2), count: 2)
            for c in 0..<chunks {
                for h in 0..<2 {
                    for j in 0..<16 {
                        let col = weightType == .bf16 ? 32 * c + 2 * j + h : 32 * c + 16 * h + j
                        let wv: Float = col < cols ? w[r * cols + col] : 0
                        let xv: Float = col < cols ? x[t * cols + col] : 0
                        p[c % 2][h][j] = p[c % 2][h][j].addingProduct(wv, xv)
                    }
                }
            }
            var s = (0..<16).map { j in (p[0][0][j] + p[0][1][j]) + (p[1][0][j] + p[1][1][j]) }
            for span in [8, 4, 2, 1] {
                for j in 0..<span { s[j] = s[j] + s[j + span] }
            }
            y[t * rows + r] = s[0]
        }
    }
    return y
}
