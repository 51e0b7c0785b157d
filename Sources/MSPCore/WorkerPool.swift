// WorkerPool: the persistent threads that run `Threads.map`'s chunks, spinning briefly before they park.

import CMSPPrefetch
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// Persistent worker threads for `Threads.map`. A call publishes its job and takes part in it: the
/// caller and up to one worker per further thread allowed (`Threads.count`, at most one per core)
/// take the job's chunks one at a time from a shared counter until none is left. A worker joins a
/// job only while the job is open, and the caller closes it once every chunk is taken, so a worker
/// that is slow to wake costs nothing (the caller and the others run its share), and a job of more
/// chunks than threads never runs more threads than allowed.
///
/// Waking a parked thread can take as long as a whole memory-bound product of a 4096 x 4096 N:M
/// matrix: on a 2-core VM, Dispatch's parked threads left the median of that product up to twice its
/// best time. So a worker that has finished a job spins
/// for `spinNanoseconds` (first with a pause hint, then yielding its core) before it parks on a
/// condition variable: calls that follow each other closely, as the layers of a decoding step do,
/// find it awake. One job runs at a time; a caller that finds the pool busy (a nested or concurrent
/// call) is told to use Dispatch instead. A forked child gets a fresh pool, since the parent's
/// workers do not exist in it.
final class WorkerPool: @unchecked Sendable {
    /// How long an idle worker spins before it parks.
    static let spinNanoseconds = 2_000_000

    /// The pool of this process.
    static func shared() -> WorkerPool {
        current.withLock { pool in
            let pid = getpid()
            if let pool, pool.pid == pid { return pool }
            let fresh = WorkerPool(pid: pid)
            pool = fresh
            return fresh
        }
    }

    private static let current = Mutex<WorkerPool?>(nil)
    /// The most chunks one job may have (a 16-bit field of the ticket).
    private static let maximumChunks = 0xFFFF
    /// Generations wrap within 31 bits, so that the ticket and the gate hold them.
    private static let generationMask = (1 << 31) - 1

