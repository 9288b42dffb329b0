import ArgumentParser
import Foundation
import AlignersCore
import AlignersEngine
import AlignersSquadModels
import AlignersKernels
import AlignersPipeline

// `aligners train inspector`, `aligners eval inspector`, `aligners score`, `aligners bench encoder`.

struct InspectorModelOptions: ParsableArguments {
    @Option(help: "Directory holding model packages (default: $ALIGNERS_MODELS_DIR, ./models, the checkout's models/).")
    var modelsDir: String?
    @Option(help: "Directory holding inspector heads (<name>.safetensors + .json; default: $ALIGNERS_INSPECTORS_DIR, ./inspectors, the checkout's inspectors/).")
    var inspectorsDir: String?
    @Option(help: "Max tokens of the (x, y) pair and of y alone.")
    var maxLength = 256
    @Option(help: "Encoder batch size.")
    var batchSize = 32
}

/// Progress on stderr: a bar redrawn in place on a terminal, a plain line every 30 s otherwise (logs).
final class ProgressBar: @unchecked Sendable {
    let label: String
    let start = Date()
    var last = Date.distantPast
    private var remaining = RemainingTime()
    private let terminal = isatty(STDERR_FILENO) == 1
    init(_ label: String) { self.label = label }
    func update(_ done: Int, _ total: Int) {
        let now = Date()
        guard now.timeIntervalSince(last) > (terminal ? 0.25 : 30) || done == total else { return }
        last = now
        if !terminal {
            let eta = remaining.seconds(done: done, total: total, now: now.timeIntervalSince(start))
            stderrLine(String(format: "%@ %d/%d %.0fs eta %@", label, done, total, now.timeIntervalSince(start),
                              eta.map { String(format: "%.0fs", $0) } ?? "–"))
            return
        }
        let frac = total > 0 ? Double(done) / Double(total) : 1
        let width = 30, filled = Int(frac * Double(width))
        let el = now.timeIntervalSince(start)
        let eta = remaining.seconds(done: done, total: total, now: el)
        let bar = String(repeating: "#", count: filled) + String(repeating: ".", count: width - filled)
        StandardStreams.error(String(format: "\r%@ [%@] %d/%d %.0fs eta %@ ", label, bar, done, total, el,
                                     eta.map { String(format: "%.0fs", $0) } ?? "–"))
        if done == total { StandardStreams.error("\n") }
    }
}

func stderrLine(_ s: String) { StandardStreams.error(s + "\n") }

/// Encodes every example of the given rows, through the on-disk cache.
func cachedFeatures(_ featurizer: InspectorFeaturizer, criterion: String, examples: [InspectorExample],
                    cacheDir: String, batchSize: Int, label: String) throws -> [[Float]] {
    let cache = try FeatureCache(url: URL(fileURLWithPath: cacheDir).appendingPathComponent("\(criterion).features"))
    let bar = ProgressBar(label)
    return try featurizer.features(examples.map(\.exchange), cache: cache, batchSize: batchSize) { bar.update($0, $1) }
}

func pairIndices(_ ex: [InspectorExample]) -> [(Int, Int)] {
    var byRow: [String: (Int?, Int?)] = [:]
    for (i, e) in ex.enumerated() {
        var p = byRow[e.rowID] ?? (nil, nil)
        if e.label == 1 { p.0 = i } else { p.1 = i }
        byRow[e.rowID] = p
    }
    return byRow.values.compactMap { p in p.0.flatMap { a in p.1.map { (a, $0) } } }
}

func metricsBySource(_ ex: [InspectorExample], _ scores: [Double]) -> [String: InspectorMetrics] {
    var out: [String: InspectorMetrics] = [:]
    for src in Set(ex.map(\.source)) {
        let idx = ex.indices.filter { ex[$0].source == src }
        let sub = idx.map { ex[$0] }
        out[src] = InspectorMetrics(scores: idx.map { scores[$0] }, labels: sub.map(\.label), pairs: pairIndices(sub))
    }
    return out
}

