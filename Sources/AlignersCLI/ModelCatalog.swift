import AlignersKernels
import AlignersCore
import AlignersBackends
import AlignersEngine
import AlignersSquadModels
import AlignersPipeline
import ArgumentParser
import Foundation
import Synchronization

/// Where models and criteria come from; shared by `filter` and `worker`.
struct ModelOptions: ParsableArguments {
    @Option(help: "Directory holding model packages (default: $ALIGNERS_MODELS_DIR, ./models, the checkout's models/).")
    var modelsDir: String?
    @Option(help: "Directory holding criterion files (default: $ALIGNERS_CRITERIA_DIR, ./Criteria, the checkout's Criteria/).")
    var criteriaDir: String?
    @Option(help: "Directory holding trained inspector heads (default: $ALIGNERS_INSPECTORS_DIR, ./inspectors, the checkout's inspectors/).")
    var inspectorsDir: String?
    @Option(help: "GGUF for aligners whose criterion names the default decoder (default: SmolLM2-135M-Instruct).")
    var alignerModel: String?
    @Option(help: "GGUF for the generator stage (default: the aligners' decoder).")
    var generatorModel: String?
    @Option(help: "Most tokens the generator writes per response.")
    var generatorMaxTokens = 256
    @Option(help: "Repetition penalty of the embedded generator over its last 64 tokens (llama.cpp's rule; 1 = off). Greedy decoding of the 135M default model otherwise loops (\"a fleeting moment of beauty, a fleeting moment of beauty, …\").")
    var generatorRepeatPenalty: Float = 1.1
    @Option(help: "OpenAI-compatible chat-completions server for the generator stage (e.g. http://localhost:8000 or https://api.openai.com/v1); the embedded decoder when unset.")
    var backend: String?
    @Option(help: "Model name sent to --backend.")
    var backendModel = "gpt-4o-mini"
    @Option(help: "Environment variable holding the --backend API key (default: OPENAI_API_KEY).")
    var apiKeyEnv: String?
    @Option(help: "File holding the --backend API key (wins over --api-key-env).")
    var apiKeyFile: String?
    @Option(help: "Seconds per --backend request.")
    var backendTimeout: Double = 60
    @Option(help: "Retries per --backend request on connection errors, timeouts, 429 and 5xx (exponential backoff).")
    var backendRetries = 3
    @Option(help: "Most --backend requests in flight per batch.")
    var backendConcurrency = 8
}

/// Builds the model behind each stage: the one place that knows which model serves which role.
/// Models are loaded once and shared (one encoder file, one decoder engine per GGUF).
final class ModelCatalog: @unchecked Sendable {
    let options: ModelOptions
    /// Where every model of the process computes (one pool for the decoder and the encoder).
    let compute: ComputeContext
    private lazy var criteria = CriteriaLibrary(searchDir: options.criteriaDir)
    private lazy var aligners = AlignerFactory(modelsDir: options.modelsDir, defaultModel: options.alignerModel, compute: compute)

    init(_ options: ModelOptions, compute: ComputeContext) {
        self.options = options
        self.compute = compute
    }

    func criterion(_ name: String) throws -> Criterion { try criteria.load(name) }

    private lazy var inspectors = InspectorLoader(modelsDir: options.modelsDir, inspectorsDir: options.inspectorsDir, pool: compute.pool)

    func inspector(for name: String) throws -> any Inspector {
        let criterion = try criterion(name)
        return try inspectors.inspector(criterion: criterion.name, head: criterion.inspector.headName)
    }

    /// The inspectors of several criteria as one set: one encoder pass per exchange for the criteria
    /// whose inspectors share a model.
    func inspectors(for names: [String]) throws -> any InspectorSet {
        try inspectors.set(try names.map { name in
            let criterion = try criterion(name)
            return (criterion.name, criterion.inspector.headName)
        })
    }

    func aligner(for name: String) throws -> any Aligner {
        try aligners.make(for: try criterion(name))
    }

