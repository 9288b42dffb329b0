import AlignersCore
import AlignersModels
import AlignersPipeline
import ArgumentParser
import Foundation

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
}

/// Builds the model behind each stage: the one place that knows which model serves which role.
/// Models are loaded once and shared (one encoder file, one decoder engine per GGUF).
final class ModelCatalog: @unchecked Sendable {
    let options: ModelOptions
    private lazy var criteria = CriteriaLibrary(searchDir: options.criteriaDir)
    private lazy var aligners = AlignerFactory(modelsDir: options.modelsDir, defaultModel: options.alignerModel)

    init(_ options: ModelOptions) { self.options = options }

    func criterion(_ name: String) throws -> Criterion { try criteria.load(name) }

    func inspector(for name: String) throws -> any Inspector {
        let criterion = try criterion(name)
        return try EncoderInspector.load(criterion: criterion.inspector.headName, modelsDir: options.modelsDir,
                                         inspectorsDir: options.inspectorsDir)
    }

    func aligner(for name: String) throws -> any Aligner {
        try aligners.make(for: try criterion(name))
    }

    func generator() throws -> any Generator {
        let path: String
        if let model = options.generatorModel {
            path = FileManager.default.fileExists(atPath: model) ? model
                : try ModelLocator.locate(model, explicit: options.modelsDir).path
        } else {
            path = try ModelLocator.locate(TextGenerator.defaultModel, explicit: options.modelsDir).path
        }
        return LLMGenerator(engine: try aligners.engine(path: path), maxNewTokens: options.generatorMaxTokens)
    }

    /// The stage handler for a worker role.
    func handler(role: WorkerRole, criterion: String?) throws -> any StageHandler {
        switch role {
        case .inspector: InspectorStage(try inspector(for: criterion!))
        case .aligner: AlignerStage(try aligner(for: criterion!))
        case .generator: GeneratorStage(try generator())
        }
    }
}

enum WorkerRole: String, CaseIterable, ExpressibleByArgument {
    case inspector, aligner, generator
}
