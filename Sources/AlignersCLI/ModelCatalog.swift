import AlignersCore
import AlignersPipeline
import ArgumentParser
import Foundation

/// Builds the model behind each stage. The one place that knows which model serves which role.
struct ModelCatalog {
    var modelsDir: String?

    struct Unavailable: Error, CustomStringConvertible {
        let description: String
    }

    func inspector(for criterion: String) throws -> any Inspector {
        throw Unavailable(description: "no inspector model for '\(criterion)' is available in this build")
    }

    func aligner(for criterion: String) throws -> any Aligner {
        throw Unavailable(description: "no aligner model for '\(criterion)' is available in this build")
    }

    func generator() throws -> any Generator {
        throw Unavailable(description: "no generator model is available in this build")
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
