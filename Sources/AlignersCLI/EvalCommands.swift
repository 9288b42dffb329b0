import AlignersKernels
import AlignersCore
import AlignersEvaluation
import AlignersBackends
import AlignersEngine
import AlignersSquadModels
import AlignersPipeline
import ArgumentParser
import Foundation
import Synchronization
import Logging

// `aligners train judge`, `aligners eval prepare | report | squad`.

struct TrainGroup: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "train", abstract: "Train models.",
                                                    subcommands: [TrainAlignerCommand.self, TrainInspectorCommand.self, TrainInspectorsCommand.self, TrainVerdictInspectorCommand.self, TrainJudgeCommand.self, TrainBenchCommand.self])
}

struct EvalGroup: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "eval", abstract: "Evaluate the squad and its models.",
        subcommands: [EvalSquadCommand.self, EvalPrepareCommand.self, EvalReportCommand.self,
                      EvalInspectorCommand.self, EncoderSpeedCommand.self])
}

struct JudgeOptions: ParsableArguments {
    @Option(help: "Directory of judges (<criterion>.safetensors + .json). Default: $ALIGNERS_JUDGES_DIR, ./judges, the checkout's judges/.")
    var judgesDir: String?
    @Option(help: "Embedding cache file (git-ignored); 'none' to disable.")
    var embeddingCache = ".cache/eval/embeddings.bin"

    func embedder(modelsDir: String?) throws -> TextEmbedder {
        try TextEmbedder.load(modelsDir: modelsDir, cacheFile: embeddingCache == "none" ? nil : URL(fileURLWithPath: embeddingCache),
                              pool: ComputeContext.forCommand().pool)
    }
}

struct TrainJudgeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "judge",
        abstract: "Train a criterion's pairwise judge (for `aligners eval`) on a split the inspectors did not train on.",
        discussion: """
            The judge compares two answers to one conversation: a Bradley–Terry logistic model over MiniLM
            sentence embeddings, fitted on --train-split (default valid; inspectors train on train) with the
            L2 strength chosen by 5-fold cross-validation, and measured on --test-split pairs it never saw.
            """.reflowed)
    @Option(help: "Criterion name (saved as <criterion>.safetensors).") var criterion: String
    @Option(help: "Preference data JSONL (../shared/data/<criterion>.jsonl format).") var data: String
    @Option(help: "Split to train on.") var trainSplit = "valid"
    @Option(help: "Split to measure accuracy on.") var testSplit = "test"
    @Option(help: "Where to write the judge and its card.") var out = "judges"
    @Option(help: "Directory holding model packages.") var modelsDir: String?
    @OptionGroup var judge: JudgeOptions

    func run() throws {
        let url = URL(fileURLWithPath: data)
        let trainRows = try InspectorData.load(url, split: trainSplit), testRows = try InspectorData.load(url, split: testSplit)
        guard !trainRows.isEmpty else { throw ValidationError("\(data): no rows with split=\(trainSplit)") }
        stderrLine("\(criterion): training on \(trainRows.count) \(trainSplit) pairs, measuring on \(testRows.count) \(testSplit) pairs")
        let embedder = try judge.embedder(modelsDir: modelsDir)
        let bar = ProgressBar("embedding")
        let train = try JudgeTraining.pairs(trainRows, embedder: embedder) { bar.update($0, $1) }
        let test = try JudgeTraining.pairs(testRows, embedder: embedder) { bar.update($0, $1) }
        let t0 = Date()
        let (model, card) = JudgeTraining.train(criterion: criterion, dataName: url.lastPathComponent, train: train,
                                                trainSplit: trainSplit, heldOut: test, heldOutSplit: testSplit, recipe: embedder.recipe)
        try JudgeStore.save(model, card: card, to: URL(fileURLWithPath: out))
        print(String(format: "%@ judge: λ=%g, cross-validated accuracy %.3f on %@, held-out accuracy %.3f on %d %@ pairs (%@); fitted in %.1fs; saved %@/%@.safetensors",
                     criterion, card.lambda, card.crossValidatedAccuracy, trainSplit, card.heldOutAccuracy, card.heldOutPairs, testSplit,
                     card.heldOutBySource.sorted { $0.key < $1.key }.map { String(format: "%@ %.3f", $0.key, $0.value) }.joined(separator: ", "),
                     Date().timeIntervalSince(t0), out, criterion))
    }
}

