// CostTable+Classification: the cost-table kernel, and its per-row classification of every weight
// for all levels at once (ranks in the N:M groups, the first unstructured level that prunes it).

extension CostTable {
    /// Classification and cost accumulation for one layer in one storage format. The energy,
    /// the reconstruction error and the layer cuts are extensions in their own files.
    struct Kernel<E: Element> {
        /// The weights, row-major.
        let data: UnsafePointer<E.Bits>
        /// The shape.
        let rows: Int, cols: Int
        /// The score |w| * colScale[c] of the pruning kernels.
        let score: Scorer<E>
        /// What every level prunes.
        let plan: LevelPlan
        /// The comparison group of the unstructured levels.
        let scope: TopKScope
        /// Set for layer scope with pruning unstructured levels (`findLayerCuts`).
        var cuts = LayerCuts()

        /// N:M groups ranked together by `rankGroups`: their scores are transposed into one run per
        /// member position, so that each comparison runs over contiguous groups and vectorises.
        static var blockGroups: Int { 128 }

        init(
            _ weights: UnsafeRawPointer, _ matrix: Matrix, _ plan: LevelPlan, _ scope: TopKScope,
            _ colScale: UnsafeBufferPointer<Float>?
        ) {
            data = weights.assumingMemoryBound(to: E.Bits.self)
            rows = matrix.rows
            cols = matrix.cols
            score = Scorer<E>(.magnitude(colScale: colScale))
            self.plan = plan
            self.scope = scope
        }

        /// Per-thread work memory for classifying one row.
        struct RowScratch {
            /// cols scores.
            let scores: UnsafeMutablePointer<Float>
            /// cols widened weights.
            let values: UnsafeMutablePointer<Float>
            /// cols energies w²·d.
            let energy: UnsafeMutablePointer<Double>
            /// groupSizes.count x cols: rank of each weight in its N:M group, per slot.
            let ranks: UnsafeMutablePointer<UInt8>
            /// cols: the first unstructured level that prunes the weight (pruned.count if none).
            let firstLevel: UnsafeMutablePointer<UInt16>
            /// cols score keys (layer scope).
            let keys: UnsafeMutablePointer<UInt32>
            /// 2 x cols packed (key, column) pairs for the row-scope radix sort.
            let sort: UnsafeMutablePointer<UInt64>
            /// 4 x 256 digit counts of the radix sort.
            let counts: UnsafeMutablePointer<Int>
            /// maxM x blockGroups transposed scores and ranks of a block of N:M groups.
            let blockScores: UnsafeMutablePointer<Float>
            let blockRanks: UnsafeMutablePointer<UInt8>
        }

        /// Runs `body` with one `RowScratch`, carved from a single scratch allocation.
        func withRowScratch<R>(_ body: (RowScratch) throws -> R) throws -> R {
            let sorting = scope == .row && !plan.pruned.isEmpty
            let maxM = plan.groupSizes.max() ?? 0
            // (count, stride) of each part, in RowScratch order.
            let parts = [
                (cols, 4), (cols, 4), (cols, 8), (plan.groupSizes.count * cols, 1), (cols, 2), (cols, 4), (sorting ? 2 * cols : 0, 8),
                (4 * 256, 8), (maxM * Self.blockGroups, 4), (maxM * Self.blockGroups, 1),
            ]
            var offsets: [Int] = []
            var bytes = 0
            for (count, stride) in parts {
                let (size, o1) = count.multipliedReportingOverflow(by: stride)
                let (padded, o2) = size.addingReportingOverflow(7)
                let (end, o3) = bytes.addingReportingOverflow(padded & ~7)
                guard !o1, !o2, !o3 else {
                    throw MSPError.outOfMemory("cannot allocate the scratch of a row of \(cols) weights")
                }
                offsets.append(bytes)
                bytes = end
            }
            return try withScratch(UInt64.self, bytes / 8) { words in
                let raw = UnsafeMutableRawPointer(words)
                return try body(
                    RowScratch(
                        scores: (raw + offsets[0]).bindMemory(to: Float.self, capacity: cols),
                        values: (raw + offsets[1]).bindMemory(to: Float.self, capacity: cols),
                        energy: (raw + offsets[2]).bindMemory(to: Double.self, capacity: cols),
                        ranks: (raw + offsets[3]).bindMemory(to: UInt8.self, capacity: parts[3].0),
                        firstLevel: (raw + offsets[4]).bindMemory(to: UInt16.self, capacity: cols),
                        keys: (raw + offsets[5]).bindMemory(to: UInt32.self, capacity: cols),
                        sort: (raw + offsets[6]).bindMemory(to: UInt64.self, capacity: parts[6].0),
                        counts: (raw + offsets[7]).bindMemory(to: Int.self, capacity: 4 * 256),
                        blockScores: (raw + offsets[8]).bindMemory(to: Float.self, capacity: parts[8].0),
                        blockRanks: (raw + offsets[9]).bindMemory(to: UInt8.self, capacity: parts[9].0)))
            }
        }

        /// Fills the scratch's `ranks` and `firstLevel` for row `r`.
        func classify(row r: Int, _ s: RowScratch) {
            let row = data + r * cols
            for c in 0..<cols { s.scores[c] = score(row[c], c) }
            for (slot, m) in plan.groupSizes.enumerated() {
                rankGroups(m: m, s.scores, into: s.ranks + slot * cols, s.blockScores, s.blockRanks)
            }
            guard !plan.pruned.isEmpty else { return }
            switch scope {
            case .row: firstLevelsInRow(s)
            case .layer: firstLevelsInLayer(row: r, s)
            }
        }

