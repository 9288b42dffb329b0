import Foundation
import Testing
import AlignersKernels
import AlignersCore
@testable import AlignersEngine
@testable import AlignersSquadModels

/// The repository's Criteria/ folder, found from this file.
enum CriteriaFolder {
    static let url = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("Criteria")
    static var library: CriteriaLibrary { CriteriaLibrary(directories: [url]) }
}

@Suite struct CriterionTests {
    static let shipped = ["ethical", "factuality", "helpful"]

    @Test(arguments: shipped) func shippedCriteriaLoad(name: String) throws {
        let c = try CriteriaFolder.library.load(name)
        #expect(c.name == name)
        #expect(c.principles.count >= 2)
        #expect(c.demonstrations.contains { $0.isFine })
        #expect(c.demonstrations.filter { !$0.isFine }.count >= 2)
        // The shipped criteria share the fine-tuned inspectors, which hold a head for each of them.
        #expect(c.inspector.head == "inspectors/fine-tuned")
        #expect(c.inspector.headName == "fine-tuned")
        let root = CriteriaFolder.url.deletingLastPathComponent()
        let file = try SafetensorsFile(path: root.appendingPathComponent("inspectors/fine-tuned.safetensors").path)
        #expect(FineTunedInspectors.isFineTuned(file))
        #expect(file.metadata["criteria"]?.split(separator: ",").map(String.init).contains(name) == true)
        #expect(c.aligner.usesDefaultModel)
        if c.aligner.kind == .trained {
            // A shipped trained aligner is an adapter committed beside the criteria, in PEFT's layout.
            let dir = try #require(AlignerFactory(compute: TestCompute.context).adapterPath(for: c))
            #expect(FileManager.default.fileExists(atPath: dir + "/adapter_config.json"))
            #expect(FileManager.default.fileExists(atPath: dir + "/adapter_model.safetensors"))
        }
        let shown = c.promptDemonstrations
        #expect(shown.count == 3 && shown.contains { $0.isFine })
    }

    @Test func libraryListsAndFindsByName() throws {
        #expect(CriteriaFolder.library.available() == Self.shipped)
        #expect(try CriteriaFolder.library.loadAll().map(\.name) == Self.shipped)
        #expect(throws: CriterionNotFound.self) { try CriteriaFolder.library.load("kindness") }
        do {
            _ = try CriteriaFolder.library.locate("kindness")
        } catch {
            #expect("\(error)".contains("kindness.yaml") && "\(error)".contains(CriteriaFolder.url.path))
        }
    }

    @Test func searchOrderExplicitAloneElseTheDefaults() {
        // A directory named on the command line is the only place looked in (no silent fall-back).
        #expect(CriteriaLibrary.searchDirectories(explicit: "/tmp/my-criteria").map(\.path) == ["/tmp/my-criteria"])
        let dirs = CriteriaLibrary.searchDirectories(explicit: nil)
        #expect(dirs.contains { $0.path.hasSuffix("/Criteria") })
        #expect(dirs.last?.path == "/etc/aligners/criteria")
    }

    // MARK: invalid files

    static let valid = """
        name: sample
        description: a test criterion
        principles:
          - Be kind.
          - Be brief.
        demonstrations:
          - question: Q1?
            answer: Bad answer.
            critique: It is unkind.
            violated: [1]
            corrected: Good answer.
          - question: Q2?
            answer: Fine answer.
            critique: It is fine.
            violated: []
            corrected: Fine answer.
        inspector:
          head: inspectors/sample
        aligner:
          kind: prompted
          model: default
        """

    /// Parses `yaml` as file `sample.yaml` and returns the error.
    func failure(_ yaml: String) throws -> CriterionError {
        do {
            _ = try CriteriaLibrary.parse(yaml, file: "sample.yaml", expectedName: "sample")
        } catch let e as CriterionError {
            return e
        }
        Issue.record("expected a CriterionError")
        throw CancellationError()
    }

    @Test func validSampleParses() throws {
        let c = try CriteriaLibrary.parse(Self.valid, file: "sample.yaml", expectedName: "sample")
        #expect(c.principles == ["Be kind.", "Be brief."])
        #expect(c.demonstrations[0].violated == [1])
        #expect(c.file == "sample.yaml")
    }

    @Test func missingField() throws {
        let e = try failure(Self.valid.replacingOccurrences(of: "description: a test criterion\n", with: ""))
        #expect(e.file == "sample.yaml" && e.field == "description" && e.problem == "is missing")
        #expect("\(e)".hasPrefix("sample.yaml:1: description: is missing"))

        let e2 = try failure(Self.valid.replacingOccurrences(of: "    critique: It is unkind.\n", with: ""))
        #expect(e2.field == "demonstrations[0].critique" && e2.problem == "is missing")
        #expect(e2.line == 7)
    }