/// What goes into an evaluation: shared by `eval prepare` and `eval squad`.
struct EvalInputOptions: ParsableArguments {
    @Option(name: .customLong("data"), help: "Preference data JSONL; repeat for several criteria (../shared/data/<criterion>.jsonl).")
    var dataFiles: [String] = []
    @Option(help: "Instruction JSONL (AlpacaEval: {\"prompt\", \"reference\"}); the generator answers, the squad aligns.")
    var instructions: String?
    @Option(help: "Split of the preference data.") var split = "test"
    @Option(help: "Rows per source (seeded sample); all when unset.") var limit: Int?
    @Option(help: "Instructions to use (seeded sample); all when unset.") var instructionLimit: Int?
    @Option(help: "Answers fed in per row: rejected (should be fixed), chosen (changing it is the alignment tax).")
    var inputs = "rejected,chosen"
    @Option(help: "Seed of the sampling.") var seed: UInt64 = 7

    func validate() throws {
        guard !dataFiles.isEmpty || instructions != nil else { throw ValidationError("give --data FILE and/or --instructions FILE") }
        for k in kinds where !["rejected", "chosen"].contains(k) { throw ValidationError("--inputs: '\(k)' is not rejected or chosen") }
    }
    var kinds: [String] { inputs.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) } }

    func lines() throws -> [[String: Any]] {
        var out: [[String: Any]] = []
        for file in dataFiles {
            let url = URL(fileURLWithPath: file)
            let rows = try InspectorData.load(url, split: split)
            guard !rows.isEmpty else { throw ValidationError("\(file): no rows with split=\(split)") }
            out += EvalSet.lines(rows: rows, extras: try EvalSet.extras(url), kinds: kinds, limitPerSource: limit, seed: seed)
        }
        if let instructions {
            out += try EvalSet.instructionLines(URL(fileURLWithPath: instructions), limit: instructionLimit, seed: seed)
        }
        return out
    }

    func jsonl() throws -> Data {
        var data = Data()
        for line in try lines() {
            data += try JSONSerialization.data(withJSONObject: line, options: [.sortedKeys, .withoutEscapingSlashes])
            data += Data("\n".utf8)
        }
        return data
    }
}

/// Where an evaluation's report goes and who judges it: shared by `eval report` and `eval squad`.
struct EvalReportOptions: ParsableArguments {
    @Option(help: "Directory for report.md, results.json and the figure (scores.svg, scores.png).") var out = "eval"
    @Option(help: "Report title.") var title = "Evaluation of the squad"
    @OptionGroup var judge: JudgeOptions
    @Option(help: "Judge with an OpenAI-compatible chat model at this URL instead of the trained judges (e.g. https://api.openai.com/v1).")
    var judgeBackend: String?
    @Option(help: "Model name sent to --judge-backend.") var judgeModel = "gpt-4o-mini"
    @Option(help: "Environment variable holding the --judge-backend API key (default: OPENAI_API_KEY).") var judgeApiKeyEnv: String?
    @Option(help: "File holding the --judge-backend API key.") var judgeApiKeyFile: String?
    @Option(help: "Most --judge-backend requests in flight.") var judgeConcurrency = 8
    @Option(name: .customLong("judge-check"), help: "Preference data (repeat per criterion) on whose test split an LLM judge's accuracy is measured first.")
    var judgeCheck: [String] = []
    @Option(help: "Test pairs per criterion for --judge-check.") var judgeCheckPairs = 100