struct TrainInspectorCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "inspector",
        abstract: "Train a per-criterion inspector head on frozen encoder features.",
        discussion: "Rows: label 1 = chosen, 0 = rejected. Trains on split=train, early-stops on valid, reports test.")

    @Option(help: "Criterion name (the head is saved as <criterion>.safetensors).") var criterion: String
    @Option(help: "Preference data JSONL (../shared/data/<criterion>.jsonl format).") var data: String
    @OptionGroup var model: InspectorModelOptions
    @Option(help: "Where to write the head and its card.") var out = "inspectors"
    @Option(help: "Feature cache directory (git-ignored).") var cacheDir = ".cache/inspectors"
    // Settings left out come from the card of the head being replaced (<out>/<criterion>.json), so
    // `aligners train inspector --criterion C --data FILE` reproduces the committed head; without a card
    // (or with --ignore-card) from the defaults shown.
    @Option(help: "Hidden units of the head (0 = logistic regression). Default: the existing card's, else 256.") var hidden: Int?
    @Option(help: "Adam learning rate. Default: the existing card's, else 2e-4.") var lr: Float?
    @Option(help: "Decoupled weight decay. Default: the existing card's, else 0.05.") var weightDecay: Float?
    @Option(help: "Maximum epochs. Default: the existing card's, else 60.") var epochs: Int?
    @Option(help: "Early-stopping patience (epochs without a better valid ROC-AUC). Default: the existing card's, else 8.") var patience: Int?
    @Option(help: "Source balancing: equal, sqrt, none. Default: the existing card's, else sqrt.") var sourceBalance: String?
    @Option(help: "Random seed. Default: the existing card's, else 20240.") var seed: UInt64?
    @Option(help: "Feature views: v1 (last-layer mean pools of pair, x, y, response), all-layers-mean (the same after every layer 0-6), or segment.layer.pool,… (segment pair|x|y|response, layer 0-6, pool mean|max). Default: the existing card's recipe, else v1.")
    var views: String?
    @Flag(help: "Do not take left-out settings from an existing card in --out.") var ignoreCard = false
    @Flag(help: "Only fill the feature cache; train nothing.") var encodeOnly = false

    func run() throws {
        let t0 = Date()
        let cardURL = URL(fileURLWithPath: out).appendingPathComponent("\(criterion).json")
        let previous = ignoreCard ? nil : (try? Data(contentsOf: cardURL)).flatMap { try? JSONDecoder().decode(InspectorCard.self, from: $0) }
        var opts = previous?.options ?? InspectorTrainer.Options()
        if let hidden { opts.hidden = hidden }
        if let lr { opts.learningRate = lr }
        if let weightDecay { opts.weightDecay = weightDecay }
        if let epochs { opts.maxEpochs = epochs }
        if let patience { opts.patience = patience }
        if let sourceBalance { opts.sourceBalance = sourceBalance }
        if let seed { opts.seed = seed }
        let viewList: [FeatureView]
        if let views {
            viewList = try FeatureView.named(views)
        } else if let recipe = previous?.featureRecipe {
            viewList = try InspectorFeaturizer.parseRecipe(recipe).views
        } else {
            viewList = FeatureView.v1()
        }
        if previous != nil {
            stderrLine("settings not given on the command line come from \(cardURL.path) (--ignore-card to use the defaults)")
        }
        stderrLine(String(format: "views %@; hidden %d, lr %g, weight decay %g, epochs ≤ %d, patience %d, balance %@, seed %llu",
                          InspectorFeaturizer.recipe(views: viewList, maxLength: model.maxLength), opts.hidden, opts.learningRate,
                          opts.weightDecay, opts.maxEpochs, opts.patience, opts.sourceBalance, opts.seed))
        let url = URL(fileURLWithPath: data)
        let rows = try InspectorData.load(url, split: nil)
        let bySplit = Dictionary(grouping: rows, by: \.split)
        guard let trainRows = bySplit["train"], let validRows = bySplit["valid"] else {
            throw ValidationError("\(data): needs rows with split=train and split=valid")
        }
        let testRows = bySplit["test"] ?? []
        stderrLine("\(criterion): \(trainRows.count) train / \(validRows.count) valid / \(testRows.count) test rows")
        let featurizer = try InspectorFeaturizer.load(modelsDir: model.modelsDir, maxLength: model.maxLength, views: viewList,
                                                      pool: ComputeContext.forCommand().pool)
        let tr = InspectorData.examples(trainRows), va = InspectorData.examples(validRows), te = InspectorData.examples(testRows)
        let all = tr + va + te
        let raw = try cachedFeatures(featurizer, criterion: criterion, examples: all, cacheDir: cacheDir,
                                     batchSize: model.batchSize, label: "encoding")
        if encodeOnly { print("\(criterion): \(raw.count) feature rows of \(featurizer.recipe) cached in \(cacheDir)"); return }
        let h = featurizer.hidden
        let feats = raw.map { InspectorHead.transform($0, views: featurizer.views, hidden: h) }
        let dim = feats.first?.count ?? 0
        let trX = Array(feats[0..<tr.count]), vaX = Array(feats[tr.count..<(tr.count + va.count)])
        let teX = Array(feats[(tr.count + va.count)...])
        stderrLine(String(format: "features ready in %.1fs (%d dims)", Date().timeIntervalSince(t0), feats.first?.count ?? 0))

        let w = InspectorTrainer.weights(labels: tr.map(\.label), sources: tr.map(\.source), balance: opts.sourceBalance)
        let t1 = Date()
        var lastEpoch = 0
        let head = InspectorTrainer(options: opts).train(
            x: trX, labels: tr.map(\.label), weights: w, validX: vaX, validLabels: va.map(\.label), validPairs: pairIndices(va)
        ) { r in
            lastEpoch = r.epoch
            stderrLine(String(format: "epoch %3d  train loss %.4f  valid %@%@", r.epoch, r.trainLoss, r.valid.description, r.best ? "  *" : ""))
        }
        let trainSeconds = Date().timeIntervalSince(t1)
        var metrics: [String: InspectorMetrics] = [:]
        var perSource: [String: [String: InspectorMetrics]] = [:]
        for (name, ex, x) in [("train", tr, trX), ("valid", va, vaX), ("test", te, teX)] where !ex.isEmpty {
            let s = head.probabilities(x)
            metrics[name] = InspectorMetrics(scores: s, labels: ex.map(\.label), pairs: pairIndices(ex))
            perSource[name] = metricsBySource(ex, s)
        }
        let date = ISO8601DateFormatter.string(from: Date(), timeZone: .gmt, formatOptions: [.withFullDate])
        let card = InspectorCard(
            criterion: criterion, encoder: InspectorFeaturizer.encoderName, featureRecipe: featurizer.recipe,
            head: opts.hidden > 0 ? "mlp(\(dim)->\(opts.hidden) relu->1)+platt" : "logistic(\(dim))+platt",
            options: opts, data: url.lastPathComponent,
            rows: ["train": trainRows.count, "valid": validRows.count, "test": testRows.count],
            metrics: metrics, perSource: perSource, date: date, trainingSeconds: trainSeconds, epochs: lastEpoch)
        try InspectorStore.save(head: head, card: card, to: URL(fileURLWithPath: out))
        for (k, m) in metrics.sorted(by: { $0.key < $1.key }) { print("\(criterion) \(k): \(m)") }
        print(String(format: "head trained in %.1fs; saved %@/%@.safetensors and .json", trainSeconds, out, criterion))
    }
}

