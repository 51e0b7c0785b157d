// LevelSet: the allowed choices for a layer, from least to most sparse.

import CMSPHeader

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
