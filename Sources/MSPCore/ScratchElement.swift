// ScratchElement: the element types a float32 scratch is filled from and written back to, one
// value or eight at a time, with the rounding and overflow rules of the way back.

/// A storage format the solver's float32 scratch is filled from and written back to.
protocol ScratchElement: Element {
    /// The stored bits of `x` rounded to nearest, ties to even (finite `x` below `overflow`).
    static func narrow(_ x: Float) -> Bits
    /// The smallest float32 magnitude that does not round to a finite value.
    static var overflow: Float { get }
    /// The format's name in messages.
    static var name: String { get }
    /// The eight values at `p`, widened exactly.
    static func widen8(_ p: UnsafePointer<Bits>) -> SIMD8<Float>
    /// Stores eight values at `p`, each rounded as `narrow` does.
    static func narrow8(_ v: SIMD8<Float>, to p: UnsafeMutablePointer<Bits>)
}

extension F32: ScratchElement {
    @inline(__always) static func narrow(_ x: Float) -> UInt32 { x.bitPattern }
    static var overflow: Float { .infinity }
    static var name: String { "float32" }
    @inline(__always) static func widen8(_ p: UnsafePointer<UInt32>) -> SIMD8<Float> {
        UnsafeRawPointer(p).loadUnaligned(as: SIMD8<Float>.self)
    }
    @inline(__always) static func narrow8(_ v: SIMD8<Float>, to p: UnsafeMutablePointer<UInt32>) {
        UnsafeMutableRawPointer(p).storeBytes(of: v, as: SIMD8<Float>.self)
    }
}

extension F16: ScratchElement {
    @inline(__always) static func narrow(_ x: Float) -> UInt16 { Float16(x).bitPattern }
    /// 65520: halfway between 65504, the largest binary16, and the next step, 65536.
    static var overflow: Float { 65520 }
    static var name: String { "float16" }
    @inline(__always) static func widen8(_ p: UnsafePointer<UInt16>) -> SIMD8<Float> {
        var v = SIMD8<Float>()
        for i in 0..<8 { v[i] = widen(p[i]) }
        return v
    }
    @inline(__always) static func narrow8(_ v: SIMD8<Float>, to p: UnsafeMutablePointer<UInt16>) {
        for i in 0..<8 { p[i] = narrow(v[i]) }
    }
}

extension BF16: ScratchElement {
    @inline(__always) static func narrow(_ x: Float) -> UInt16 {
        UInt16(truncatingIfNeeded: (x.bitPattern &+ 0x7FFF &+ ((x.bitPattern >> 16) & 1)) >> 16)
    }
    /// Halfway between the largest bfloat16 (0x7F7F) and the next step: ties go to the even 0x7F80,
    /// infinity.
    static var overflow: Float { Float(bitPattern: 0x7F7F_8000) }
    static var name: String { "bfloat16" }
    @inline(__always) static func widen8(_ p: UnsafePointer<UInt16>) -> SIMD8<Float> {
        let bits = SIMD8<UInt32>(truncatingIfNeeded: UnsafeRawPointer(p).loadUnaligned(as: SIMD8<UInt16>.self))
        return unsafeBitCast(bits &<< 16, to: SIMD8<Float>.self)
    }
    @inline(__always) static func narrow8(_ v: SIMD8<Float>, to p: UnsafeMutablePointer<UInt16>) {
        let bits = unsafeBitCast(v, to: SIMD8<UInt32>.self)
        let rounded = (bits &+ 0x7FFF &+ ((bits &>> 16) & 1)) &>> 16
        UnsafeMutableRawPointer(p).storeBytes(of: SIMD8<UInt16>(truncatingIfNeeded: rounded), as: SIMD8<UInt16>.self)
    }
}