    private let pid: pid_t
    /// The current job's ticket, `generation << 32 | helpers << 16 | chunk count`, the generation
    /// bumped once per job. A worker tries to join a job when it sees a ticket it has not run and its
    /// index is at most `helpers`; the same load gives it the chunk count, and a worker that does not
    /// join reads nothing else of the job.
    private let ticket = Atomic<Int>(0)
    /// The next chunk of the current job to take.
    private let nextChunk = Atomic<Int>(0)
    /// The current job's gate, `generation << 17 | closed << 16 | active helpers`: a worker joins the
    /// job by adding itself while the generation is its ticket's and the job is open, and leaves when
    /// it has run its chunks; the caller closes the job and waits for the active helpers to leave.
    private let gate = Atomic<Int>(0)
    /// Workers between announcing that they park and parking (or parked).
    private let sleepers = Atomic<Int>(0)
    /// Held by the one caller whose job runs; also guards `workers` and the thread creation.
    private let busy = Atomic<Bool>(false)
    /// The current job: written before the ticket is published, read by its helpers after they load
    /// the ticket, and left alone until all of them are done.
    private var job: (Int) -> Void = { _ in }
    private var workers = 0
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let condition = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)

    private init(pid: pid_t) {
        self.pid = pid
        pthread_mutex_init(mutex, nil)
        pthread_cond_init(condition, nil)
    }

    /// Runs `body(t)` once for every `t` in `0..<count`, on the calling thread and the workers, and
    /// returns when all have run. `body` must not throw or escape its arguments.
    /// - Returns: false, having run nothing, when the pool is busy or cannot start a thread it needs.
    func run(_ count: Int, _ body: (Int) -> Void) -> Bool {
        guard count <= Self.maximumChunks,
            busy.compareExchange(expected: false, desired: true, ordering: .acquiring).exchanged
        else { return false }
        defer { busy.store(false, ordering: .releasing) }
        let helpers = min(count, Threads.count, Threads.available) - 1
        while workers < helpers {
            guard spawn(worker: workers + 1) else { return false }
            workers += 1
        }
        withoutActuallyEscaping(body) { body in
            job = body
            nextChunk.store(0, ordering: .relaxed)
            let generation = (ticket.load(ordering: .relaxed) >> 32 &+ 1) & Self.generationMask
            gate.store(generation << 17, ordering: .relaxed)
            ticket.store(generation << 32 | helpers << 16 | count, ordering: .sequentiallyConsistent)
            if helpers > 0, sleepers.load(ordering: .sequentiallyConsistent) > 0 {
                pthread_mutex_lock(mutex)
                pthread_cond_broadcast(condition)
                pthread_mutex_unlock(mutex)
            }
            takeChunks(count, body)
            var spins = 0
            gate.bitwiseOr(1 << 16, ordering: .acquiringAndReleasing)
            while gate.load(ordering: .acquiring) & Self.maximumChunks > 0 {
                spins += 1
                if spins & 63 == 0 { sched_yield() } else { msp_spin_pause() }
            }
            job = { _ in }
        }
        return true
    }

    /// Runs chunks of the current job, taking them one at a time, until none is left.
    private func takeChunks(_ count: Int, _ body: (Int) -> Void) {
        while true {
            let t = nextChunk.wrappingAdd(1, ordering: .relaxed).oldValue
            guard t < count else { return }
            body(t)
        }
    }

    /// Starts worker `t` (1-based), a helper of every job with at least `t` helpers.
    private func spawn(worker t: Int) -> Bool {
        // The worker starts from the ticket before this job's, which it must not miss.
        let start = WorkerStart(pool: self, index: t, seen: ticket.load(ordering: .relaxed))
        let context = Unmanaged.passRetained(start).toOpaque()
        var thread = pthread_t()
        let started = pthread_create(&thread, nil, { context in
            guard let context else { return nil }
            let start = Unmanaged<WorkerStart>.fromOpaque(context).takeRetainedValue()
            start.pool.work(index: start.index, seen: start.seen)
            return nil
        }, context)
        if started != 0 {
            Unmanaged<WorkerStart>.fromOpaque(context).release()
            return false
        }
        pthread_detach(thread)
        return true
    }

    /// A worker's loop: wait for a ticket other than `seen`, help with the job if it is one of its
    /// helpers and the job is still open, repeat.
    private func work(index: Int, seen: Int) {
        var seen = seen
        while true {
            seen = wait(after: seen)
            if index <= seen >> 16 & Self.maximumChunks, join(generation: seen >> 32) {
                help(seen & Self.maximumChunks)
                gate.subtract(1, ordering: .releasing)
            }
        }
    }

    /// Adds this worker to the active helpers of the job of `generation` if that job is still open.
    private func join(generation: Int) -> Bool {
        var state = gate.load(ordering: .relaxed)
        while state >> 17 == generation, state & 1 << 16 == 0 {
            let (exchanged, current) = gate.compareExchange(
                expected: state, desired: state + 1, ordering: .acquiring)
            if exchanged { return true }
            state = current
        }
        return false
    }

    /// A helper's part of the current job of `count` chunks. Not inlined: the helper's copy of the
    /// job is released when this returns, before the caller, which checks that the job did not escape
    /// its call, can see the helper leave.
    @inline(never)
    private func help(_ count: Int) {
        let body = job
        takeChunks(count, body)
    }

    /// Spins, then parks, until the ticket differs from `seen`; returns the new ticket.
    private func wait(after seen: Int) -> Int {
        var spins = 0
        var start = timespec()
        clock_gettime(CLOCK_MONOTONIC, &start)
        while true {
            let now = ticket.load(ordering: .acquiring)
            if now != seen { return now }
            spins += 1
            if spins < 4096 {
                msp_spin_pause()
                continue
            }
            if spins & 63 == 0 {
                var time = timespec()
                clock_gettime(CLOCK_MONOTONIC, &time)
                let elapsed = (time.tv_sec - start.tv_sec) * 1_000_000_000 + (time.tv_nsec - start.tv_nsec)
                if elapsed > Self.spinNanoseconds { break }
            }
            sched_yield()
        }
        pthread_mutex_lock(mutex)
        sleepers.add(1, ordering: .sequentiallyConsistent)
        var now = ticket.load(ordering: .sequentiallyConsistent)
        while now == seen {
            pthread_cond_wait(condition, mutex)
            now = ticket.load(ordering: .sequentiallyConsistent)
        }
        sleepers.subtract(1, ordering: .sequentiallyConsistent)
        pthread_mutex_unlock(mutex)
        return now
    }
}

/// What a new worker thread starts from.
private final class WorkerStart {
    let pool: WorkerPool
    let index: Int
    /// The ticket current when the worker was created.
    let seen: Int

    init(pool: WorkerPool, index: Int, seen: Int) {
        self.pool = pool
        self.index = index
        self.seen = seen
    }
}