        /// The rank of every weight in its group of `m` (how many members the kernel orders before it:
        /// higher scores, and equal scores at lower positions): the order `NMMask` keeps by.
        @inline(__always)
        func rankGroups(
            m: Int, _ scores: UnsafeMutablePointer<Float>, into out: UnsafeMutablePointer<UInt8>,
            _ t: UnsafeMutablePointer<Float>, _ rank: UnsafeMutablePointer<UInt8>
        ) {
            let block = Self.blockGroups
            let groups = cols / m
            for g0 in stride(from: 0, to: groups, by: block) {
                let len = min(block, groups - g0)
                let base = scores + g0 * m
                for q in 0..<m {
                    let tq = t + q * block
                    for g in 0..<len { tq[g] = base[g * m + q] }
                }
                for p in 0..<m {
                    let tp = t + p * block, rp = rank + p * block
                    for g in 0..<len { rp[g] = 0 }
                    for q in 0..<p {
                        let tq = t + q * block
                        for g in 0..<len { rp[g] &+= tq[g] >= tp[g] ? 1 : 0 }
                    }
                    for q in (p + 1)..<m {
                        let tq = t + q * block
                        for g in 0..<len { rp[g] &+= tq[g] > tp[g] ? 1 : 0 }
                    }
                }
                let o = out + g0 * m
                for g in 0..<len {
                    for p in 0..<m { o[g * m + p] = rank[p * block + g] }
                }
            }
        }

        /// Row scope: sorts the row into pruning order (key ascending, then column descending: the
        /// kernel prunes the first floor(s * cols)) with a stable LSD radix sort over the keys, fed in
        /// descending column order; the weight at position j is first pruned by the first level that
        /// prunes more than j.
        func firstLevelsInRow(_ s: RowScratch) {
            let n = cols
            var src = s.sort
            var dst = src + n
            for j in 0..<n {
                let c = n - 1 - j
                src[j] = UInt64(scoreKey(s.scores[c])) << 32 | UInt64(truncatingIfNeeded: c)
            }
            let counts = s.counts
            counts.initialize(repeating: 0, count: 4 * 256)
            for j in 0..<n {
                let v = src[j] >> 32
                counts[Int(v & 255)] += 1
                counts[256 + Int((v >> 8) & 255)] += 1
                counts[512 + Int((v >> 16) & 255)] += 1
                counts[768 + Int(v >> 24)] += 1
            }
            for digit in 0..<4 {
                let h = counts + digit * 256
                let shift = UInt64(32 + 8 * digit)
                if h[Int((src[0] >> shift) & 255)] == n { continue }  // one value: order unchanged
                var sum = 0
                for d in 0..<256 {
                    let count = h[d]
                    h[d] = sum
                    sum += count
                }
                for j in 0..<n {
                    let v = src[j]
                    let d = Int((v >> shift) & 255)
                    dst[h[d]] = v
                    h[d] += 1
                }
                swap(&src, &dst)
            }
            plan.pruned.withUnsafeBufferPointer { pruned in
                var level = 0
                for j in 0..<n {
                    while level < pruned.count && pruned[level] <= j { level += 1 }
                    s.firstLevel[Int(truncatingIfNeeded: src[j] & 0xFFFF_FFFF)] = UInt16(level)
                }
            }
        }

        /// Layer scope: the first level whose threshold prunes each weight. The pruned sets are nested,
        /// so that is the number of levels minus the number of levels that prune it: counted branch-free
        /// over the row for a few levels, else found by binary search.
        func firstLevelsInLayer(row r: Int, _ s: RowScratch) {
            let keys = s.keys, first = s.firstLevel
            for c in 0..<cols { keys[c] = scoreKey(s.scores[c]) }
            let start = r * cols
            cuts.thresholds.withUnsafeBufferPointer { thresholds in
                cuts.cuts.withUnsafeBufferPointer { cuts in
                    let levels = thresholds.count
                    if levels <= 32 {
                        for c in 0..<cols { first[c] = UInt16(levels) }
                        for j in 0..<levels {
                            let threshold = thresholds[j], cut = cuts[j] - start  // the cut's column in this row
                            for c in 0..<cols {
                                let below: UInt16 = keys[c] < threshold ? 1 : 0
                                let tie: UInt16 = (keys[c] == threshold ? 1 : 0) & (c >= cut ? 1 : 0)
                                first[c] &-= below | tie
                            }
                        }
                        return
                    }
                    for c in 0..<cols {
                        let key = keys[c]
                        @inline(__always) func prunes(_ j: Int) -> Bool {
                            key < thresholds[j] || (key == thresholds[j] && start + c >= cuts[j])
                        }
                        var lo = 0, hi = levels
                        while lo < hi {
                            let mid = (lo + hi) / 2
                            if prunes(mid) { hi = mid } else { lo = mid + 1 }
                        }
                        first[c] = UInt16(lo)
                    }
                }
            }
        }

        /// The keys of row `r`'s scores.
        @inline(__always)
        func rowKeys(_ r: Int, into keys: UnsafeMutablePointer<UInt32>) {
            let row = data + r * cols
            for c in 0..<cols { keys[c] = scoreKey(score(row[c], c)) }
        }
    }
}
