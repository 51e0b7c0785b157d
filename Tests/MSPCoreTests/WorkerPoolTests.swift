// WorkerPoolTests: `Threads.map` on the persistent worker pool against serial loops written here:
// every chunk runs exactly once, with its own index and range, across many jobs in a row, after the
// workers have parked, with more chunks than cores (on no more threads than cores), nested inside a
// chunk, from several threads at once, and with the first throwing chunk's error in chunk order.

import Dispatch
#if canImport(Glibc)
    import Glibc
#endif
import Synchronization
import Testing

@testable import MSPCore

/// A chunk's result that shows which chunk produced it and from which range.
private func signature(_ t: Int, _ range: Range<Int>) -> Int {
    range.reduce(t &* 1_000_003) { $0 &* 31 &+ $1 }
}

/// The expected results of `Threads.map(chunks)` with `signature`, computed serially.
private func serial(_ chunks: [Range<Int>]) -> [Int] {
    chunks.enumerated().map { signature($0.offset, $0.element) }
}

/// A chunk error carrying its chunk index.
private struct ChunkError: Error, Equatable {
    let chunk: Int
}

/// Runs `body` on the pool directly, retrying while another test's job holds it.
private func onPool(_ count: Int, _ body: (Int) -> Void) -> Bool {
    for _ in 0..<10_000 {
        if WorkerPool.shared().run(count, body) { return true }
        usleep(100)
    }
    return false
}

@Suite("Worker pool", .serialized)
struct WorkerPoolTests {
    @Test("Many jobs in a row, with chunk counts that grow and shrink, match the serial loop")
    func manyJobs() throws {
        for job in 0..<3000 {
            let parts = [2, 3, 2, 8, 5, 1, 4][job % 7]
            let chunks = Threads.chunks(100 + job % 37, threads: parts)
            // Each chunk counts its runs in its own slot; the map's return orders the counts before
            // this thread reads them.
            let runs = UnsafeMutableBufferPointer<Int>.allocate(capacity: chunks.count)
            runs.initialize(repeating: 0)
            defer { runs.deallocate() }
            let got = try Threads.map(chunks) { t, range -> Int in
                runs[t] += 1
                return signature(t, range)
            }
            #expect(got == serial(chunks))
            #expect(runs.allSatisfy { $0 == 1 }, "job \(job): a chunk ran twice or never")
        }
    }

    @Test("A job after the workers have parked runs every chunk", arguments: [2, 4])
    func afterParking(parts: Int) throws {
        for _ in 0..<3 {
            usleep(UInt32(2 * WorkerPool.spinNanoseconds / 1000 + 5000))
            let chunks = Threads.chunks(1000, threads: parts)
            #expect(try Threads.map(chunks) { signature($0, $1) } == serial(chunks))
        }
    }

    @Test("The pool runs every index once, on the caller and its workers, awake or parked")
    func poolThreads() {
        var helped = false
        for (count, pause) in [(2, 0), (4, 0), (4, 1), (3, 1), (40, 0), (2, 1)] {
            usleep(UInt32(pause * (2 * WorkerPool.spinNanoseconds / 1000 + 5000)))
            for _ in 0..<50 {
                let threads = UnsafeMutableBufferPointer<pthread_t>.allocate(capacity: count)
                let runs = UnsafeMutableBufferPointer<Int>.allocate(capacity: count)
                runs.initialize(repeating: 0)
                defer {
                    threads.deallocate()
                    runs.deallocate()
                }
                #expect(onPool(count) { t in
                    threads[t] = pthread_self()
                    runs[t] += 1
                    usleep(200)  // long enough for an awake worker to take a chunk
                })
                #expect(runs.allSatisfy { $0 == 1 })
                let distinct = Set(threads.map { UInt($0) })
                #expect(distinct.count <= Threads.available, "more threads than cores")
                helped = helped || distinct.count > 1
            }
        }
        #expect(helped || Threads.available == 1, "no worker ever took a chunk")
    }

    @Test("A map nested inside a chunk runs (on Dispatch) and both levels match the serial loops")
    func nested() throws {
        let outer = Threads.chunks(64, threads: 4)
        let inner = Threads.chunks(50, threads: 3)
        let got = try Threads.map(outer) { t, range -> [Int] in
            try Threads.map(inner) { signature($0 + t, $1) } + [signature(t, range)]
        }
        let expected = outer.enumerated().map { t, range in
            inner.enumerated().map { signature($0.offset + t, $0.element) } + [signature(t, range)]
        }
        #expect(got == expected)
    }

    @Test("Maps from several threads at once all match the serial loop")
    func concurrentCallers() {
        let failures = Atomic<Int>(0)
        DispatchQueue.concurrentPerform(iterations: 6) { caller in
            for job in 0..<300 {
                let chunks = Threads.chunks(200 + caller * 7 + job % 11, threads: 2 + (caller + job) % 3)
                if (try? Threads.map(chunks) { signature($0, $1) }) != serial(chunks) {
                    failures.add(1, ordering: .relaxed)
                }
            }
        }
        #expect(failures.load(ordering: .relaxed) == 0)
    }

    @Test("The first throwing chunk in chunk order gives the error, and every chunk still runs")
    func errors() throws {
        let chunks = Threads.chunks(80, threads: 8)
        for failing in [[7], [3, 5], [0, 6], [1, 2, 3, 4, 5, 6, 7]] {
            let runs = Atomic<Int>(0)
            #expect(throws: ChunkError(chunk: failing[0])) {
                _ = try Threads.map(chunks) { t, _ in
                    runs.add(1, ordering: .relaxed)
                    if failing.contains(t) { throw ChunkError(chunk: t) }
                }
            }
            #expect(runs.load(ordering: .relaxed) == chunks.count)
            // The pool is free again: a following job runs normally.
            #expect(try Threads.map(chunks) { signature($0, $1) } == serial(chunks))
        }
    }
}