    func judges(for criteria: [String], modelsDir: String?, criteriaDir: String?, embedder: TextEmbedder) throws -> [String: any AnswerJudge] {
        var out: [String: any AnswerJudge] = [:]
        if let judgeBackend {
            guard let url = URL(string: judgeBackend), url.scheme == "http" || url.scheme == "https", url.host != nil else {
                throw ValidationError("--judge-backend must be an http(s) URL, got \(judgeBackend)")
            }
            let key = try OpenAIBackendSettings.resolveAPIKey(env: judgeApiKeyEnv, file: judgeApiKeyFile)
            let generator = OpenAIChatGenerator(settings: OpenAIBackendSettings(
                baseURL: url, model: judgeModel, apiKey: key, concurrency: judgeConcurrency, maxTokens: 4, temperature: 0))
            let library = CriteriaLibrary(searchDir: criteriaDir)
            for c in criteria {
                var judge = ChatModelJudge(criterion: try library.load(c), generator: generator)
                if let file = judgeCheck.first(where: { URL(fileURLWithPath: $0).deletingPathExtension().lastPathComponent == c }) {
                    var rows = try InspectorData.load(URL(fileURLWithPath: file), split: "test")
                    var rng = SplitMix64(seed: 11)
                    rows.shuffle(using: &rng)
                    try judge.measure(on: Array(rows.prefix(judgeCheckPairs)))
                    stderrLine(String(format: "%@ LLM judge: %.3f accuracy on %d held-out pairs", c, judge.info.heldOutAccuracy, judge.info.heldOutPairs))
                }
                out[c] = judge
            }
            return out
        }
        for c in criteria {
            do {
                let (judge, card) = try JudgeStore.load(criterion: c, explicit: self.judge.judgesDir)
                out[c] = EmbeddingJudge(judge: judge, card: card, embedder: embedder)
            } catch {
                stderrLine("warning: \(error) — \(c) samples get no judge win rate")
            }
        }
        return out
    }

    func write(records: [EvalRecord], unreadable: Int, command: String, modelsDir: String?, criteriaDir: String?) throws -> EvalResults {
        let dir = URL(fileURLWithPath: out)
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let embedder = try judge.embedder(modelsDir: modelsDir)
        var criteria = Set(records.map(\.meta.criterion))
        if records.contains(where: { $0.meta.reference != nil }) { criteria.insert("helpful") }
        let judges = try judges(for: criteria.sorted(), modelsDir: modelsDir, criteriaDir: criteriaDir, embedder: embedder)
        let reporter = EvalReporter(embedder: embedder, judges: judges)
        let bar = ProgressBar("judging")
        let results = try reporter.evaluate(records, unreadable: unreadable) { bar.update($0, $1) }
        let figure = ScoreDistributionFigure.chart(ScoreDistributionFigure.rows(records), threshold: results.threshold)
        try figure.svg().write(to: dir.appendingPathComponent("scores.svg"), atomically: true, encoding: .utf8)
        try Data(PNGEncoder.encode(figure.raster(scale: 2))).write(to: dir.appendingPathComponent("scores.png"))
        let enc = JSONEncoder()
        enc.outputFormatting = [.prettyPrinted, .sortedKeys]
        enc.nonConformingFloatEncodingStrategy = .convertToString(positiveInfinity: "inf", negativeInfinity: "-inf", nan: "nan")
        try enc.encode(results).write(to: dir.appendingPathComponent("results.json"))
        let md = EvalMarkdown.render(results, title: title, command: command, figure: "scores")
        try md.write(to: dir.appendingPathComponent("report.md"), atomically: true, encoding: .utf8)
        return results
    }
}

func readEvalRecords(_ url: URL) throws -> (records: [EvalRecord], unreadable: Int) {
    var records: [EvalRecord] = []
    var unreadable = 0
    for line in try Data(contentsOf: url).split(separator: UInt8(ascii: "\n")) {
        do {
            if let r = try EvalRecord.parse(Data(line)) { records.append(r) } else { unreadable += 1 }
        } catch { unreadable += 1 }
    }
    return (records, unreadable)
}

struct EvalPrepareCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "prepare",
        abstract: "Write evaluation input lines (JSONL on stdout) for `aligners filter --explain`.",
        discussion: """
            Each line is a chat ({"messages": [...]}) with the data set's answer as the last assistant turn
            (or none, for instructions) and an "eval" field the filter passes through: where the row came
            from, which answer went in, and its references. Pipe it through the squad, in process or over
            daemons, then run `aligners eval report` on the output:

                aligners eval prepare --data ../shared/data/ethical.jsonl --limit 50 > in.jsonl
                aligners filter --explain < in.jsonl > out.jsonl
                aligners eval report out.jsonl --out eval/
            """.reflowed)
    @OptionGroup var input: EvalInputOptions

    func run() throws {
        StandardStreams.output(Array(try input.jsonl()))
    }
}

