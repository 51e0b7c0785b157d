// Prefetch: software prefetch hints ahead of the streaming kernels' reads.

import CMSPPrefetch

/// Software prefetch for loops that stream through caller buffers.
///
/// Measured on the 2-core bench machine (a KVM guest), the hardware prefetchers alone left one
/// thread's masking and summing loops at about half of its read bandwidth on buffers beyond the
/// cache: they compute between loads, and the loads run out of lines in flight. Hinting the lines
/// a few KiB ahead of the reads brings them to the bandwidth (N:M pruning of 11008x4096 bf16 on
/// one thread about 1.5x faster, `sum_squares` 1.9x).
enum Prefetch {
    /// Bytes between a streaming loop's reads and the lines it hints (2-16 KiB measured alike).
    static let distance = 4096
    /// Bytes per cache line.
    static let line = 64

    /// Hints the cache lines of the `bytes` bytes that start `offset` bytes after `p`. The range
    /// may lie past the end of the buffer: a hint never faults.
    @inline(__always)
    static func lines(_ p: UnsafeRawPointer, offset: Int, bytes: Int) {
        var o = offset
        let end = offset &+ bytes
        while o < end {
            msp_prefetch(p, o)
            o &+= line
        }
    }
}
