// ElementType: the element types of weight, score and gradient buffers, and their exact widening.

/// The element type of a raw buffer.
public enum ElementType: Int32, Sendable, CaseIterable {
    /// IEEE binary32.
    case f32 = 0
    /// IEEE binary16.
    case f16 = 1
    /// bfloat16: the upper half of a binary32.
    case bf16 = 2

    /// Bytes per element.
    public var byteWidth: Int { self == .f32 ? 4 : 2 }
}

/// A storage format whose values widen exactly to `Float`. Kernels are generic over it and
/// specialised per element type.
protocol Element {
    /// The stored bit pattern.
    associatedtype Bits: FixedWidthInteger & UnsignedInteger
    /// The exact `Float` value of a bit pattern.
    static func widen(_ bits: Bits) -> Float
    /// The bits of the largest finite-or-infinite magnitude: patterns whose magnitude bits
    /// (`bits & ~sign`) exceed it are NaN.
    static var infinity: Bits { get }
    /// The sign bit.
    static var sign: Bits { get }
}

/// binary32 storage.
enum F32: Element {
    @inline(__always) static func widen(_ bits: UInt32) -> Float { Float(bitPattern: bits) }
    static var infinity: UInt32 { 0x7F80_0000 }
    static var sign: UInt32 { 0x8000_0000 }
}

/// binary16 storage.
enum F16: Element {
    @inline(__always) static func widen(_ bits: UInt16) -> Float { Float(Float16(bitPattern: bits)) }
    static var infinity: UInt16 { 0x7C00 }
    static var sign: UInt16 { 0x8000 }
}

/// bfloat16 storage.
enum BF16: Element {
    @inline(__always) static func widen(_ bits: UInt16) -> Float { Float(bitPattern: UInt32(bits) << 16) }
    static var infinity: UInt16 { 0x7F80 }
    static var sign: UInt16 { 0x8000 }
}
