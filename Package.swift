// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "msp",
    products: [
        // The shared library `libmsp.so` that C programs and the Python package load.
        .library(name: "msp", type: .dynamic, targets: ["MSP"]),
        // The Swift API of the core algorithms.
        .library(name: "MSPCore", targets: ["MSPCore"]),
    ],
    targets: [
        .systemLibrary(
            name: "CMSPBLAS",
            pkgConfig: "openblas",
            providers: [.apt(["libopenblas-dev"])]
        ),
        // C helpers of the C ABI: thread-local error text, and the version string built from the header.
        .target(name: "CMSPSupport"),
        // `include/msp.h` as a module: the C ABI target implements exactly these declarations. The
        // header is also the single source of the limit and version macros (MSP_MAX_M, ...), so the
        // core depends on it for those constants only (header-only: nothing is linked).
        .systemLibrary(name: "CMSPHeader"),
        // CPU hints (header-only): software prefetch for the streaming kernels, the spin-wait pause.
        .systemLibrary(name: "CMSPPrefetch"),
        // The instruction-set-specific row kernels of msp_nm_linear, chosen at run time.
        .target(name: "CMSPKernels"),
        .target(name: "MSPCore", dependencies: ["CMSPBLAS", "CMSPPrefetch", "CMSPHeader", "CMSPKernels"]),
        .target(name: "MSP", dependencies: ["MSPCore", "CMSPSupport", "CMSPHeader"]),
        .testTarget(name: "MSPCoreTests", dependencies: ["MSPCore", "CMSPHeader", "CMSPKernels"]),
        .testTarget(name: "MSPTests", dependencies: ["MSP", "MSPCore", "CMSPHeader"]),
    ],
    swiftLanguageModes: [.v6]
)
