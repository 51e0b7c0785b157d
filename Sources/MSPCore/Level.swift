// Level: one allowed choice of sparsity for a layer (an N:M pattern or an unstructured sparsity).

/// One allowed choice for a layer: an N:M pattern (n == m is dense) or an unstructured sparsity.
public struct Level: Hashable, Sendable, CustomStringConvertible {
    /// Fraction of weights pruned, in [0, 1).
    public let sparsity: Double
    /// The N:M pattern (`n` kept of `m`), or `nil` for an unstructured level.
    public let nm: (n: Int, m: Int)?

    /// An unstructured level.
    /// - Throws: `MSPError.invalidArgument` unless `sparsity` is in [0, 1).
    public init(sparsity: Double) throws {
        guard sparsity >= 0, sparsity < 1 else {
            throw MSPError.invalidArgument("level sparsity (\(sparsity)) must be in [0, 1)")
        }
        self.sparsity = sparsity
        nm = nil
    }

    /// An N:M level keeping `n` of every `m`; `n == m` is dense.
    /// - Throws: `MSPError.invalidArgument` unless 0 < n <= m <= `NMPattern.maxM`.
    public init(n: Int, m: Int) throws {
        guard m >= 1, m <= NMPattern.maxM, n > 0, n <= m else {
            throw MSPError.invalidArgument("level \(n):\(m) must have 0 < n <= m <= \(NMPattern.maxM)")
        }
        sparsity = 1 - Double(n) / Double(m)
        nm = (n, m)
    }

    /// The pruning pattern of an N:M level that prunes something (nil when dense or unstructured).
    public var pattern: NMPattern? {
        guard let nm, nm.n < nm.m else { return nil }
        return try? NMPattern(n: nm.n, m: nm.m)
    }

    /// "n:m" or the sparsity as a percentage.
    public var description: String {
        if let nm { return "\(nm.n):\(nm.m)" }
        return "\(sparsity * 100)%"
    }

    /// Equal sparsity and equal pattern (both unstructured, or the same n and m).
    public static func == (a: Level, b: Level) -> Bool {
        a.sparsity == b.sparsity && a.nm?.n == b.nm?.n && a.nm?.m == b.nm?.m
    }

    /// Hashes the sparsity and the pattern, consistently with `==`.
    public func hash(into hasher: inout Hasher) {
        hasher.combine(sparsity)
        hasher.combine(nm?.n)
        hasher.combine(nm?.m)
    }
}
