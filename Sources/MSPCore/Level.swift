// Level and LevelSet: the allowed choices of sparsity for a layer.

import CMSPHeader

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

    public static func == (a: Level, b: Level) -> Bool {
        a.sparsity == b.sparsity && a.nm?.n == b.nm?.n && a.nm?.m == b.nm?.m
    }

    public func hash(into hasher: inout Hasher) {
        hasher.combine(sparsity)
        hasher.combine(nm?.n)
        hasher.combine(nm?.m)
    }
}

/// Levels ordered from least to most sparse (strictly increasing sparsity).
public struct LevelSet: Sendable, Equatable {
    /// The most levels a set holds, `MSP_MAX_LEVELS` (level indices fit in `UInt8` scratch).
    public static let maxCount = Int(MSP_MAX_LEVELS)

    /// The levels; index 0 is the least sparse.
    public let levels: [Level]

    /// Validates the order.
    /// - Throws: `MSPError.invalidArgument` for an empty set, more than `maxCount` levels, or
    ///   sparsities that do not strictly increase.
    public init(_ levels: [Level]) throws {
        guard !levels.isEmpty, levels.count <= Self.maxCount else {
            throw MSPError.invalidArgument("num_levels (\(levels.count)) must be in [1, \(Self.maxCount)]")
        }
        for k in 1..<levels.count where !(levels[k].sparsity > levels[k - 1].sparsity) {
            throw MSPError.invalidArgument(
                "levels must have strictly increasing sparsity: level \(k) (\(levels[k])) follows \(levels[k - 1])")
        }
        self.levels = levels
    }

    /// Number of levels.
    public var count: Int { levels.count }

    /// Sparsity of level `k`.
    @inline(__always) public func sparsity(_ k: Int) -> Double { levels[k].sparsity }
}