struct EvalInspectorCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "inspector",
                                                    abstract: "Evaluate a trained inspector on a split (accuracy, ROC-AUC, F1@0.5, ECE).")
    @Option(help: "Criterion name.") var criterion: String
    @Option(help: "Preference data JSONL.") var data: String
    @Option(help: "Split to evaluate: train, valid, test.") var split = "test"
    @OptionGroup var model: InspectorModelOptions
    @Option(help: "Feature cache directory (git-ignored); 'none' to disable.") var cacheDir = ".cache/inspectors"
    @Flag(help: "Print JSON.") var json = false

    func run() throws {
        let rows = try InspectorData.load(URL(fileURLWithPath: data), split: split)
        guard !rows.isEmpty else { throw ValidationError("\(data): no rows with split=\(split)") }
        // The head on its own views: the feature recipe (and cache) that training used.
        let featurizers = FeaturizerPool(pool: ComputeContext.forCommand().pool)
        let ins = try EncoderInspector.load(criterion: criterion, modelsDir: model.modelsDir, inspectorsDir: model.inspectorsDir,
                                            featurizers: featurizers)
            .onOwnViews(modelsDir: model.modelsDir, featurizers: featurizers)
        let ex = InspectorData.examples(rows)
        let raw: [[Float]]
        if cacheDir == "none" {
            let bar = ProgressBar("encoding")
            raw = try ins.featurizer.features(ex.map(\.exchange), batchSize: model.batchSize) { bar.update($0, $1) }
        } else {
            raw = try cachedFeatures(ins.featurizer, criterion: criterion, examples: ex, cacheDir: cacheDir,
                                     batchSize: model.batchSize, label: "encoding")
        }
        let s = ins.score(rawFeatures: raw)
        let m = InspectorMetrics(scores: s, labels: ex.map(\.label), pairs: pairIndices(ex))
        let bySource = metricsBySource(ex, s)
        if json {
            let enc = JSONEncoder(); enc.outputFormatting = [.sortedKeys, .prettyPrinted]
            struct Out: Encodable { var criterion: String; var split: String; var model: String; var metrics: InspectorMetrics; var perSource: [String: InspectorMetrics] }
            print(String(decoding: try enc.encode(Out(criterion: criterion, split: split, model: ins.modelName, metrics: m, perSource: bySource)), as: UTF8.self))
        } else {
            print("\(criterion) \(split) (\(ins.modelName)): \(m)")
            for (src, sm) in bySource.sorted(by: { $0.key < $1.key }) { print("  \(src): \(sm)") }
        }
    }
}

