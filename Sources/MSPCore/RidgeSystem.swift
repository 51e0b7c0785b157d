// RidgeSystem: the normal equations of a ridge regression on one-hot (unit, level) features plus
// an intercept and dense columns, solved directly (Cholesky) or by preconditioned conjugate gradients.

/// The regression y ~ c + sum_j a_j * column_j + sum_u w[index(u)] over `rows` observations, each
/// of which selects one cell per unit, with penalty `ridge` * |w|^2 + `columnPenalty` * |a|^2.
///
/// The unknowns are ordered [c, a_1 .. a_J, w_1 .. w_cells]. `solve` forms the normal matrix and
/// factorises it when that is cheaper than conjugate gradients, else iterates without forming it
/// (one gather and one scatter over the selected cells per iteration) for at most
/// `iterationLimit` iterations, which bounds the work of one solve by about `workLimit` cell
/// visits. Every sum runs in a fixed order: the solution depends only on the inputs.
struct RidgeSystem {
    /// Observations.
    let rows: Int
    /// Cells selected per observation.
    let units: Int
    /// Number of one-hot cells.
    let cells: Int
    /// The selected cells, `units` per observation, observation after observation.
    let index: [Int]
    /// Dense columns, `rows` values each.
    let columns: [[Double]]
    /// Penalty on the cell weights (> 0).
    let ridge: Double
    /// Penalty on the dense columns' coefficients (> 0).
    let columnPenalty: Double
    /// Observations per cell.
    let counts: [Double]

    /// Relative residual at which conjugate gradients stop.
    static let tolerance = 1e-8
    /// The most unknowns solved directly (the matrix then takes at most 2 MiB).
    static let maxDirect = 512
    /// About the most cell visits of the conjugate gradients of one solve (beyond their first 32
    /// iterations).
    static let workLimit = 1 << 26

    /// A system over the given observations.
    init(rows: Int, units: Int, cells: Int, index: [Int], columns: [[Double]], ridge: Double, columnPenalty: Double) {
        self.rows = rows
        self.units = units
        self.cells = cells
        self.index = index
        self.columns = columns
        self.ridge = ridge
        self.columnPenalty = columnPenalty
        var counts = [Double](repeating: 0, count: cells)
        for f in index { counts[f] += 1 }
        self.counts = counts
    }

    /// Number of unknowns.
    var dimension: Int { 1 + columns.count + cells }

    /// Cells, columns and the intercept visited per observation.
    private var width: Int { units + columns.count + 1 }

    /// The most iterations of `iterative`: two per unknown (enough to converge in practice), at
    /// most `workLimit` cell visits, at least 32.
    var iterationLimit: Int { min(2 * dimension, max(32, Self.workLimit / max(1, 2 * rows * width))) }

    /// Whether `solve` factorises: the matrix is small enough and forming plus factorising it costs
    /// less than the conjugate gradients' iterations.
    var isDirect: Bool {
        let n = Double(dimension), r = Double(rows), w = Double(width)
        return dimension <= Self.maxDirect && r * w * w + n * n * n / 3 <= 2 * r * w * Double(iterationLimit)
    }

    /// The penalised least-squares solution for the observations `y`.
    func solve(_ y: [Double]) -> [Double] {
        if isDirect, let x = direct(y) { return x }
        return iterative(y)
    }

    /// X^T v for an observation-space vector v.
    func transposed(_ v: [Double]) -> [Double] {
        var out = [Double](repeating: 0, count: dimension)
        let base = 1 + columns.count
        for i in 0..<rows {
            out[0] += v[i]
            for f in index[(i * units)..<((i + 1) * units)] { out[base + f] += v[i] }
        }
        for (j, column) in columns.enumerated() {
            var sum = 0.0
            for i in 0..<rows { sum += column[i] * v[i] }
            out[1 + j] = sum
        }
        return out
    }

    /// The diagonal of the penalty.
    private var penalty: [Double] {
        [0] + [Double](repeating: columnPenalty, count: columns.count) + [Double](repeating: ridge, count: cells)
    }

    /// (X^T X + penalty) x, without forming X^T X.
    func apply(_ x: [Double]) -> [Double] {
        let base = 1 + columns.count
        var z = [Double](repeating: x[0], count: rows)
        for (j, column) in columns.enumerated() {
            for i in 0..<rows { z[i] += x[1 + j] * column[i] }
        }
        for i in 0..<rows {
            var sum = 0.0
            for f in index[(i * units)..<((i + 1) * units)] { sum += x[base + f] }
            z[i] += sum
        }
        var out = transposed(z)
        for (i, p) in penalty.enumerated() { out[i] += p * x[i] }
        return out
    }

