import AlignersKernels
import AlignersCore
import AlignersPipeline
import ArgumentParser
import Foundation
import Logging

struct FilterCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "filter",
        abstract: "Align chat logs: JSONL on stdin, aligned JSONL on stdout, streaming.",
        discussion: """
            Input lines: {"prompt": "...", "response": "..."} (response optional) or OpenAI-style
            {"messages": [{"role": ..., "content": ...}, ...]}, whose last assistant turn is the response
            to align (when the last turn is the user's, the generator writes the response). Other fields
            pass through untouched. Each output line is the input with the aligned response in place and
            an "alignment" object: the original response, scores before/after per criterion, the aligner
            steps and the order of criteria used.

            Every input line yields exactly one output line. A line that cannot be used (bad JSON,
            wrong types, empty, invalid UTF-8, too long) yields {"line": N, "error": {...}} in its place.

            By default the router and workers run in this process; --connect feeds a running router
            (with --curve-server-key and --curve-key when it speaks CURVE).

            Exit status: 0 every line was aligned or passed; 1 some lines yielded error records;
            2 the filter could not run (bad options, no models, router unreachable) or could not write its output (then it stops reading input).
            """.reflowed)

    @Option(help: "A running router's front end (e.g. tcp://127.0.0.1:5555); default: run everything in process.")
    var connect: String?
    @OptionGroup var curve: CurveClientOptions
    @OptionGroup var squad: SquadOptions
    @Flag(help: "Write each line as soon as it is ready instead of in input order.")
    var unordered = false

    @Flag(help: "No progress on stderr (by default a status line redrawn on a terminal, else a line every 30 s).")
    var noProgress = false
    @Option(help: "Most lines read ahead of the output (bounds memory).")
    var window = 256
    @Option(help: "Longer input lines become error records.")
    var maxLineBytes = 4 << 20
    @OptionGroup var models: ModelOptions
    @Flag(help: "Print a readable before/after report on stderr at the end.")
    var summary = false
    @Flag(help: "Add alignment.trace to each line: every inspection pass and every gate decision, in order.")
    var explain = false
    @OptionGroup var log: LogOptions
    @OptionGroup var metrics: MetricsOptions

    func validate() throws {
        guard window >= 1 else { throw ValidationError("--window must be at least 1") }
        guard maxLineBytes >= 16 else { throw ValidationError("--max-line-bytes must be at least 16") }
        guard connect != nil || curve.curveKey == nil else {
            throw ValidationError("--curve-server-key and --curve-key are for a router reached with --connect")
        }
    }

    func run() async throws {
        let logger = log.bootstrap("filter", defaultLevel: .warning)
        try metrics.start(logger, insecure: curve.insecure)
        var settings = FilterSettings()
        settings.unordered = unordered
        settings.window = window
        settings.maxLineBytes = maxLineBytes
        settings.explain = explain
        settings.progress = noProgress ? .off : isatty(STDERR_FILENO) == 1 ? .terminal : .log(seconds: 30)
        settings.insecure = curve.insecure
        do { settings.curve = try curve.keys() } catch {
            logger.critical("cannot read the CURVE keys", metadata: ["error": "\(error)"])
            throw ExitCode(2)
        }
        let context = ZMQContext()
        var local: LocalPipeline?
        let router: RouterAddress
        if let connect {
            router = .endpoint(connect)
            // The router runs the squad: its own settings apply, whatever this command was given.
            let ignored = squad.changedFromDefaults()
            if !ignored.isEmpty {
                logger.warning("with --connect the router's squad settings apply; ignoring \(ignored.joined(separator: ", "))",
                               metadata: ["router": "\(connect)"])
            }
        } else {
            let pipeline: LocalPipeline
            do {
                pipeline = try LocalSquad.start(context: context, squad: squad, models: models, window: window, logger: logger)
            } catch {
                logger.critical("cannot run the squad in process", metadata: ["error": "\(error)"])
                throw ExitCode(2)
            }
            local = pipeline
            router = pipeline.frontend
        }
        let filter = Filter(context: context, router: router, settings: settings, logger: logger)
        let printer = summary ? SummaryPrinter() : nil
        let result: FilterSummary
        do {
            let onRecord: (@Sendable (InputLine?, Envelope?) -> Void)?
            if let printer { onRecord = { line, envelope in printer.record(line, envelope) } } else { onRecord = nil }
            result = try await onThread("aligners-filter") { try filter.run(onRecord: onRecord) }
        } catch {
            logger.critical("filter stopped", metadata: ["error": "\(error)"])
            throw ExitCode(2)
        }
        local?.stop()
        printer?.print(result)
        if !summary && result.exitCode != 0 {
            logger.info("filter done", metadata: ["lines": "\(result.lines)", "aligned": "\(result.aligned)",
                                                  "untouched": "\(result.untouched)", "invalid": "\(result.invalid)",
                                                  "failed": "\(result.failed)"])
        }
        if result.exitCode != 0 { throw ExitCode(result.exitCode) }
    }
}

/// The whole squad in this process: an inspector and an aligner stage per criterion, and the
/// generator when its model can be had. Shared by `filter` and `eval squad`.
enum LocalSquad {
    static func start(context: ZMQContext, squad: SquadOptions, models: ModelOptions, window: Int, logger: Logger) throws -> LocalPipeline {
        let catalog = ModelCatalog(models, compute: .forCommand())
        // One inspection job per sample chunk for all criteria: inspectors sharing a model encode once.
        var handlers: [any StageHandler] = [InspectorStage(try catalog.inspectors(for: squad.criteriaList))]
        for criterion in squad.criteriaList { handlers.append(AlignerStage(try catalog.aligner(for: criterion))) }
        handlers.append(GeneratorStage(try localGenerator(catalog, models)))
        var routerSettings = squad.routerSettings()
        routerSettings.clientWindow = window
        routerSettings.serviceTimeoutMs = 1000  // in process, every worker is already there
        routerSettings.jobTimeoutMs = nil       // and no other could take over a slow job
        let pipeline = try LocalPipeline(context: context, settings: routerSettings, handlers: handlers, logger: logger)
        pipeline.start()
        return pipeline
    }

    /// A generator named by `--backend` or `--generator-model` must work (its error stops the start);
    /// the default model is optional, and without it lines that carry no response fail saying why.
    private static func localGenerator(_ catalog: ModelCatalog, _ models: ModelOptions) throws -> any Generator {
        if models.backend != nil || models.generatorModel != nil { return try catalog.generator() }
        do { return try catalog.generator() } catch { return UnavailableGenerator(reason: "\(error)") }
    }
}

/// Stands where the default generator could not be loaded: every prompt-only line fails with the reason.
struct UnavailableGenerator: Generator {
    let reason: String
    var modelName: String { "none" }
    func generate(_ conversations: [[Turn]]) throws -> [String] {
        throw StageError("this line has no response and no generator could be loaded (\(reason)); "
                         + "install the default model with `make models`, or pass --generator-model or --backend")
    }
}