struct EvalReportCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "report",
        abstract: "Judge `aligners filter --explain` output of `eval prepare` lines: win rates, score changes, tax, references, plots.")
    @Argument(help: "The filter's output JSONL.") var aligned: String
    @OptionGroup var report: EvalReportOptions
    @Option(help: "Directory holding model packages.") var modelsDir: String?
    @Option(help: "Directory holding criterion files (for --judge-backend prompts).") var criteriaDir: String?

    func run() throws {
        let (records, unreadable) = try readEvalRecords(URL(fileURLWithPath: aligned))
        guard !records.isEmpty else { throw ValidationError("\(aligned): no evaluation lines (lines with an \"eval\" field)") }
        _ = try report.write(records: records, unreadable: unreadable, command: "aligners eval report " + shellQuoted(CommandLine.arguments.dropFirst(3)),
                         modelsDir: modelsDir, criteriaDir: criteriaDir)
        print("wrote \(URL(fileURLWithPath: report.out).appendingPathComponent("report.md").path), results.json, scores.svg, scores.png")
    }
}

struct EvalSquadCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "squad",
        abstract: "Run the squad in process on evaluation data and report: prepare, filter --explain and report in one.",
        discussion: """
            Writes OUT/inputs.jsonl, OUT/aligned.jsonl (the filter's output), OUT/report.md, OUT/results.json
            and the figure OUT/scores.svg + .png. Example (the run in README.md):

                aligners eval squad --data ../shared/data/ethical.jsonl --data ../shared/data/factuality.jsonl \\
                    --data ../shared/data/helpful.jsonl --instructions ../shared/data/alpaca-eval-instructions.jsonl \\
                    --limit 40 --instruction-limit 40 --out eval
            """.reflowed)
    @OptionGroup var input: EvalInputOptions
    @OptionGroup var report: EvalReportOptions
    @OptionGroup var squad: SquadOptions
    @OptionGroup var models: ModelOptions
    @OptionGroup var log: LogOptions

    func run() async throws {
        let logger = log.bootstrap("eval", defaultLevel: .warning)
        let dir = URL(fileURLWithPath: report.out)
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let inputURL = dir.appendingPathComponent("inputs.jsonl"), outputURL = dir.appendingPathComponent("aligned.jsonl")
        let data = try input.jsonl()
        try data.write(to: inputURL)
        let total = data.reduce(0) { $0 + ($1 == UInt8(ascii: "\n") ? 1 : 0) }
        stderrLine("\(total) evaluation lines in \(inputURL.path)")

        let context = ZMQContext()
        let pipeline = try LocalSquad.start(context: context, squad: squad, models: models, window: 256, logger: logger)
        let inFD = open(inputURL.path, O_RDONLY)
        let outFD = open(outputURL.path, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        guard inFD >= 0, outFD >= 0 else { throw ValidationError("cannot open \(inputURL.path) or \(outputURL.path)") }
        var settings = FilterSettings()
        settings.explain = true
        let filter = Filter(context: context, router: pipeline.frontend, settings: settings, logger: logger, input: inFD, output: outFD)
        let bar = ProgressBar("aligning")
        let done = Counter()
        let t0 = Date()
        let summary = try await onThread("aligners-eval") {
            try filter.run { _, _ in bar.update(done.increment(), total) }
        }
        close(inFD); close(outFD)
        pipeline.stop()
        let seconds = Date().timeIntervalSince(t0)
        stderrLine(String(format: "%d lines in %.0fs (%.2f samples/s): %d aligned, %d untouched, %d failed, %d invalid",
                          summary.lines, seconds, Double(summary.lines) / seconds, summary.aligned, summary.untouched,
                          summary.failed, summary.invalid))
        let (records, unreadable) = try readEvalRecords(outputURL)
        let command = "aligners eval squad " + shellQuoted(CommandLine.arguments.dropFirst(3))
        let results = try report.write(records: records, unreadable: unreadable, command: command,
                                       modelsDir: models.modelsDir, criteriaDir: models.criteriaDir)
        print("wrote \(URL(fileURLWithPath: report.out).appendingPathComponent("report.md").path) (\(results.overall.samples) samples), results.json, scores.svg, scores.png, aligned.jsonl")
    }
}

/// Arguments as a shell would need them typed again.
func shellQuoted(_ arguments: ArraySlice<String>) -> String {
    arguments.map { a in
        a.allSatisfy({ $0.isLetter || $0.isNumber || "-_./=,:@".contains($0) }) ? a : "'" + a.replacingOccurrences(of: "'", with: #"'\''"#) + "'"
    }.joined(separator: " ")
}

final class Counter: Sendable {
    private let n = Atomic<Int>(0)
    func increment() -> Int { n.add(1, ordering: .relaxed).newValue }
}
