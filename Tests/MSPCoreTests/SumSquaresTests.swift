// SumSquaresTests: sums of squares against exact and compensated references written here, exact
// widening of every 16-bit pattern, thread-count independence and non-finite input.

import MSPCore
import Testing

/// A gradient buffer of one element type held as bit patterns, with its exact values.
struct GradientBuffer {
    let type: ElementType
    /// One pattern per element (the low 16 bits for 16-bit types).
    var bits: [UInt32]

    init(type: ElementType, bits: [UInt32]) {
        self.type = type
        self.bits = bits
    }

    /// Small integers, exactly representable in every type (|v| <= 256).
    init(type: ElementType, integers: [Int]) {
        self.type = type
        bits = integers.map { v in
            let f = Float(v)
            switch type {
            case .f32: return f.bitPattern
            case .f16: return UInt32(Float16(f).bitPattern)
            case .bf16: return f.bitPattern >> 16
            }
        }
    }

    /// `count` random finite patterns with binary exponents spread over about ±`spread` (and
    /// subnormals for f16), so squares span many orders of magnitude.
    static func random(type: ElementType, count: Int, seed: UInt64, spread: Int = 30) -> GradientBuffer {
        var rng = SplitMix64(seed: seed)
        let bits = (0..<count).map { _ -> UInt32 in
            let r = rng.next()
            let sign = UInt32(r & 1)
            switch type {
            case .f32:
                let e = UInt32(127 - spread + Int((r >> 1) % UInt64(2 * spread + 1)))
                return sign << 31 | e << 23 | UInt32((r >> 16) & 0x7F_FFFF)
            case .f16:
                let e = UInt32((r >> 1) % 31)  // 0 (subnormal) ... 30
                return sign << 15 | e << 10 | UInt32((r >> 16) & 0x3FF)
            case .bf16:
                let e = UInt32(127 - spread + Int((r >> 1) % UInt64(2 * spread + 1)))
                return sign << 15 | e << 7 | UInt32((r >> 16) & 0x7F)
            }
        }
        return GradientBuffer(type: type, bits: bits)
    }

    var count: Int { bits.count }

    /// The exact value of a bit pattern of `type`, decoded by hand (independently of the library's
    /// widening), or nil for inf and NaN.
    static func decodeExactly(_ bits: UInt32, _ type: ElementType) -> Double? {
        let (exponentBits, fractionBits): (UInt32, UInt32) =
            switch type {
            case .f32: (8, 23)
            case .f16: (5, 10)
            case .bf16: (8, 7)
            }
        let fraction = bits & ((1 << fractionBits) - 1)
        let exponent = (bits >> fractionBits) & ((1 << exponentBits) - 1)
        let negative = (bits >> (fractionBits + exponentBits)) & 1 == 1
        let bias = Int(1 << (exponentBits - 1)) - 1
        guard exponent != (1 << exponentBits) - 1 else { return nil }
        // value = significand * 2^(e - bias - fractionBits), subnormals with e = 1 and no implicit bit.
        let significand = exponent == 0 ? fraction : fraction | (1 << fractionBits)
        let scale = max(Int(exponent), 1) - bias - Int(fractionBits)
        let magnitude = Double(sign: .plus, exponent: scale, significand: Double(significand))
        return negative ? -magnitude : magnitude
    }

    /// |a - b| / |b| (0 when both are 0).
    static func relativeError(_ a: Double, _ b: Double) -> Double {
        a == b ? 0 : abs(a - b) / abs(b)
    }

    /// The exact value of element i (nil when it is not finite).
    func value(_ i: Int) -> Double? { Self.decodeExactly(bits[i], type) }

    /// Runs `body` on the packed elements.
    func withBytes<R>(_ body: (UnsafeRawPointer) throws -> R) rethrows -> R {
        switch type {
        case .f32:
            return try bits.withUnsafeBytes { try body($0.baseAddress!) }
        case .f16, .bf16:
            let packed = bits.map { UInt16(truncatingIfNeeded: $0) }
            return try packed.withUnsafeBytes { try body($0.baseAddress!) }
        }
    }