    func generator() throws -> any Generator {
        if let backend = options.backend {
            guard let url = URL(string: backend), url.scheme == "http" || url.scheme == "https", url.host != nil else {
                throw ValidationError("--backend must be an http(s) URL, got \(backend)")
            }
            let key = try OpenAIBackendSettings.resolveAPIKey(env: options.apiKeyEnv, file: options.apiKeyFile)
            return OpenAIChatGenerator(settings: OpenAIBackendSettings(
                baseURL: url, model: options.backendModel, apiKey: key, timeout: options.backendTimeout,
                maxRetries: options.backendRetries, concurrency: options.backendConcurrency,
                maxTokens: options.generatorMaxTokens))
        }
        let path: String
        if let model = options.generatorModel {
            path = FileManager.default.fileExists(atPath: model) ? model
                : try ModelLocator.locate(model, explicit: options.modelsDir).path
        } else {
            path = try ModelLocator.locate(TextGenerator.defaultModel, explicit: options.modelsDir).path
        }
        guard options.generatorRepeatPenalty > 0 else {
            throw ValidationError("--generator-repeat-penalty must be positive (1 = off), got \(options.generatorRepeatPenalty)")
        }
        return LLMGenerator(engine: try aligners.engine(path: path), maxNewTokens: options.generatorMaxTokens,
                            sampling: SamplingParameters(repeatPenalty: options.generatorRepeatPenalty))
    }

    /// The stage handler for a worker role.
    func handler(role: WorkerRole, criterion: String?, criteria: [String]) throws -> any StageHandler {
        switch role {
        case .inspector: InspectorStage(try inspectors(for: criteria))
        case .aligner: AlignerStage(try aligner(for: criterion!))
        case .generator: GeneratorStage(try generator())
        }
    }
}

/// Loads inspectors by the head their criterion names: a frozen-feature head (`inspectors/ethical`),
/// or fine-tuned inspectors (`inspectors/fine-tuned`, one file for several criteria) whose criteria
/// share one merged encoder and one pass per exchange.
final class InspectorLoader: Sendable {
    let modelsDir: String?
    let inspectorsDir: String?
    let pool: ComputePool
    private let fineTuned = Mutex<[String: FineTunedInspectors]>([:])
    /// Frozen-feature heads of one directory share one featurizer (one encoder in memory).
    private let featurizers: FeaturizerPool

    init(modelsDir: String?, inspectorsDir: String?, pool: ComputePool) {
        self.modelsDir = modelsDir
        self.inspectorsDir = inspectorsDir
        self.pool = pool
        featurizers = FeaturizerPool(pool: pool)
    }

    func inspector(criterion: String, head: String) throws -> any Inspector {
        let url = try InspectorStore.locate(criterion: head, explicit: inspectorsDir)
        guard FineTunedInspectors.isFineTuned(try SafetensorsFile(path: url.path)) else {
            return try EncoderInspector.load(criterion: head, modelsDir: modelsDir, inspectorsDir: inspectorsDir, featurizers: featurizers)
                .renamed(criterion)
        }
        return try fineTunedInspectors(url).inspector(for: criterion)
    }

    /// The inspectors of (criterion, head) pairs as one set: criteria of one fine-tuned file share
    /// its pass, frozen heads share their featurizer's, and each group runs once per batch.
    func set(_ criteria: [(criterion: String, head: String)]) throws -> any InspectorSet {
        var fineTunedGroups: [(FineTunedInspectors, [String])] = []
        var heads: [EncoderInspector] = []
        for (criterion, head) in criteria {
            let url = try InspectorStore.locate(criterion: head, explicit: inspectorsDir)
            if FineTunedInspectors.isFineTuned(try SafetensorsFile(path: url.path)) {
                let file = try fineTunedInspectors(url)
                _ = try file.inspector(for: criterion)   // says which criteria the file has, if not this one
                if let i = fineTunedGroups.firstIndex(where: { $0.0 === file }) { fineTunedGroups[i].1.append(criterion) } else { fineTunedGroups.append((file, [criterion])) }
            } else {
                let inspector = try EncoderInspector.load(criterion: head, modelsDir: modelsDir, inspectorsDir: inspectorsDir,
                                                          featurizers: featurizers)
                heads.append(inspector.renamed(criterion))
            }
        }
        var parts: [any InspectorSet] = try fineTunedGroups.map { try $0.0.subset($0.1) }
        if !heads.isEmpty { parts.append(EncoderInspectorSet(inspectors: heads)) }
        return parts.count == 1 ? parts[0] : InspectorGroup(parts)
    }

    private func fineTunedInspectors(_ url: URL) throws -> FineTunedInspectors {
        let key = url.standardizedFileURL.path
        return try fineTuned.withLock { fineTuned in
            if let s = fineTuned[key] { return s }
            let s = try FineTunedInspectors(file: url, modelsDir: modelsDir, pool: pool)
            fineTuned[key] = s
            return s
        }
    }
}

enum WorkerRole: String, CaseIterable, ExpressibleByArgument {
    case inspector, aligner, generator
}
