// swift-tools-version: 6.1
import PackageDescription

// Kernel code needs unchecked arithmetic to vectorise, in debug builds too (the model tests would
// otherwise crawl); everything else keeps Swift's checks.
let kernelFlags: [SwiftSetting] = [.unsafeFlags(["-Ounchecked", "-wmo"])]

let package = Package(
    name: "aligners",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "aligners", targets: ["AlignersCLI"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-protobuf", exact: "1.39.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
    ],
    targets: [
        // C libraries from Debian: libzmq3-dev and libopenblas-dev.
        .systemLibrary(name: "CZeroMQ", pkgConfig: "libzmq", providers: [.apt(["libzmq3-dev"])]),
        .systemLibrary(name: "CBLAS", pkgConfig: "openblas", providers: [.apt(["libopenblas-dev"])]),

        // Code generated from Schemas/ by protoc-gen-swift (committed; `make proto` regenerates).
        .target(name: "AlignersSchema", dependencies: [.product(name: "SwiftProtobuf", package: "swift-protobuf")]),

        // Dense and quantized kernels over OpenBLAS.
        .target(name: "AlignersKernels", dependencies: ["CBLAS"], swiftSettings: kernelFlags),

        // File formats, tokenizers, architectures, generation.
        .target(name: "AlignersModels", dependencies: ["AlignersKernels"], swiftSettings: kernelFlags),

        // Criteria, the model protocols and the squad policy: no sockets, no models.
        .target(name: "AlignersCore"),

        // ZeroMQ transport, router, workers, the filter's source and sink, lifecycle.
        .target(name: "AlignersPipeline", dependencies: [
            "CZeroMQ", "AlignersSchema", "AlignersCore",
            .product(name: "Logging", package: "swift-log"),
            .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
        ]),

        // The `aligners` executable: parses arguments and wires modules.
        .executableTarget(name: "AlignersCLI", dependencies: [
            "AlignersCore", "AlignersPipeline", "AlignersModels",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
            .product(name: "Logging", package: "swift-log"),
        ]),

        .testTarget(name: "AlignersCoreTests", dependencies: ["AlignersCore"]),
        .testTarget(name: "AlignersModelsTests", dependencies: ["AlignersModels", "AlignersKernels"],
                    resources: [.copy("Fixtures")]),
        .testTarget(name: "AlignersPipelineTests", dependencies: ["AlignersPipeline", "AlignersCore", "AlignersSchema"]),
    ]
)
