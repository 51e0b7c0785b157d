// Scratch: kernel work memory whose allocation failure is an error, not a trap.

#if canImport(Glibc)
    import Glibc
#endif

/// Runs `body` with uninitialised memory for `count` values of `T`, freed when `body` returns.
/// - Throws: `MSPError.outOfMemory` when the allocation fails or its size overflows, or what
///   `body` throws.
func withScratch<T, R>(
    _: T.Type, _ count: Int, _ body: (UnsafeMutablePointer<T>) throws -> R
) throws -> R {
    let (bytes, overflow) = max(count, 1).multipliedReportingOverflow(by: MemoryLayout<T>.stride)
    guard !overflow, let raw = malloc(bytes) else {
        throw MSPError.outOfMemory("cannot allocate \(count) x \(MemoryLayout<T>.stride) bytes of scratch")
    }
    defer { free(raw) }
    return try body(raw.bindMemory(to: T.self, capacity: count))
}