    /// Σ value² by a plain loop with Neumaier compensation (squares are exact in double).
    func referenceSumOfSquares(_ range: Range<Int>? = nil) -> Double {
        var sum = 0.0, compensation = 0.0
        for i in range ?? 0..<count {
            let v = value(i)!
            let x = v * v
            let t = sum + x
            compensation += abs(sum) >= abs(x) ? (sum - t) + x : (x - t) + sum
            sum = t
        }
        return sum + compensation
    }
}

@Suite("Sums of squares are exact to a few ulps and independent of threads")
struct SumSquaresTests {
    /// Lengths around the lane (16), run (16 x 16 = 256) and block (4096) boundaries.
    static let counts = [1, 2, 7, 8, 9, 15, 16, 17, 127, 128, 129, 255, 256, 257, 4095, 4096, 4097, 3 * 4096 + 5, 40_000]

    func sum(_ buffer: GradientBuffer, count: Int? = nil) throws -> Double {
        try buffer.withBytes { try SumSquares.sum($0, type: buffer.type, count: count ?? buffer.count) }
    }

    @Test(arguments: ElementType.allCases, counts)
    func integerValuedSumsAreExact(type: ElementType, count: Int) throws {
        let values = (0..<count).map { ($0 * 7919 + 13) % 61 - 30 }
        let exact = values.reduce(0) { $0 + $1 * $1 }
        #expect(try sum(GradientBuffer(type: type, integers: values)) == Double(exact))
    }

    @Test(arguments: [1, 100, 4097, 20_000])
    func largeIntegersAgainstAnExactIntegerSum(count: Int) throws {
        // Integers up to 2^24 are exact in f32; their squares (< 2^48) sum exactly in Int64.
        var rng = SplitMix64(seed: UInt64(count))
        let values = (0..<count).map { _ in Int(rng.next() % (1 << 25)) - (1 << 24) }
        let exact = values.reduce(0) { $0 + $1 * $1 }
        let buffer = GradientBuffer(type: .f32, bits: values.map { Float($0).bitPattern })
        let got = try sum(buffer)
        // The exact integer, rounded once to double, up to one ulp.
        #expect(abs(got - Double(exact)) <= Double(exact).ulp, "\(got) vs \(exact)")
    }

    @Test(arguments: ElementType.allCases, counts)
    func randomWideRangeAgainstCompensatedReference(type: ElementType, count: Int) throws {
        let buffer = GradientBuffer.random(type: type, count: count, seed: UInt64(count) &* 31 &+ UInt64(type.rawValue))
        let got = try sum(buffer)
        let reference = buffer.referenceSumOfSquares()
        #expect(GradientBuffer.relativeError(got, reference) <= 1e-14, "\(got) vs \(reference)")
    }

    @Test func illConditionedSumKeepsSmallTerms() throws {
        // One square of 2^60 and 100_000 squares of 1: a plain double sum in index order returns 2^60
        // and loses every 1; the compensated result keeps them.
        var values = [Float](repeating: 1, count: 100_001)
        values[5] = Float(sign: .plus, exponent: 30, significand: 1)
        let buffer = GradientBuffer(type: .f32, bits: values.map(\.bitPattern))
        let exact = 0x1p60 + 100_000.0  // the exact sum rounded once (ulp(2^60) = 256)
        let got = try sum(buffer)
        #expect(GradientBuffer.relativeError(got, exact) <= 1e-15, "\(got) vs \(exact)")
        #expect(got > 0x1p60)
    }

    @Test(arguments: [1_000, 4096 * 40 + 3, 1_500_000])
    func repeatedValueIsCorrectlyRoundedWithinTwoUlps(count: Int) throws {
        // n copies of 0.3f: the exact sum n * 0.3f^2 needs ~68 bits, and one double product rounds
        // it correctly. Rounding errors of a plain sum of equal terms pile up (5 ulps at 1.5M terms
        // for plain blocked lanes); the compensated sum stays within a couple of ulps.
        let x = Float(0.3)
        let buffer = GradientBuffer(type: .f32, bits: [UInt32](repeating: x.bitPattern, count: count))
        let exact = Double(count) * (Double(x) * Double(x))
        let got = try sum(buffer)
        #expect(abs(got - exact) <= 2 * exact.ulp, "\(got) vs \(exact): \(abs(got - exact) / exact.ulp) ulps")
    }