struct ScoreCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "score",
        abstract: "Unix filter: add inspector scores to JSONL lines.",
        discussion: """
            Reads lines {"prompt": …, "response": …} or {"messages": [...]} (OpenAI chat; the last assistant
            turn is the response, the turns before it the conversation) and writes each line back with a
            "scores" object added. A bad line yields the same error record as `aligners filter`
            ({"line": N, "error": {"code": "invalid_input", …}, "input": …}), is logged on stderr, and
            processing goes on; the exit status is then 1.
            """.reflowed)
    @Option(help: "Comma-separated criteria.") var criteria = "ethical,factuality,helpful"
    @OptionGroup var model: InspectorModelOptions
    @Option(help: "Directory holding criterion files, which name each criterion's inspector (default: $ALIGNERS_CRITERIA_DIR, ./Criteria, the checkout's Criteria/); a criterion without a file uses the head of its name.")
    var criteriaDir: String?

    func run() throws {
        let names = criteria.split(separator: ",").map { String($0).trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        let library = CriteriaLibrary(searchDir: criteriaDir)
        let loader = InspectorLoader(modelsDir: model.modelsDir, inspectorsDir: model.inspectorsDir, pool: ComputeContext.forCommand().pool)
        // One set: criteria whose inspectors share a model are scored in one pass.
        let inspectors = try loader.set(try names.map { name in
            let file = try? library.locate(name)
            return (name, try file.map { try CriteriaLibrary.load(file: $0).inspector.headName } ?? name)
        })
        var pending: [(line: Int, object: [String: Any], exchange: Exchange)] = []
        var lineNo = 0
        func flush() throws {
            if pending.isEmpty { return }
            let batch = pending.map(\.exchange)
            let rows = try inspectors.score(batch)
            let scores = rows.map { Dictionary(uniqueKeysWithValues: zip(inspectors.criteria, $0)) }
            for (p, s) in zip(pending, scores) {
                var o = p.object
                o["scores"] = s
                writeJSONLine(o)
            }
            pending.removeAll()
        }
        var bad = 0
        while let line = readLine(strippingNewline: true) {
            lineNo += 1
            let result: Result<([String: Any], Exchange), ScoreInputError> = line.trimmingCharacters(in: .whitespaces).isEmpty
                ? .failure(ScoreInputError(kind: "empty", description: "empty line")) : ScoreInput.parse(line)
            switch result {
            case .success(let (obj, ex)):
                pending.append((lineNo, obj, ex))
                if pending.count >= model.batchSize { try flush() }
            case .failure(let err):
                // The same error record and log line as `aligners filter`; the stream goes on.
                try flush() // keep output in input order
                bad += 1
                let bytes = Array(line.utf8)
                StandardStreams.output((JSONLines.errorRecord(seq: UInt64(lineNo), message: err.description,
                                                                           input: bytes[...], totalBytes: bytes.count) + [10]))
                stderrLine("line \(lineNo): invalid input: \(err.description)")
            }
        }
        try flush()
        if bad > 0 { throw ExitCode(1) }   // as `filter`: 1 when some lines were errors
    }
}

