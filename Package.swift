// swift-tools-version: 6.1
import PackageDescription
import Foundation

// Kernel code needs unchecked arithmetic to vectorise, in debug builds too (the model tests would
// otherwise crawl); everything else keeps Swift's checks.
//
// The kernels also need a CPU target, or SIMD fused multiply-adds become one libm call per lane.
// Our machines are AMD Zen 4; `haswell` (AVX2 + FMA) runs on any x86-64 from 2013 on and gets most of
// the speed. Override with ALIGNERS_TARGET_CPU (e.g. `znver4` for AVX-512, `native`, or `none` to
// build without a target CPU, e.g. on non-x86 hosts).
let targetCPU: String = {
    if let cpu = ProcessInfo.processInfo.environment["ALIGNERS_TARGET_CPU"], !cpu.isEmpty { return cpu }
    #if arch(x86_64)
    return "haswell"
    #else
    return "none"
    #endif
}()
// `-wmo` only in release: in debug builds SwiftPM's index store refuses whole-module mode for
// targets of more than one file ("index output filenames do not match input source files").
let kernelFlags: [SwiftSetting] = [
    .unsafeFlags(["-Ounchecked"] + (targetCPU == "none" ? [] : ["-target-cpu", targetCPU])),
    .unsafeFlags(["-wmo"], .when(configuration: .release)),
]

// The VNNI kernels (AlignersVNNI) are always compiled for Zen 4 (AVX-512 VNNI) on x86-64 and
// called only when the CPU has that feature set (checked at run time, `QuantKernels.vnniSupported`);
// `-parse-stdlib` gives them LLVM's `vpdpbusd` intrinsic.
let vnniFlags: [SwiftSetting] = {
    #if arch(x86_64)
    let cpu = ["-target-cpu", "znver4"]
    #else
    let cpu: [String] = []
    #endif
    return [.unsafeFlags(["-parse-stdlib", "-Ounchecked"] + cpu), .unsafeFlags(["-wmo"], .when(configuration: .release))]
}()