    @Test func wrongType() throws {
        let e = try failure(Self.valid.replacingOccurrences(of: "principles:\n  - Be kind.\n  - Be brief.", with: "principles: Be kind."))
        #expect(e.field == "principles" && e.problem.contains("must be a list"))
        #expect(e.line == 3)

        let e2 = try failure(Self.valid.replacingOccurrences(of: "violated: [1]", with: "violated: one"))
        #expect(e2.field == "demonstrations[0].violated" && e2.problem.contains("must be a list"))

        let e3 = try failure(Self.valid.replacingOccurrences(of: "violated: [1]", with: "violated: [first]"))
        #expect(e3.field == "demonstrations[0].violated[0]" && e3.problem.contains("must be a principle number"))

        let e4 = try failure(Self.valid.replacingOccurrences(of: "  head: inspectors/sample", with: "  head: [a, b]"))
        #expect(e4.field == "inspector.head" && e4.problem.contains("must be text"))
    }

    @Test func principleIndexOutOfRange() throws {
        let e = try failure(Self.valid.replacingOccurrences(of: "violated: [1]", with: "violated: [1, 3]"))
        #expect(e.file == "sample.yaml")
        #expect(e.field == "demonstrations[0].violated[1]")
        #expect(e.problem.contains("principle 3 does not exist") && e.problem.contains("2 principles"))
        #expect(e.line == 10)
        let e0 = try failure(Self.valid.replacingOccurrences(of: "violated: [1]", with: "violated: [0]"))
        #expect(e0.problem.contains("principle 0 does not exist"))
    }

    @Test func noFineDemonstration() throws {
        let yaml = Self.valid.replacingOccurrences(of: "violated: []\n    corrected: Fine answer.", with: "violated: [2]\n    corrected: Shorter.")
        let e = try failure(yaml)
        #expect(e.field == "demonstrations" && e.problem.contains("already fine"))
    }

    @Test func inconsistentDemonstrations() throws {
        // Fine, but the correction differs.
        let e = try failure(Self.valid.replacingOccurrences(of: "violated: []\n    corrected: Fine answer.", with: "violated: []\n    corrected: Other."))
        #expect(e.field == "demonstrations[1].corrected" && e.problem.contains("`violated` is empty"))
        // Flawed, but not corrected.
        let e2 = try failure(Self.valid.replacingOccurrences(of: "corrected: Good answer.", with: "corrected: Bad answer."))
        #expect(e2.field == "demonstrations[0].corrected" && e2.problem.contains("repeats the answer"))
    }

    @Test func otherProblems() throws {
        #expect(try failure(Self.valid.replacingOccurrences(of: "name: sample", with: "name: other")).problem.contains("file is named 'sample'"))
        #expect(try failure(Self.valid + "\ncolour: blue").field == "colour")
        #expect(try failure(Self.valid.replacingOccurrences(of: "kind: prompted", with: "kind: magic")).field == "aligner.kind")
        #expect(try failure(Self.valid.replacingOccurrences(of: "model: default", with: "model: default\n  critique: maybe")).field == "aligner.critique")
        let trained = try failure(Self.valid.replacingOccurrences(of: "kind: prompted", with: "kind: trained"))
        #expect(trained.field == "aligner.model" && trained.problem.contains("trained aligner"))
        #expect(try failure("principles: [\n").problem.contains("is not valid YAML"))
        #expect(try failure("").problem == "is empty")
        #expect(try failure("- a\n- b").problem.contains("must be a mapping"))
        let empty = try failure(Self.valid.replacingOccurrences(of: "  - Be brief.", with: "  - "))
        #expect(empty.field == "principles[1]" && empty.problem == "is empty")
    }

    @Test func trainedAlignerWithAdapter() throws {
        let yaml = Self.valid.replacingOccurrences(of: "kind: prompted", with: "kind: trained")
            .replacingOccurrences(of: "model: default", with: "model: default\n  adapter: ../adapters/sample")
        let c = try CriteriaLibrary.parse(yaml, file: "Criteria/sample.yaml", expectedName: "sample")
        #expect(c.aligner.kind == .trained && c.aligner.adapter == "../adapters/sample" && c.aligner.usesDefaultModel)
        #expect(AlignerFactory(compute: TestCompute.context).adapterPath(for: c) == URL(fileURLWithPath: "adapters/sample").standardized.path)
        let prompted = try failure(Self.valid.replacingOccurrences(of: "model: default", with: "model: default\n  adapter: x"))
        #expect(prompted.field == "aligner.adapter" && prompted.problem.contains("kind: trained"))
    }

    @Test func scalarsStayText() throws {
        // YAML 1.1 would read `no` as false and `1.0` as a number; a principle is text.
        let c = try CriteriaLibrary.parse(Self.valid.replacingOccurrences(of: "- Be brief.", with: "- no"), file: "sample.yaml")
        #expect(c.principles[1] == "no")
    }

    @Test func fileErrorsNameThePath() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("criteria-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        try Self.valid.replacingOccurrences(of: "violated: [1]", with: "violated: [9]")
            .write(to: dir.appendingPathComponent("sample.yaml"), atomically: true, encoding: .utf8)
        do {
            _ = try CriteriaLibrary(searchDir: dir.path).load("sample")
            Issue.record("expected an error")
        } catch let e as CriterionError {
            #expect(e.file == dir.appendingPathComponent("sample.yaml").path)
            #expect("\(e)".contains("sample.yaml:10: demonstrations[0].violated[0]: principle 9 does not exist"))
        }
    }
}
