// CostTable+Reconstruction: the output reconstruction error of every level, from blocks of pruned
// rows times the Gram matrix (BLAS).

import CMSPBLAS

extension CostTable.Kernel {
    /// tr(dW H dWᵀ) per level.
    func reconstruction(_ gram: UnsafeBufferPointer<Float>, _ blockFloats: Int) throws -> [Double] {
        var costs = [Double](repeating: 0, count: plan.kinds.count)
        let active = plan.kinds.indices.filter { plan.kinds[$0] != .none }
        guard !active.isEmpty, let h = gram.baseAddress else { return costs }
        var kernel = self
        try kernel.findLayerCuts()
        let stacked = active.count
        // Rows per block: all active levels' copies of a block of rows stacked into one product.
        let blockRows = max(1, min(rows, blockFloats / (stacked * cols)))
        let maxRows = stacked * blockRows
        var totals = [Double](repeating: 0, count: stacked)
        let kinds = active.map { plan.kinds[$0] }
        try withScratch(Float.self, maxRows * cols) { delta in
            try withScratch(Float.self, maxRows * cols) { product in
                try withScratch(Double.self, maxRows) { dots in
                    for r0 in stride(from: 0, to: rows, by: blockRows) {
                        let n = min(blockRows, rows - r0)
                        // dW: row (t * n + i) is row r0 + i pruned at active level t.
                        _ = try Threads.map(n, minimumPerThread: max(1, 16384 / cols)) { range in
                            try kernel.withRowScratch { s in
                                for i in range {
                                    kernel.classify(row: r0 + i, s)
                                    kernel.writePruned(row: r0 + i, s, kinds: kinds, into: delta + i * cols, stride: n * cols)
                                }
                            }
                        }
                        let m = Int32(stacked * n), k = Int32(cols)
                        cblas_sgemm(
                            CblasRowMajor, CblasNoTrans, CblasNoTrans, m, k, k, 1, delta, k, h, k, 0, product, k)
                        _ = try Threads.map(stacked * n, minimumPerThread: max(1, 16384 / cols)) { range in
                            for t in range {
                                let a = delta + t * cols, b = product + t * cols
                                var sum = 0.0
                                for c in 0..<cols { sum += Double(a[c]) * Double(b[c]) }
                                dots[t] = sum
                            }
                        }
                        for t in 0..<stacked {
                            var sum = 0.0
                            for i in 0..<n { sum += dots[t * n + i] }
                            totals[t] += sum
                        }
                    }
                }
            }
        }
        for (t, k) in active.enumerated() { costs[k] = totals[t] }
        return costs
    }

    /// Writes row `r`'s pruned part at every active level: level t's row goes to `out + t * stride`.
    @inline(__always)
    func writePruned(
        row r: Int, _ s: RowScratch, kinds: [LevelPlan.Kind], into out: UnsafeMutablePointer<Float>, stride: Int
    ) {
        let row = data + r * cols
        let values = s.values
        for c in 0..<cols { values[c] = E.widen(row[c]) }
        for (t, kind) in kinds.enumerated() {
            let dst = out + t * stride
            switch kind {
            case .none:
                for c in 0..<cols { dst[c] = 0 }
            case .nm(let slot, let n):
                let ranks = s.ranks + slot * cols
                for c in 0..<cols { dst[c] = Int(ranks[c]) >= n ? values[c] : 0 }
            case .unstructured(let index):
                let first = s.firstLevel
                for c in 0..<cols { dst[c] = Int(first[c]) <= index ? values[c] : 0 }
            }
        }
    }
}
