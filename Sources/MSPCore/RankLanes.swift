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

    /// Distance `d` of the ranking of `key` in groups of `m` dividing 32, both known at compile
    /// time (lane moves become constant shuffles). Adds to `beaten` the beats of each lane by its
    /// partner at distance d, member (p + d) mod m of member p's group, all ones per beat. Where
    /// that partner wrapped around it lies at a lower index, so an equal key beats too: its key is
    /// taken from `next`, the keys plus one (keys must stay below `Key.max`). Beating is a strict
    /// order, so member p is beaten by its partner at distance m - d exactly when p does not beat
    /// that partner at distance d: for d < m / 2 those beats, moved to the lanes of the beating
    /// members, are added to `wins` (all ones per win of p at distance m - d). `d` above m / 2
    /// changes nothing. No subtraction of masks: the compiler would turn it into a shift and an add.
    @inline(__always)
    static func rotationStep(beaten: inout Lanes, wins: inout Lanes, key: Lanes, next: Lanes, m: Int, d: Int) {
        guard 2 &* d <= m else { return }
        let one = Lanes(repeating: 1)
        let beats = greater(shifted(key, next, m: m, d: d), key)
        beaten = multiplyAdd(beaten, beats, one)
        guard 2 &* d < m else { return }
        wins = multiplyAdd(wins, shifted(beats, beats, m: m, d: m &- d), one)
    }

    /// Each lane p of a group of `m` replaced by lane p + d of `a` in the same group or, past the
    /// group's end, by lane p + d - m of `b` (a rotation when `a` is `b`), for `m` and `d` known
    /// at compile time: one two-source shuffle.
    @inline(__always)
    static func shifted(_ a: Lanes, _ b: Lanes, m: Int, d: Int) -> Lanes {
        @inline(__always) func at(_ i: Int) -> Key { i % m &+ d < m ? a[i &+ d] : b[i &+ d &- m] }
        return Lanes(
            at(0), at(1), at(2), at(3), at(4), at(5), at(6), at(7), at(8), at(9), at(10), at(11), at(12),
            at(13), at(14), at(15), at(16), at(17), at(18), at(19), at(20), at(21), at(22), at(23), at(24),
            at(25), at(26), at(27), at(28), at(29), at(30), at(31))
    }
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
