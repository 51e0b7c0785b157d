// Scores: how masking kernels score an element, the order-preserving score keys, and the NaN
// check that runs before any output is written.

/// How masking kernels score element (r, c) of a matrix.
public enum ScoreRule: @unchecked Sendable {
    /// The element itself is the score (explicit scores).
    case value
    /// |w[r][c]|, times `colScale[c]` when given (Wanda's input-feature norms).
    case magnitude(colScale: UnsafeBufferPointer<Float>?)
}

/// The score function specialised for one storage format.
struct Scorer<E: Element> {
    let absolute: Bool
    let scale: UnsafePointer<Float>?

    init(_ rule: ScoreRule) {
        switch rule {
        case .value:
            absolute = false
            scale = nil
        case .magnitude(let colScale):
            absolute = true
            scale = colScale?.baseAddress
        }
    }

    /// Whether any of `count` consecutive elements from column `firstCol` on scores NaN: a NaN
    /// element, or an infinite one in a column scaled by zero.
    ///
    /// A maximum of magnitude bits (NaN patterns are the largest) rather than a test per element:
    /// the compiler turns a per-element test into an early-exit search, which does not vectorise.
    /// Only a run that holds an infinity looks at the scale.
    @inline(__always)
    func anyNaN(_ src: UnsafePointer<E.Bits>, count: Int, firstCol: Int) -> Bool {
        var largest: E.Bits = 0
        // Runs of 512 bytes, each hinting the lines a prefetch distance ahead.
        let run = 512 / MemoryLayout<E.Bits>.stride
        for first in Swift.stride(from: 0, to: count, by: run) {
            Prefetch.lines(src + first, offset: Prefetch.distance, bytes: 512)
            for i in first..<min(count, first &+ run) { largest = max(largest, src[i] & ~E.sign) }
        }
        guard largest == E.infinity, let scale else { return largest > E.infinity }
        return (0..<count).contains { src[$0] & ~E.sign == E.infinity && scale[firstCol &+ $0] == 0 }
    }

    /// The float32 score of an element stored as `bits` in column `c`.
    @inline(__always) func callAsFunction(_ bits: E.Bits, _ c: Int) -> Float {
        let v = E.widen(bits)
        guard absolute else { return v }
        guard let scale else { return abs(v) }
        return abs(v) * scale[c]
    }
}

/// An order-preserving unsigned key of a non-NaN score: `a < b` exactly when `key(a) < key(b)`,
/// and -0 and +0 share one key.
@inline(__always) func scoreKey(_ s: Float) -> UInt32 {
    let bits = (s + 0).bitPattern
    return bits & 0x8000_0000 != 0 ? ~bits : bits | 0x8000_0000
}

/// Checks that a `colScale` argument holds finite non-negative values.
/// - Throws: `MSPError.invalidArgument` naming the first bad entry.
func validateColScale(_ colScale: UnsafeBufferPointer<Float>?) throws {
    guard let colScale else { return }
    for (c, v) in colScale.enumerated() where !(v.isFinite && v >= 0) {
        throw MSPError.invalidArgument("col_scale[\(c)] (\(v)) must be finite and >= 0")
    }
}

/// Checks that no element of `matrix` scores NaN under `rule`, before any kernel writes output.
/// - Parameter name: the argument's name in messages.
/// - Throws: `MSPError.invalidArgument` naming the first offending row and column in row-major order.
func validateScores(
    _ data: UnsafeRawPointer, _ matrix: Matrix, _ rule: ScoreRule, name: String
) throws {
    switch matrix.type {
    case .f32: try validateScores(data, matrix, Scorer<F32>(rule), name: name)
    case .f16: try validateScores(data, matrix, Scorer<F16>(rule), name: name)
    case .bf16: try validateScores(data, matrix, Scorer<BF16>(rule), name: name)
    }
}

/// `validateScores(_:_:_:name:)` for a scorer of matrix's element type.
func validateScores<E: Element>(
    _ data: UnsafeRawPointer, _ matrix: Matrix, _ score: Scorer<E>, name: String
) throws {
    let cols = matrix.cols
    let base = data.assumingMemoryBound(to: E.Bits.self)
    let firstBad = try Threads.map(matrix.rows, minimumPerThread: max(1, 65536 / cols)) { rows in
        for r in rows {
            let row = base + r &* cols
            if score.anyNaN(row, count: cols, firstCol: 0) { return (0..<cols).first { score(row[$0], $0).isNaN }.map { (r, $0) } }
        }
        return nil
    }.lazy.compactMap { $0 }.first
    guard let (r, c) = firstBad else { return }
    let value = E.widen(base[r * cols + c])
    if value.isNaN {
        throw MSPError.invalidArgument("\(name)[\(r)][\(c)] is NaN")
    }
    throw MSPError.invalidArgument(
        "score of \(name)[\(r)][\(c)] is NaN (weight \(value) times col_scale[\(c)] = 0)")
}
