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

    /// `rank` minus the beats of partners at distances `d` and `m - d` in each lane's group of
    /// `m`, for `m` dividing 32 and known at compile time (lane moves become constant shuffles).
    ///
    /// The partner at distance d of member p is member (p + d) mod m; where that wrapped around,
    /// it lies at a lower index and is compared plus one, so an equal key beats too (keys must
    /// stay below `Key.max`). Beating is a strict order, so member p is beaten by its partner at
    /// distance m - d exactly when p does not beat that partner at distance d: the second count
    /// is the first one's complement, rotated. `d` must be at most m / 2 (larger ones leave
    /// `rank` as it is); below m / 2 the complement of all-ones beats is taken as one minus
    /// them, and the caller counts the ones: it starts `rank` at -((m - 1) / 2), one per d.
    @inline(__always)
    static func rotationStep(_ rank: Lanes, key: Lanes, m: Int, d: Int) -> Lanes {
        guard 2 &* d <= m else { return rank }
        @inline(__always) func wrapped(_ i: Int) -> Key { Key(truncatingIfNeeded: (i % m &+ d) / m) }
        let plus = Lanes(
            wrapped(0), wrapped(1), wrapped(2), wrapped(3), wrapped(4), wrapped(5), wrapped(6), wrapped(7),
            wrapped(8), wrapped(9), wrapped(10), wrapped(11), wrapped(12), wrapped(13), wrapped(14),
            wrapped(15), wrapped(16), wrapped(17), wrapped(18), wrapped(19), wrapped(20), wrapped(21),
            wrapped(22), wrapped(23), wrapped(24), wrapped(25), wrapped(26), wrapped(27), wrapped(28),
            wrapped(29), wrapped(30), wrapped(31))
        let one = Lanes(repeating: 1)
        let beaten = greater(multiplyAdd(rotated(key, m: m, d: d), plus, one), key)
        let rank = multiplyAdd(rank, beaten, one)
        guard 2 &* d < m else { return rank }
        return multiplyAdd(rank, rotated(beaten, m: m, d: m &- d), Lanes(repeating: -1))
    }

    /// `v` with each lane p of a group of `m` replaced by lane (p + d) mod m of the same group,
    /// for `m` and `d` known at compile time.
    @inline(__always)
    static func rotated(_ v: Lanes, m: Int, d: Int) -> Lanes {
        @inline(__always) func at(_ i: Int) -> Key { v[i &- i % m &+ (i % m &+ d) % m] }
        return Lanes(
            at(0), at(1), at(2), at(3), at(4), at(5), at(6), at(7), at(8), at(9), at(10), at(11), at(12),
            at(13), at(14), at(15), at(16), at(17), at(18), at(19), at(20), at(21), at(22), at(23), at(24),
            at(25), at(26), at(27), at(28), at(29), at(30), at(31))
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
