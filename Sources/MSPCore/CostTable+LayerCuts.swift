// CostTable+LayerCuts: for layer scope, every unstructured level's threshold key and tie cut, from
// radix selections that share their histogram passes over the layer.

/// The unstructured levels' pruned sets over a whole layer: level j prunes element i (row-major
/// index) with key k exactly when k < thresholds[j], or k == thresholds[j] and i >= cuts[j].
struct LayerCuts {
    /// Per pruning unstructured level, the boundary key: smaller keys are pruned, equal ones from
    /// the cut on (`UInt32.max` for a level that prunes every weight).
    var thresholds: [UInt32] = []
    /// Per pruning unstructured level, the row-major index from which weights with the threshold
    /// key are pruned (`Int.max` when none of them is).
    var cuts: [Int] = []
}

extension CostTable.Kernel {
    /// For layer scope, finds every unstructured level's threshold key and tie cut: one radix
    /// selection per level (as `TopKPrune` does), all sharing three histogram passes over the layer.
    mutating func findLayerCuts() throws {
        guard scope == .layer, !plan.pruned.isEmpty else { return }
        let count = rows * cols
        let levels = plan.pruned.count
        // Level j keeps the first count - pruned[j] weights of the order (score desc, index asc).
        var selects = plan.pruned.map { RadixSelect(rank: count - $0) }
        let selecting = selects.indices.filter { selects[$0].rank > 0 }
        let chunks = Threads.chunks(rows, minimumPerThread: max(1, 65536 / cols))
        var tiesPerChunk = [Int](repeating: 0, count: chunks.count * levels)  // [chunk][level]
        var decided = 0
        for bits in [11, 11, 10] where !selecting.isEmpty {
            let bins = 1 << bits
            let table = PrefixTable(decided: decided, prefixes: selecting.map { selects[$0].prefix })
            let slots = selects.map { table.slot($0.prefix) }
            // The last slot collects the keys that match no prefix.
            let width = (table.count + 1) * bins
            let shift = UInt32(32 - decided - bits), mask = UInt32(bins - 1)
            try withScratch(Int.self, chunks.count * width) { histograms in
                _ = try Threads.map(chunks) { t, range in
                    let h = histograms + t * width
                    h.initialize(repeating: 0, count: width)
                    try withScratch(UInt32.self, cols) { keys in
                        for r in range {
                            rowKeys(r, into: keys)
                            for c in 0..<cols {
                                let k = keys[c]
                                h[table.slot(k) * bins + Int((k >> shift) & mask)] += 1
                            }
                        }
                    }
                }
                try withScratch(Int.self, width) { total in
                    total.initialize(repeating: 0, count: width)
                    for t in 0..<chunks.count {
                        for b in 0..<width { total[b] += histograms[t * width + b] }
                    }
                    for j in selecting {
                        let base = slots[j] * bins
                        selects[j].refine({ total[base + $0] }, bits: bits)
                    }
                }
                if decided + bits == 32 {
                    for j in selecting {
                        let digit = Int(selects[j].threshold & mask)
                        for t in 0..<chunks.count {
                            tiesPerChunk[t * levels + j] = histograms[t * width + slots[j] * bins + digit]
                        }
                    }
                }
            }
            decided += bits
        }
        // Ties at a threshold are kept in index order: the first pruned one is the level's cut. Each
        // chunk holding cuts is scanned once, for all of them.
        let thresholds = selects.map { $0.rank > 0 ? $0.threshold : UInt32.max }  // rank 0 prunes all
        var jobs = [[(level: Int, skip: Int)]](repeating: [], count: chunks.count)
        for j in selecting {
            var before = 0
            for t in chunks.indices {
                let ties = tiesPerChunk[t * levels + j]
                if before + ties > selects[j].ties {
                    jobs[t].append((j, selects[j].ties - before))
                    break
                }
                before += ties
            }
        }
        let found = try Threads.map(chunks) { t, range -> [(level: Int, cut: Int)] in
            let work = jobs[t]
            guard !work.isEmpty else { return [] }
            let table = PrefixTable(decided: 32, prefixes: work.map { thresholds[$0.level] })
            let slots = work.map { table.slot(thresholds[$0.level]) }
            var seen = [Int](repeating: 0, count: table.count)
            var cuts: [(level: Int, cut: Int)] = []
            try withScratch(UInt32.self, cols) { keys in
                scan: for r in range {
                    rowKeys(r, into: keys)
                    for c in 0..<cols {
                        let slot = table.slot(keys[c])
                        guard slot < table.count else { continue }
                        for (q, job) in work.enumerated() where slots[q] == slot && job.skip == seen[slot] {
                            cuts.append((job.level, r * cols + c))
                        }
                        seen[slot] += 1
                        if cuts.count == work.count { break scan }
                    }
                }
            }
            return cuts
        }
        var cutOf = [Int](repeating: Int.max, count: levels)
        for (j, cut) in found.joined() { cutOf[j] = cut }
        cuts = LayerCuts(thresholds: thresholds, cuts: cutOf)
    }
}

/// The distinct prefixes of a multi-level radix selection after `decided` bits, and a lookup from
/// a key to the slot of the prefix it starts with.
private struct PrefixTable {
    /// Sorted distinct prefixes (the decided high bits in place, lower bits zero).
    let prefixes: [UInt32]
    /// Keeps the decided high bits.
    let highMask: UInt32
    /// Per value of a key's top 11 bits: the index of the only prefix starting with them, -1 for
    /// none, -2 for several. With `decided` = 32 the prefixes are whole keys.
    let top: [Int32]

    init(decided: Int, prefixes: [UInt32]) {
        self.prefixes = Array(Set(prefixes)).sorted()
        highMask = decided == 0 ? 0 : ~UInt32(0) << UInt32(32 - decided)
        var top = [Int32](repeating: -1, count: 2048)
        for (i, p) in self.prefixes.enumerated() {
            let t = Int(p >> 21)
            top[t] = decided == 0 ? 0 : (top[t] == -1 ? Int32(i) : -2)
        }
        if decided == 0 { top = [Int32](repeating: 0, count: 2048) }
        self.top = top
    }

    /// Number of prefixes (slots); `count` itself is the slot of keys that match none.
    var count: Int { prefixes.count }

    /// The slot of the prefix `key` starts with, or `count`.
    @inline(__always) func slot(_ key: UInt32) -> Int {
        let t = Int(top[Int(key >> 21)])
        let high = key & highMask
        if t >= 0 { return prefixes[t] == high ? t : count }
        if t == -1 { return count }
        var lo = 0, hi = prefixes.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if prefixes[mid] < high { lo = mid + 1 } else { hi = mid }
        }
        return lo < prefixes.count && prefixes[lo] == high ? lo : count
    }
}