// The router's hot path: dynamic exclusivity checks cost ~6% of its time (measured with perf) and
// guard nothing its single-threaded state needs.
let hotPathFlags: [SwiftSetting] = [.unsafeFlags(["-enforce-exclusivity=unchecked"], .when(configuration: .release))]

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
        .package(url: "https://github.com/jpsim/Yams", from: "6.2.2"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.1"),
    ],
    targets: [
        // C libraries from Debian: libzmq3-dev, libopenblas-dev and zlib1g-dev.
        .systemLibrary(name: "CZeroMQ", pkgConfig: "libzmq", providers: [.apt(["libzmq3-dev"])]),
        .systemLibrary(name: "CBLAS", pkgConfig: "openblas", providers: [.apt(["libopenblas-dev"])]),
        .systemLibrary(name: "CZlib", pkgConfig: "zlib", providers: [.apt(["zlib1g-dev"])]),

        // Code generated from Schemas/ by protoc-gen-swift (committed; `make proto` regenerates).
        .target(name: "AlignersSchema", dependencies: [.product(name: "SwiftProtobuf", package: "swift-protobuf")],
                swiftSettings: hotPathFlags),

        // Dense and quantized kernels over OpenBLAS.
        .target(name: "AlignersKernels", dependencies: ["CBLAS", "AlignersVNNI"], swiftSettings: kernelFlags),
        .target(name: "AlignersVNNI", swiftSettings: vnniFlags),

        // The inference engine: file formats, tokenizers, the engine layer, architectures, generation.
        .target(name: "AlignersEngine", dependencies: ["AlignersKernels", "AlignersCore"], swiftSettings: kernelFlags),

        // The squad's models on the engine: inspectors (heads, fine-tuned sets) and aligners
        // (trained, prompted), and the criteria files that name them.
        .target(name: "AlignersSquadModels", dependencies: ["AlignersEngine", "AlignersKernels", "AlignersCore",
                                                            .product(name: "Yams", package: "Yams")],
                swiftSettings: kernelFlags),

        // Generators behind other servers: an OpenAI-compatible chat completions client.
        .target(name: "AlignersBackends", dependencies: ["AlignersCore"]),

        // LoRA training of the decoder and the encoder: backward passes, optimiser, data,
        // checkpoints (beside the inference engine, which serves what it trains).
        .target(name: "AlignersTraining", dependencies: ["AlignersEngine", "AlignersSquadModels", "AlignersKernels", "AlignersCore"],
                swiftSettings: kernelFlags),

        // Judges, reference checks, reports and charts for `aligners eval`.
        .target(name: "AlignersEvaluation", dependencies: ["AlignersEngine", "AlignersSquadModels", "AlignersKernels", "AlignersCore",
                                                           "CZlib"]),

        // Criteria, the model protocols and the squad policy: no sockets, no models.
        .target(name: "AlignersCore"),

        // ZeroMQ transport, router, workers, the filter's source and sink, lifecycle.
        .target(name: "AlignersPipeline", dependencies: [
            "CZeroMQ", "AlignersSchema", "AlignersCore",
            .product(name: "Logging", package: "swift-log"),
            .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            .product(name: "UnixSignals", package: "swift-service-lifecycle"),
            .product(name: "Metrics", package: "swift-metrics"),
            .product(name: "Prometheus", package: "swift-prometheus"),
            .product(name: "Hummingbird", package: "hummingbird"),
        ], swiftSettings: hotPathFlags),

        // The `aligners` executable: parses arguments and wires modules.
        .executableTarget(name: "AlignersCLI", dependencies: [
            "AlignersCore", "AlignersPipeline", "AlignersEngine", "AlignersSquadModels", "AlignersBackends", "AlignersEvaluation",
            "AlignersTraining", "AlignersKernels",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
            .product(name: "Yams", package: "Yams"),
            .product(name: "Logging", package: "swift-log"),
        ]),

        // The pipeline benchmark (router + no-op workers beside raw ZeroMQ); see BENCHMARKS.md.
        .executableTarget(name: "aligners-bench", dependencies: [
            "AlignersPipeline", "AlignersCore", "AlignersSchema", "CZeroMQ", .product(name: "Logging", package: "swift-log"),
        ], path: "Sources/AlignersBench"),

        .testTarget(name: "AlignersCoreTests", dependencies: ["AlignersCore"]),
        .testTarget(name: "AlignersEvaluationTests", dependencies: ["AlignersEvaluation", "AlignersEngine", "AlignersSquadModels", "CZlib"]),
        // The model modules' tests: engine, squad models, backends.
        .testTarget(name: "AlignersModelsTests", dependencies: ["AlignersEngine", "AlignersSquadModels", "AlignersBackends", "AlignersKernels"],
                    resources: [.copy("Fixtures")]),
        .testTarget(name: "AlignersTrainingTests", dependencies: ["AlignersTraining", "AlignersEngine", "AlignersSquadModels", "AlignersKernels",
                                                          "AlignersCore"],
                    resources: [.copy("Fixtures")]),
        .testTarget(name: "AlignersPipelineTests",
                    dependencies: ["AlignersPipeline", "AlignersCore", "AlignersSchema", "CZeroMQ", "PipelineTestDoubles"]),
        // Test doubles for the pipeline's plumbing, and a worker process serving them (tests only).
        .target(name: "PipelineTestDoubles", dependencies: ["AlignersCore"], path: "Tests/PipelineTestDoubles"),
        .executableTarget(name: "aligners-testworker",
                          dependencies: ["AlignersPipeline", "AlignersSchema", "CZeroMQ", "PipelineTestDoubles",
                                         .product(name: "Logging", package: "swift-log"),
                                         .product(name: "SwiftProtobuf", package: "swift-protobuf")],
                          path: "Tests/TestWorker"),
    ]
)
