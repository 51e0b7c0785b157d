// CostTable+Energy: the pruned energy of every level, from per-rank and per-level sums over fixed
// blocks of rows.

extension CostTable.Kernel {
    /// Σ w²·d over the weights each level prunes (unscaled), per level.
    func energy(_ diag: UnsafeBufferPointer<Float>?, _ blockElements: Int) throws -> [Double] {
        if plan.prunesNothing { return [Double](repeating: 0, count: plan.kinds.count) }
        var kernel = self
        try kernel.findLayerCuts()
        // Bins: the ranks 0..<m of every N:M slot, then first-pruning unstructured levels 0...L.
        var offsets: [Int] = []
        var bins = 0
        for m in plan.groupSizes {
            offsets.append(bins)
            bins += m
        }
        let unstructuredOffset = bins
        bins += plan.pruned.count + 1
        // Fixed blocks of rows (at most 4096 of them): each gets its own partial sums.
        let blockRows = max(1, blockElements / cols, (rows + 4095) / 4096)
        let blocks = (rows + blockRows - 1) / blockRows
        let diagBase = diag?.baseAddress
        return try withScratch(Double.self, blocks * bins) { partial in
            _ = try Threads.map(blocks, minimumPerThread: max(1, 65536 / (blockRows * cols))) { range in
                try kernel.withRowScratch { s in
                    for b in range {
                        let sums = partial + b * bins
                        sums.initialize(repeating: 0, count: bins)
                        for r in (b * blockRows)..<min(rows, (b + 1) * blockRows) {
                            kernel.classify(row: r, s)
                            kernel.accumulateEnergy(
                                row: r, s, diag: diagBase, sums: sums, offsets: offsets,
                                unstructuredOffset: unstructuredOffset)
                        }
                    }
                }
            }
            var total = [Double](repeating: 0, count: bins)
            for b in 0..<blocks {
                for i in 0..<bins { total[i] += partial[b * bins + i] }
            }
            return plan.kinds.map { kind in
                switch kind {
                case .none:
                    return 0
                case .nm(let slot, let n):
                    let first = offsets[slot]
                    return total[(first + n)..<(first + plan.groupSizes[slot])].reduce(0, +)
                case .unstructured(let index):
                    return total[unstructuredOffset...(unstructuredOffset + index)].reduce(0, +)
                }
            }
        }
    }

    /// Adds w²·d of every weight of row `r` to its N:M rank bins and its unstructured bin.
    @inline(__always)
    func accumulateEnergy(
        row r: Int, _ s: RowScratch, diag: UnsafePointer<Float>?, sums: UnsafeMutablePointer<Double>,
        offsets: [Int], unstructuredOffset: Int
    ) {
        let row = data + r * cols
        let energy = s.energy
        if let diag {
            let d = diag + r * cols
            for c in 0..<cols {
                let w = Double(E.widen(row[c]))
                energy[c] = w * w * Double(d[c])
            }
        } else {
            for c in 0..<cols {
                let w = Double(E.widen(row[c]))
                energy[c] = w * w
            }
        }
        for (slot, offset) in offsets.enumerated() {
            let ranks = s.ranks + slot * cols
            let bins = sums + offset
            for c in 0..<cols { bins[Int(ranks[c])] += energy[c] }
        }
        if !plan.pruned.isEmpty {
            let bins = sums + unstructuredOffset
            for c in 0..<cols { bins[Int(s.firstLevel[c])] += energy[c] }
        }
    }
}