    @Test(arguments: [ElementType.f16, .bf16])
    func everySixteenBitPatternWidensExactly(type: ElementType) throws {
        let buffer = GradientBuffer(type: type, bits: (0...UInt32(0xFFFF)).map { $0 })
        try buffer.withBytes { base in
            for i in 0..<buffer.count {
                let element = base + 2 * i
                if let v = buffer.value(i) {
                    let got = try SumSquares.sum(element, type: type, count: 1)
                    #expect(got == v * v, "pattern 0x\(String(i, radix: 16))")
                } else {
                    #expect(throws: MSPError.self) { try SumSquares.sum(element, type: type, count: 1) }
                }
            }
        }
    }

    @Test func randomFloat32PatternsWidenExactly() throws {
        // All exponents, subnormals included; inf/NaN (exponent 255) excluded.
        var rng = SplitMix64(seed: 7)
        let bits = (0..<65_536).map { _ in UInt32(truncatingIfNeeded: rng.next()) }.filter { ($0 >> 23) & 0xFF != 0xFF }
        let buffer = GradientBuffer(type: .f32, bits: bits)
        try buffer.withBytes { base in
            for i in 0..<buffer.count {
                let got = try SumSquares.sum(base + 4 * i, type: .f32, count: 1)
                #expect(got == buffer.value(i)! * buffer.value(i)!)
            }
        }
    }

    @Test(arguments: ElementType.allCases)
    func threadCountDoesNotChangeTheBits(type: ElementType) throws {
        // Enough blocks for three threads (3 x 128 blocks of 4096) plus a ragged tail.
        let buffer = GradientBuffer.random(type: type, count: 3 * 128 * 4096 + 4099, seed: 99)
        var results: [UInt64] = []
        for threads in [1, 2, 3] {
            try Threads.set(threads)
            results.append(try sum(buffer).bitPattern)
        }
        try Threads.set(0)
        #expect(Set(results).count == 1)
        let reference = buffer.referenceSumOfSquares()
        #expect(GradientBuffer.relativeError(Double(bitPattern: results[0]), reference) <= 1e-14)
    }

    @Test(arguments: ElementType.allCases)
    func nonFiniteElementIsReportedByItsFirstIndex(type: ElementType) throws {
        let (inf, nan): (UInt32, UInt32) =
            switch type {
            case .f32: (0x7F80_0000, 0x7FC0_0000)
            case .f16: (0x7C00, 0x7E00)
            case .bf16: (0x7F80, 0x7FC0)
            }
        let negInf = type == .f32 ? inf | 0x8000_0000 : inf | 0x8000
        let count = 2 * 128 * 4096 + 17  // several blocks, and two threads when available
        for (positions, pattern) in [([0], inf), ([count - 1], nan), ([4096 * 200 + 3, 4096 * 5 + 1], negInf),
                                     ([9, 8], nan)] {
            var buffer = GradientBuffer(type: type, integers: (0..<count).map { $0 % 5 })
            for p in positions { buffer.bits[p] = pattern }
            let first = positions.min()!
            let error = #expect(throws: MSPError.self) { try sum(buffer) }
            guard case .invalidArgument(let message) = error else {
                Issue.record("expected invalidArgument, got \(String(describing: error))")
                continue
            }
            #expect(message.hasPrefix("data[\(first)] ("), "\(message)")
            #expect(message.hasSuffix("is not finite"), "\(message)")
        }
    }

    @Test func emptyBufferSumsToZero() throws {
        let buffer = GradientBuffer(type: .f32, integers: [3])
        #expect(try sum(buffer, count: 0) == 0)
    }
}
