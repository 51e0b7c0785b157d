// Checkpoint: the byte format of a saved search (framing, little-endian values, checksum) and a
// reader that refuses anything it cannot trust.

/// Framing of a checkpoint:
///
///     bytes 0-7    magic "MSPSRCH\0"
///     bytes 8-11   format version (UInt32), `Checkpoint.version`
///     bytes 12-19  payload length P (UInt64)
///     P bytes      payload (see `Search+Checkpoint.swift`)
///     8 bytes      FNV-1a 64 hash of every byte before it
///
/// Every number is little-endian; doubles are their IEEE-754 bits.
public enum Checkpoint {
    /// The first 8 bytes.
    static let magic: [UInt8] = Array("MSPSRCH".utf8) + [0]
    /// The format version this library writes and reads.
    public static let version: UInt32 = 1
    /// Bytes before the payload.
    static let headerSize = 20
    /// Bytes after the payload.
    static let trailerSize = 8

    /// The FNV-1a 64-bit hash.
    static func hash(_ bytes: UnsafeRawBufferPointer) -> UInt64 {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for b in bytes { h = (h ^ UInt64(b)) &* 0x0000_0100_0000_01b3 }
        return h
    }

    /// Appends values to a payload.
    struct Writer {
        /// The bytes so far.
        private(set) var bytes: [UInt8] = []

        mutating func u8(_ v: UInt8) { bytes.append(v) }
        mutating func u32(_ v: UInt32) { for i in 0..<4 { bytes.append(UInt8(truncatingIfNeeded: v >> (8 * i))) } }
        mutating func u64(_ v: UInt64) { for i in 0..<8 { bytes.append(UInt8(truncatingIfNeeded: v >> (8 * i))) } }
        mutating func int(_ v: Int) { u64(UInt64(bitPattern: Int64(v))) }
        mutating func double(_ v: Double) { u64(v.bitPattern) }
        mutating func bool(_ v: Bool) { u8(v ? 1 : 0) }
        mutating func doubles(_ v: [Double]) {
            int(v.count)
            for x in v { double(x) }
        }
        mutating func raw(_ v: [UInt8]) { bytes += v }

        /// The framed checkpoint of this payload.
        func framed() -> [UInt8] {
            var out = Checkpoint.magic
            var header = Writer()
            header.u32(Checkpoint.version)
            header.u64(UInt64(bytes.count))
            out += header.bytes
            out += bytes
            var trailer = Writer()
            trailer.u64(out.withUnsafeBytes { Checkpoint.hash($0) })
            return out + trailer.bytes
        }
    }

    /// Reads values from a payload; every read past the end, and every count or value outside the
    /// range the caller gives, throws `MSPError.invalidArgument` naming the field.
    struct Reader {
        private let bytes: [UInt8]
        private var offset = 0

        /// A reader of a framed checkpoint's payload, after checking its magic, version, length and
        /// checksum.
        /// - Throws: `MSPError.invalidArgument` saying which check failed.
        init(framed data: UnsafeRawBufferPointer) throws {
            func fail(_ why: String) -> MSPError { .invalidArgument("not a valid msp search checkpoint: \(why)") }
            guard data.count >= Checkpoint.headerSize + Checkpoint.trailerSize else {
                throw fail("\(data.count) bytes is shorter than the smallest checkpoint")
            }
            guard data.prefix(8).elementsEqual(Checkpoint.magic) else { throw fail("the magic bytes differ") }
            var header = Reader(payload: Array(data[8..<Checkpoint.headerSize]))
            let version = try header.u32("version")
            guard version == Checkpoint.version else {
                throw fail("format version \(version), this library reads version \(Checkpoint.version)")
            }
            let length = try header.u64("length")
            guard length == UInt64(data.count - Checkpoint.headerSize - Checkpoint.trailerSize) else {
                throw fail(
                    "the payload length (\(length)) does not match the \(data.count) bytes given "
                        + "(truncated or extended)")
            }
            let body = UnsafeRawBufferPointer(rebasing: data[0..<(data.count - Checkpoint.trailerSize)])
            var trailer = Reader(payload: Array(data[(data.count - Checkpoint.trailerSize)...]))
            guard try trailer.u64("checksum") == Checkpoint.hash(body) else {
                throw fail("the checksum does not match (the data is corrupted)")
            }
            self.init(payload: Array(data[Checkpoint.headerSize..<(data.count - Checkpoint.trailerSize)]))
        }

        /// A reader of raw payload bytes.
        init(payload: [UInt8]) { bytes = payload }

        /// Whether every byte has been read.
        var isAtEnd: Bool { offset == bytes.count }

        private mutating func take(_ count: Int, _ field: String) throws -> ArraySlice<UInt8> {
            guard count <= bytes.count - offset else {
                throw MSPError.invalidArgument("checkpoint field \(field) runs past the end of the data")
            }
            defer { offset += count }
            return bytes[offset..<(offset + count)]
        }

        private mutating func little(_ count: Int, _ field: String) throws -> UInt64 {
            try take(count, field).reversed().reduce(0) { $0 << 8 | UInt64($1) }
        }

        mutating func u8(_ field: String) throws -> UInt8 { UInt8(try little(1, field)) }
        mutating func u32(_ field: String) throws -> UInt32 { UInt32(try little(4, field)) }
        mutating func u64(_ field: String) throws -> UInt64 { try little(8, field) }
        mutating func double(_ field: String) throws -> Double { Double(bitPattern: try u64(field)) }

        /// A bool stored as 0 or 1.
        mutating func bool(_ field: String) throws -> Bool {
            let v = try u8(field)
            guard v <= 1 else { throw MSPError.invalidArgument("checkpoint field \(field) (\(v)) is not 0 or 1") }
            return v == 1
        }

        /// An integer within `range`.
        mutating func int(_ field: String, in range: ClosedRange<Int>) throws -> Int {
            let v = Int64(bitPattern: try u64(field))
            guard let i = Int(exactly: v), range.contains(i) else {
                throw MSPError.invalidArgument(
                    "checkpoint field \(field) (\(v)) is outside [\(range.lowerBound), \(range.upperBound)]")
            }
            return i
        }

        /// A count of items of `itemSize` bytes each that the remaining bytes can hold (so a
        /// corrupted count never causes a large allocation).
        mutating func count(_ field: String, itemSize: Int, max: Int = Int.max) throws -> Int {
            let n = try int(field, in: 0...max)
            guard n <= (bytes.count - offset) / Swift.max(1, itemSize) else {
                throw MSPError.invalidArgument("checkpoint field \(field) (\(n) items) runs past the end of the data")
            }
            return n
        }

        /// A counted array of doubles, each checked by `valid`.
        mutating func doubles(_ field: String, count expected: Int? = nil, valid: (Double) -> Bool) throws -> [Double] {
            let n = try count("\(field) count", itemSize: 8)
            if let expected, n != expected {
                throw MSPError.invalidArgument("checkpoint field \(field) has \(n) values, expected \(expected)")
            }
            return try (0..<n).map { i in
                let v = try double("\(field)[\(i)]")
                guard valid(v) else {
                    throw MSPError.invalidArgument("checkpoint field \(field)[\(i)] (\(v)) is out of range")
                }
                return v
            }
        }

        /// `count` raw bytes.
        mutating func raw(_ count: Int, _ field: String) throws -> [UInt8] { Array(try take(count, field)) }
    }
}
