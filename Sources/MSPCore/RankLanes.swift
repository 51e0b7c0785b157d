// RankLanes: the SIMD lanes the N:M kernel ranks order keys in, 16 or 32 bits wide.

/// A 32-lane integer vector type for order keys, and the N:M rank loop's steps on it.
///
/// Conformers state two primitives through the standard library's concrete SIMD32 operators:
/// generic `SIMD` code reaches only lane-by-lane fallbacks, which do not vectorise.
protocol RankLanes {
    /// The key type: `Int16` for 16-bit magnitudes and values, `Int32` for f32 and scaled scores.
    associatedtype Key: FixedWidthInteger & SignedInteger & SIMDScalar
    /// 32 keys.
    typealias Lanes = SIMD32<Key>

    /// All ones in each lane where `a > b`, else zero.
    static func greater(_ a: Lanes, _ b: Lanes) -> Lanes
    /// `a + b * c`, wrapping.
    static func multiplyAdd(_ a: Lanes, _ b: Lanes, _ c: Lanes) -> Lanes
}

extension RankLanes {
    /// `rank` minus one in each lane whose partner beats its key: the partner lies `ahead` (a
    /// greater key beats) in lanes whose `position` is below `limit`, else `behind` (at a lower
    /// index: an equal key beats too, so it is compared plus one).
    @inline(__always)
    static func step(_ rank: Lanes, key: Lanes, ahead: Lanes, behind: Lanes, position: Lanes, limit: Lanes) -> Lanes {
        let one = Lanes(repeating: 1)
        let behind1 = multiplyAdd(behind, one, one)
        // A multiple of -1 or 0: with constant lane positions the compiler can emit a blend.
        let front = greater(limit, position)
        let other = multiplyAdd(behind1, multiplyAdd(behind1, ahead, Lanes(repeating: -1)), front)
        return multiplyAdd(rank, greater(other, key), one)
    }

    /// All ones in each lane whose `rank` (a negated count) is above `minusN`, else zero.
    @inline(__always) static func kept(_ rank: Lanes, minusN: Lanes) -> Lanes { greater(rank, minusN) }
}

/// 16-bit keys.
enum Lanes16: RankLanes {
    typealias V = SIMD32<Int16>
    @inline(__always) static func greater(_ a: V, _ b: V) -> V { unsafeBitCast(a .> b, to: V.self) }
    @inline(__always) static func multiplyAdd(_ a: V, _ b: V, _ c: V) -> V { a &+ b &* c }
}

/// 32-bit keys.
enum Lanes32: RankLanes {
    typealias V = SIMD32<Int32>
    @inline(__always) static func greater(_ a: V, _ b: V) -> V { unsafeBitCast(a .> b, to: V.self) }
    @inline(__always) static func multiplyAdd(_ a: V, _ b: V, _ c: V) -> V { a &+ b &* c }
}
