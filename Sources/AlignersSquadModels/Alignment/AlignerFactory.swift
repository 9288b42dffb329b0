import AlignersEngine
import Foundation
import Synchronization
import AlignersCore
import AlignersKernels

/// Builds the aligner a criterion file asks for, sharing one engine per model file between all the
/// aligners it makes (see `CompletionEngine` on why sharing is safe).
///
///     let factory = AlignerFactory(modelsDir: modelsDir, compute: compute)
///     let aligner = try factory.make(for: try CriteriaLibrary(searchDir: criteriaDir).load("ethical"))
public final class AlignerFactory: @unchecked Sendable {
    public let modelsDir: String?
    /// Replaces the criterion's `default` decoder (e.g. `--aligner-model other.gguf`).
    public let defaultModelOverride: String?
    public let maxBatch: Int
    /// Where the engines compute.
    public let compute: ComputeContext
    private struct Loaded {
        var engines: [String: TextGenerator] = [:]
        var adapters: [String: LoRAAdapter] = [:]
    }
    private let loaded = Mutex(Loaded())

    public init(modelsDir: String? = nil, defaultModel: String? = nil, maxBatch: Int = 64, compute: ComputeContext) {
        self.modelsDir = modelsDir
        defaultModelOverride = defaultModel
        self.maxBatch = maxBatch
        self.compute = compute
    }

    /// The GGUF file serving a criterion: `default` (or the override) through `ModelLocator`; a
    /// path: absolute, beside the criterion file, then through `ModelLocator`.
    public func modelPath(for criterion: Criterion) throws -> String {
        let spec = criterion.aligner
        if spec.usesDefaultModel {
            let m = defaultModelOverride ?? TextGenerator.defaultModel
            if m.hasPrefix("/") || FileManager.default.fileExists(atPath: m) { return m }
            return try ModelLocator.locate(m, explicit: modelsDir).path
        }
        if spec.model.hasPrefix("/") { return spec.model }
        if let file = criterion.file {
            let beside = URL(fileURLWithPath: file).deletingLastPathComponent().appendingPathComponent(spec.model)
            if FileManager.default.fileExists(atPath: beside.path) { return beside.path }
        }
        return try ModelLocator.locate(spec.model, explicit: modelsDir).path
    }

    /// One engine per model file, loaded on first use.
    public func engine(path: String) throws -> TextGenerator {
        let key = URL(fileURLWithPath: path).resolvingSymlinksInPath().path
        return try loaded.withLock { loaded in
            if let e = loaded.engines[key] { return e }
            let e = try TextGenerator(path: key, maxBatch: maxBatch, context: compute)
            loaded.engines[key] = e
            return e
        }
    }

    /// A criterion's adapter directory: absolute, or relative to the criterion file's directory.
    public func adapterPath(for criterion: Criterion) -> String? {
        guard let a = criterion.aligner.adapter else { return nil }
        if a.hasPrefix("/") { return a }
        if let file = criterion.file { return URL(fileURLWithPath: file).absoluteURL.deletingLastPathComponent().appendingPathComponent(a).standardized.path }
        return URL(fileURLWithPath: a).standardized.path
    }

    /// One adapter per directory, loaded on first use and shared by every aligner that names it.
    public func adapter(path: String, for engine: TextGenerator) throws -> LoRAAdapter {
        let key = URL(fileURLWithPath: path).resolvingSymlinksInPath().path + "|" + engine.modelName
        return try loaded.withLock { loaded in
            if let a = loaded.adapters[key] { return a }
            let a = try PEFTAdapter.load(directory: path, model: engine.model.config)
            loaded.adapters[key] = a
            return a
        }
    }

    public func make(for criterion: Criterion) throws -> any Aligner {
        let eng = try engine(path: modelPath(for: criterion))
        switch criterion.aligner.kind {
        case .prompted: return PromptedAligner(criterion: criterion, engine: eng)
        case .trained:
            let adapter = try adapterPath(for: criterion).map { try self.adapter(path: $0, for: eng) }
            return TrainedAligner(criterion: criterion, engine: eng, adapter: adapter)
        }
    }
}
