// MaskReference: the stable-sort reference the masking kernels must equal, and test matrices.

import MSPCore

/// Keep flags of one comparison group by the reference rule: order by score descending, then by
/// index ascending (a stable sort), keep the first `keep`.
func referenceKeep(_ scores: [Float], keep: Int) -> [Bool] {
    let order = scores.indices.sorted { a, b in
        scores[a] != scores[b] ? scores[a] > scores[b] : a < b
    }
    var flags = [Bool](repeating: false, count: scores.count)
    for i in order.prefix(keep) { flags[i] = true }
    return flags
}

/// A row-major matrix stored in one of the three element types, with the exact float value of
/// every element.
struct TestMatrix {
    let rows: Int, cols: Int, type: ElementType
    var bits: [UInt32]

    /// Stores `values` (already representable in `type`, or rounded to it).
    init(rows: Int, cols: Int, type: ElementType, values: [Float]) {
        self.rows = rows
        self.cols = cols
        self.type = type
        bits = values.map { v in
            switch type {
            case .f32: return v.bitPattern
            case .f16: return UInt32(Float16(v).bitPattern)
            case .bf16: return v.bitPattern >> 16  // truncation keeps exactly representable values
            }
        }
    }

    var matrix: Matrix { Matrix(rows: rows, cols: cols, type: type) }

    /// The exact float value of element i.
    func value(_ i: Int) -> Float {
        switch type {
        case .f32: return Float(bitPattern: bits[i])
        case .f16: return Float(Float16(bitPattern: UInt16(bits[i])))
        case .bf16: return Float(bitPattern: bits[i] << 16)
        }
    }

    /// Runs `body` on a packed copy of the elements and its shape, and reads the result back.
    mutating func withBuffer<R>(_ body: (UnsafeMutableRawPointer, Matrix) throws -> R) rethrows -> R {
        let shape = matrix
        switch type {
        case .f32:
            return try bits.withUnsafeMutableBytes { try body($0.baseAddress!, shape) }
        case .f16, .bf16:
            var packed = bits.map { UInt16(truncatingIfNeeded: $0) }
            defer { bits = packed.map { UInt32($0) } }
            return try packed.withUnsafeMutableBytes { try body($0.baseAddress!, shape) }
        }
    }
}

/// Values that stress the ordering: ties, signed zeros, infinities, subnormals and small integers.
func hardValues(_ count: Int, type: ElementType, seed: UInt64) -> [Float] {
    var rng = SplitMix64(seed: seed)
    let tiny: Float
    switch type {
    case .f32: tiny = .leastNonzeroMagnitude
    case .f16: tiny = Float(Float16.leastNonzeroMagnitude)
    case .bf16: tiny = Float(bitPattern: 0x0001_0000)
    }
    let specials: [Float] = [0, -0.0, .infinity, -.infinity, tiny, -tiny, 2 * tiny, 1, -1, 2, 3]
    return (0..<count).map { _ in
        switch rng.next() % 4 {
        case 0: return specials[Int(rng.next() % UInt64(specials.count))]
        case 1: return Float(Int(rng.next() % 7) - 3)
        default: return Float.random(in: -4...4, using: &rng)
        }
    }
}
