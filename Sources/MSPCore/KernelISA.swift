// KernelISA: the instruction sets of the compressed N:M product's kernels and the run-time choice.

import CMSPKernels

/// An instruction set the `NMLinear` kernels are written for. All of them compute the same result,
/// bit for bit; they differ only in speed.
public enum KernelISA: Int32, Sendable, CaseIterable, CustomStringConvertible {
    /// Plain C: any machine (the aarch64 path).
    case portable = 0
    /// x86-64-v3: AVX2 and FMA (the least an x86-64 build of msp runs on).
    case avx2 = 1
    /// AVX-512 F, BW, VL, DQ, VBMI2 (`vpexpandw`), BITALG and VPOPCNTDQ.
    case avx512 = 2

    /// The instruction sets this CPU runs, in increasing order.
    public static var supported: [KernelISA] { allCases.filter { $0.rawValue <= mspk_isa_supported() } }

    /// The instruction set `NMLinear` uses by default: the best one this CPU supports, capped by
    /// the environment variable `MSP_ISA` ("avx512", "avx2" or "portable") read once per process.
    public static var selected: KernelISA { KernelISA(rawValue: mspk_isa_selected()) ?? .portable }

    /// "avx512", "avx2" or "portable".
    public var description: String {
        switch self {
        case .portable: "portable"
        case .avx2: "avx2"
        case .avx512: "avx512"
        }
    }

    /// Runs this instruction set's kernel on a job; the CPU must support it.
    /// - Returns: -1, or the first row of the job whose index failed the kernel's check.
    func run(_ job: UnsafePointer<mspk_nm_rows>) -> Int64 {
        switch self {
        case .portable: mspk_nm_rows_portable(job)
        case .avx2: mspk_nm_rows_avx2(job)
        case .avx512: mspk_nm_rows_avx512(job)
        }
    }
}