func writeJSONLine(_ o: [String: Any]) {
    if let d = try? JSONSerialization.data(withJSONObject: o, options: [.sortedKeys, .withoutEscapingSlashes]) {
        var out = d
        out.append(UInt8(ascii: "\n"))
        StandardStreams.output(Array(out))
    }
}

struct EncoderSpeedCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "encoder-speed",
        abstract: "Encoder throughput (samples/s) on synthetic inputs of fixed length; see scripts/bench-encoder.sh.")
    @Option(help: "Comma-separated sequence lengths.") var lengths = "128,256"
    @Option(help: "Comma-separated batch sizes.") var batches = "1,32"
    @Option(help: "Threads.") var threads = 2
    @Option(help: "Seconds per measurement.") var seconds = 3.0
    @Option(help: "Directory holding installed model packages.") var modelsDir: String?
    @Option(help: "Also time fine-tuned inspectors (this fine-tuned.safetensors) scoring every criterion of new exchanges whose (conversation, response) pair is about each length: tokenizing, one encoder pass, the heads (printed as impl 'inspectors').")
    var fineTuned: String?

    func run() throws {
        let pool = ComputeContext.forCommand(threads: threads).pool
        let f = try InspectorFeaturizer.load(modelsDir: modelsDir, maxLength: 512, pool: pool)
        let inspectors = try fineTuned.map { try FineTunedInspectors(file: URL(fileURLWithPath: $0), modelsDir: modelsDir, pool: pool) }
        var rng = SplitMix64(seed: 7)
        print("impl\tlength\tbatch\tsamples_per_s")
        func measure(_ impl: String, _ L: Int, _ B: Int, _ body: () throws -> Void) rethrows {
            try body() // warm-up
            var n = 0
            let t0 = Date()
            while Date().timeIntervalSince(t0) < seconds { try body(); n += B }
            print(String(format: "%@\t%d\t%d\t%.2f", impl, L, B, Double(n) / Date().timeIntervalSince(t0)))
        }
        // Whole words of the vocabulary, one token each.
        let words = f.tokenizer.vocab[2000..<28000].filter { $0.allSatisfy(\.isLetter) }
        for L in lengths.split(separator: ",").compactMap({ Int($0) }) {
            for B in batches.split(separator: ",").compactMap({ Int($0) }) {
                let batch = (0..<B).map { _ -> BertEncoding in
                    let ids = [Int32(101)] + (0..<(L - 2)).map { _ in Int32(1000 + Int(rng.next() % 28000)) } + [102]
                    return BertEncoding(ids: ids, typeIds: (0..<L).map { $0 < L / 2 ? 0 : 1 })
                }
                try measure("swift", L, B) { _ = try f.encoder.embedBatch(batch) }
                if let inspectors {
                    // New text every round: the whole path, tokenizer included.
                    func text(_ n: Int) -> String { (0..<n).map { _ in words[Int(rng.next() % UInt64(words.count))] }.joined(separator: " ") }
                    try measure("inspectors", L, B) {
                        let exchanges = (0..<B).map { _ in
                            Exchange(conversation: [Turn(role: "user", content: text(L / 2 - 3))], response: text(L / 2 - 2))
                        }
                        _ = try inspectors.probabilities(exchanges)
                    }
                }
            }
        }
    }
}
