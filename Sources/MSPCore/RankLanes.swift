// RankLanes: the SIMD lanes the N:M kernel ranks order keys in, 16 or 32 bits wide.

/// A 32-lane integer vector type for order keys, and the N:M rank loop's steps on it.
///
/// Conformers state three primitives through the standard library's concrete SIMD32 operators:
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
    /// `a & b`, through the mask type: its `.&` is concrete, the vector's `&` is lane by lane.
    static func and(_ a: Lanes, _ b: Lanes) -> Lanes
}

extension RankLanes {
    /// `rank` minus one in each lane whose partner beats its key: the partner lies `ahead` (a
    /// greater key beats) in lanes whose `position` is below `limit`, else `behind` (at a lower
    /// index: an equal key beats too, so it is compared plus one).
    @inline(__always)
    static func step(_ rank: Lanes, key: Lanes, ahead: Lanes, behind: Lanes, position: Lanes, limit: Lanes) -> Lanes {
        let one = Lanes(repeating: 1)
        let behind1 = multiplyAdd(behind, one, one)
        let difference = multiplyAdd(ahead, behind1, Lanes(repeating: -1))
        // `front` is all ones or zero per lane; with constant positions this becomes a blend.
        let front = greater(limit, position)
        let other = multiplyAdd(behind1, and(difference, front), one)
        return multiplyAdd(rank, greater(other, key), one)
    }

    /// All ones in each lane whose `rank` (a negated count) is above `minusN`, else zero.
    @inline(__always) static func kept(_ rank: Lanes, minusN: Lanes) -> Lanes { greater(rank, minusN) }
}

/// 16-bit keys.
enum Lanes16: RankLanes {
    @inline(__always) static func greater(_ a: SIMD32<Int16>, _ b: SIMD32<Int16>) -> SIMD32<Int16> { unsafeBitCast(a .> b, to: SIMD32<Int16>.self) }
    @inline(__always) static func multiplyAdd(_ a: SIMD32<Int16>, _ b: SIMD32<Int16>, _ c: SIMD32<Int16>) -> SIMD32<Int16> { a &+ b &* c }
    @inline(__always) static func and(_ a: SIMD32<Int16>, _ b: SIMD32<Int16>) -> SIMD32<Int16> {
        unsafeBitCast(unsafeBitCast(a, to: SIMDMask<SIMD32<Int16>>.self) .& unsafeBitCast(b, to: SIMDMask<SIMD32<Int16>>.self), to: SIMD32<Int16>.self)
    }
}

/// 32-bit keys.
enum Lanes32: RankLanes {
    @inline(__always) static func greater(_ a: SIMD32<Int32>, _ b: SIMD32<Int32>) -> SIMD32<Int32> { unsafeBitCast(a .> b, to: SIMD32<Int32>.self) }
    @inline(__always) static func multiplyAdd(_ a: SIMD32<Int32>, _ b: SIMD32<Int32>, _ c: SIMD32<Int32>) -> SIMD32<Int32> { a &+ b &* c }
    @inline(__always) static func and(_ a: SIMD32<Int32>, _ b: SIMD32<Int32>) -> SIMD32<Int32> {
        unsafeBitCast(unsafeBitCast(a, to: SIMDMask<SIMD32<Int32>>.self) .& unsafeBitCast(b, to: SIMDMask<SIMD32<Int32>>.self), to: SIMD32<Int32>.self)
    }
}