    /// The normal matrix X^T X + penalty, `dimension` x `dimension`, row-major (lower triangle and
    /// diagonal filled).
    func normalMatrix() -> [Double] {
        let n = dimension, base = 1 + columns.count
        var g = [Double](repeating: 0, count: n * n)
        var features = [Int](repeating: 0, count: units)
        for i in 0..<rows {
            for u in 0..<units { features[u] = base + index[i * units + u] }
            g[0] += 1
            for (j, column) in columns.enumerated() {
                g[(1 + j) * n] += column[i]
                for j2 in 0...j { g[(1 + j) * n + 1 + j2] += column[i] * columns[j2][i] }
            }
            for f in features {
                g[f * n] += 1
                for (j, column) in columns.enumerated() { g[f * n + 1 + j] += column[i] }
                for f2 in features where f2 <= f { g[f * n + f2] += 1 }
            }
        }
        for (i, p) in penalty.enumerated() { g[i * n + i] += p }
        return g
    }

    /// Solves by Cholesky factorisation of the normal matrix; nil if a pivot is not positive.
    func direct(_ y: [Double]) -> [Double]? {
        let n = dimension
        var l = normalMatrix()
        let factorised = l.withUnsafeMutableBufferPointer { l -> Bool in
            guard let base = l.baseAddress else { return false }
            for j in 0..<n {
                let rowJ = base + j * n
                let d = rowJ[j] - Self.dot(rowJ, rowJ, j)
                guard d > 0, d.isFinite else { return false }
                let pivot = d.squareRoot()
                rowJ[j] = pivot
                for i in (j + 1)..<max(j + 1, n) {
                    let rowI = base + i * n
                    rowI[j] = (rowI[j] - Self.dot(rowI, rowJ, j)) / pivot
                }
            }
            return true
        }
        guard factorised else { return nil }
        var x = transposed(y)
        for i in 0..<n {  // L z = b
            var s = x[i]
            for k in 0..<i { s -= l[i * n + k] * x[k] }
            x[i] = s / l[i * n + i]
        }
        for i in stride(from: n - 1, through: 0, by: -1) {  // L^T x = z
            var s = x[i]
            for k in (i + 1)..<max(i + 1, n) { s -= l[k * n + i] * x[k] }
            x[i] = s / l[i * n + i]
        }
        return x
    }

    /// Solves by conjugate gradients preconditioned with the diagonal, from zero, until the residual
    /// is at most `tolerance` times the right-hand side or after `iterationLimit` iterations.
    func iterative(_ y: [Double]) -> [Double] {
        let b = transposed(y)
        let inverse = zip([Double(rows)] + columns.map { $0.reduce(0.0) { $0 + $1 * $1 } } + counts, penalty).map {
            1 / ($0 + $1)
        }
        var x = [Double](repeating: 0, count: dimension)
        var r = b
        let limit = Self.tolerance * Self.tolerance * dot(b, b)
        guard limit > 0 else { return x }
        var z = zip(r, inverse).map { $0 * $1 }
        var p = z
        var rz = dot(r, z)
        for _ in 0..<iterationLimit {
            let q = apply(p)
            let pq = dot(p, q)
            guard pq > 0 else { break }
            let alpha = rz / pq
            for i in 0..<dimension {
                x[i] += alpha * p[i]
                r[i] -= alpha * q[i]
            }
            if dot(r, r) <= limit { break }
            for i in 0..<dimension { z[i] = r[i] * inverse[i] }
            let next = dot(r, z)
            let beta = next / rz
            rz = next
            for i in 0..<dimension { p[i] = z[i] + beta * p[i] }
        }
        return x
    }

    /// a[0] * b[0] + ... + a[n-1] * b[n-1], summed in four lanes (a fixed order), then across them.
    private static func dot(_ a: UnsafePointer<Double>, _ b: UnsafePointer<Double>, _ n: Int) -> Double {
        var lanes = SIMD4<Double>()
        var k = 0
        while k + 4 <= n {
            lanes += UnsafeRawPointer(a + k).loadUnaligned(as: SIMD4<Double>.self)
                * UnsafeRawPointer(b + k).loadUnaligned(as: SIMD4<Double>.self)
            k += 4
        }
        var sum = (lanes[0] + lanes[1]) + (lanes[2] + lanes[3])
        while k < n {
            sum += a[k] * b[k]
            k += 1
        }
        return sum
    }

    private func dot(_ a: [Double], _ b: [Double]) -> Double {
        var sum = 0.0
        for i in 0..<a.count { sum += a[i] * b[i] }
        return sum
    }
}
