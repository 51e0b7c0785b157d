// RadixSelect: the k-th largest of a multiset of 32-bit keys, by most-significant-digit histograms.

/// Narrows down the key of a given rank (1 = largest) one digit at a time. The caller counts the
/// next digit of every key that `matches` into a histogram and passes it to `refine`; after the
/// digits cover 32 bits, `threshold` is the key of that rank and `ties` is how many keys equal to
/// it are needed, in index order, to reach the rank.
struct RadixSelect {
    /// High bits decided so far, in place.
    private(set) var prefix: UInt32 = 0
    /// How many high bits are decided.
    private(set) var decidedBits = 0
    /// Ones in the decided high bits.
    private var decidedMask: UInt32 = 0
    /// The wanted rank among the keys that match `prefix`.
    private(set) var rank: Int

    /// Starts a search for the key of rank `rank` (1 = largest).
    init(rank: Int) { self.rank = rank }

    /// The key of the wanted rank once all 32 bits are decided.
    var threshold: UInt32 { prefix }
    /// Keys equal to `threshold` that belong to the top `rank` (the first ones in index order).
    var ties: Int { rank }

    /// Whether `key` agrees with the decided high bits.
    @inline(__always) func matches(_ key: UInt32) -> Bool { key & decidedMask == prefix }

    /// The next `bits`-bit digit of `key`. Masking shifts and wrapping arithmetic: this runs once
    /// per key, and `bits` is at most the undecided width.
    @inline(__always) func digit(_ key: UInt32, bits: Int) -> Int {
        Int(truncatingIfNeeded: (key &>> UInt32(truncatingIfNeeded: 32 &- decidedBits &- bits)) & (UInt32(1) &<< UInt32(truncatingIfNeeded: bits) &- 1))
    }

    /// Decides the next `bits` bits from `histogram(d)`, the number of matching keys whose next
    /// digit is `d`.
    mutating func refine(_ histogram: (Int) -> Int, bits: Int) {
        var above = 0
        for b in stride(from: (1 << bits) - 1, through: 0, by: -1) {
            if above + histogram(b) >= rank {
                prefix |= UInt32(b) << UInt32(32 - decidedBits - bits)
                rank -= above
                decidedBits += bits
                decidedMask = UInt32.max << UInt32(32 - decidedBits)
                return
            }
            above += histogram(b)
        }
        assertionFailure("rank exceeds the number of matching keys")
    }
}
