// Threads: the process-wide thread count and the row-parallel loop every kernel uses.

import Dispatch
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// The configured thread count; 0 means one per available core.
private let configuredThreads = Atomic<Int>(0)

/// Thread settings shared by all kernels.
public enum Threads {
    /// Cores available to this process (at least 1).
    public static var available: Int { max(1, Int(sysconf(Int32(_SC_NPROCESSORS_ONLN)))) }

    /// The number of threads kernels use now (at least 1).
    public static var count: Int {
        let n = configuredThreads.load(ordering: .relaxed)
        return n > 0 ? n : available
    }

    /// Sets the thread count: `n >= 1`, or 0 for one per available core.
    /// - Throws: `MSPError.invalidArgument` for a negative `n`.
    public static func set(_ n: Int) throws {
        guard n >= 0 else { throw MSPError.invalidArgument("num_threads (\(n)) must be >= 0") }
        configuredThreads.store(n, ordering: .relaxed)
    }

    /// Splits `0..<count` into at most `threads` contiguous near-equal chunks of at least
    /// `minimumPerThread` items (one chunk when the work is small).
    static func chunks(_ count: Int, minimumPerThread: Int = 1, threads: Int = Threads.count) -> [Range<Int>] {
        let parts = max(1, min(threads, count / max(1, minimumPerThread)))
        let start = { (t: Int) in (count / parts) * t + min(t, count % parts) }
        return (0..<parts).map { start($0)..<start($0 + 1) }
    }

    /// Runs `body(index, chunk)` for every chunk, on at most `Threads.count` threads.
    /// - Returns: the results in chunk order.
    /// - Throws: the error of the first chunk, in chunk order, that threw.
    static func map<R>(_ chunks: [Range<Int>], _ body: (Int, Range<Int>) throws -> R) throws -> [R] {
        if chunks.count == 1 { return [try body(0, chunks[0])] }
        let results = UnsafeMutableBufferPointer<Result<R, Error>>.allocate(capacity: chunks.count)
        results.initialize(repeating: .failure(MSPError.invalidState("chunk did not run")))
        defer { results.deinitialize().deallocate() }
        withoutActuallyEscaping(body) { body in
            // Each thread writes only its own slot, and both runners return after all of them.
            let chunk = UncheckedSendable(value: { (t: Int) in results[t] = Result { try body(t, chunks[t]) } })
            if !WorkerPool.shared().run(chunks.count, chunk.value) {
                let lanes = min(chunks.count, Threads.count)
                DispatchQueue.concurrentPerform(iterations: lanes) { lane in
                    for t in stride(from: lane, to: chunks.count, by: lanes) { chunk.value(t) }
                }
            }
        }
        return try results.map { try $0.get() }
    }

    /// Splits `0..<count` as `chunks(_:minimumPerThread:)` does and runs `body` on each chunk in
    /// parallel. Chunk boundaries depend on the thread count, so `body` must give results that do not.
    /// - Returns: the per-chunk results in chunk order.
    static func map<R>(
        _ count: Int, minimumPerThread: Int = 1, _ body: (Range<Int>) throws -> R
    ) throws -> [R] {
        try map(chunks(count, minimumPerThread: minimumPerThread)) { try body($1) }
    }
}

/// Carries non-Sendable values into the chunk runners, whose threads use them without races.
private struct UncheckedSendable<T>: @unchecked Sendable {
    let value: T
}
