// NMPattern: an N:M sparsity pattern (N kept of every M consecutive weights).

import CMSPHeader

/// Keep `n` of every `m` consecutive elements along a row.
public struct NMPattern: Hashable, Sendable, CustomStringConvertible {
    /// Largest supported group size, `MSP_MAX_M`.
    public static let maxM = Int(MSP_MAX_M)

    /// Elements kept per group.
    public let n: Int
    /// Group size.
    public let m: Int

    /// Validates `0 < n < m <= maxM`.
    /// - Throws: `MSPError.invalidArgument` naming the violated bound.
    public init(n: Int, m: Int) throws {
        guard m >= 2, m <= Self.maxM else {
            throw MSPError.invalidArgument("m (\(m)) must be in [2, \(Self.maxM)]")
        }
        guard n > 0 else { throw MSPError.invalidArgument("n (\(n)) must be > 0") }
        guard n < m else { throw MSPError.invalidArgument("n (\(n)) must be less than m (\(m))") }
        self.n = n
        self.m = m
    }

    /// The fraction of weights pruned, 1 - n/m.
    public var sparsity: Double { 1 - Double(n) / Double(m) }

    /// "n:m".
    public var description: String { "\(n):\(m)" }

    /// Checks that rows of `cols` elements split into whole groups.
    /// - Throws: `MSPError.invalidArgument` when `cols % m != 0`.
    public func validate(cols: Int) throws {
        guard cols % m == 0 else {
            throw MSPError.invalidArgument("cols (\(cols)) must be a multiple of m (\(m))")
        }
    }
}
