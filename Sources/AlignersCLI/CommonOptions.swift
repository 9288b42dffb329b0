import AlignersCore
import AlignersPipeline
import ArgumentParser
import Foundation
import Logging

/// Options every command that logs takes.
struct LogOptions: ParsableArguments {
    @Option(help: "Log level: trace, debug, info, notice, warning, error, critical (default: info for daemons, warning for filters).")
    var logLevel: Logger.Level?

    /// Sets up logfmt lines on stderr and returns a logger for `label`.
    func bootstrap(_ label: String, defaultLevel: Logger.Level = .info) -> Logger {
        let level = logLevel ?? defaultLevel
        LoggingSystem.bootstrap { name in
            var handler = LogfmtHandler(label: name)
            handler.logLevel = level
            return handler
        }
        // Writing to a closed pipe must fail the write, not kill the process.
        signal(SIGPIPE, SIG_IGN)
        return Logger(label: label)
    }
}

extension Logger.Level: @retroactive ExpressibleByArgument {}

/// Liveness of the router protocol; router and workers should agree (each side announces its own
/// and waits for the other at the slower interval, warning when they differ).
struct HeartbeatOptions: ParsableArguments {
    @Option(help: "Heartbeat interval in milliseconds, sent both ways; give router and workers the same (a mismatch is logged).")
    var heartbeatMs = 1000
    @Option(help: "Missed heartbeats (at the slower side's interval) after which a peer counts as dead (the router re-queues a worker's jobs; a worker reconnects).")
    var liveness = 3

    func validate() throws {
        guard heartbeatMs >= 10, liveness >= 1 else { throw ValidationError("--heartbeat-ms must be ≥ 10 and --liveness ≥ 1") }
    }

    var settings: HeartbeatSettings { HeartbeatSettings(intervalMs: heartbeatMs, liveness: liveness) }
}

/// `--metrics-port`: Prometheus metrics for any long-running process.
struct MetricsOptions: ParsableArguments {
    @Option(help: "Serve Prometheus metrics at http://HOST:PORT/metrics (off by default).")
    var metricsPort: Int?
    @Option(help: "Address the metrics endpoint listens on: loopback, unless --insecure (the endpoint is plain HTTP).")
    var metricsHost = "127.0.0.1"

    /// `insecure`: the command's --insecure, which also lets metrics listen beyond loopback.
    func start(_ logger: Logger, insecure: Bool = false) throws {
        guard let port = metricsPort else { return }
        do {
            let (address, warning) = try MetricsEndpoint.start(port: port, host: metricsHost, insecure: insecure)
            if let warning { logger.warning("\(warning)") }
            logger.info("metrics served", metadata: ["endpoint": "http://\(metricsHost):\(port)/metrics", "bound": "\(address)"])
        } catch {
            logger.critical("cannot serve metrics", metadata: ["error": "\(error)"])
            throw ExitCode(2)
        }
    }
}

/// How a worker or a filter reaches a router over a network: CURVE keys, or `--insecure`.
struct CurveClientOptions: ParsableArguments {
    @Option(help: ArgumentHelp("The router's public key: the NAME.pub file `aligners keys generate` wrote for it. With --curve-key, connects with CURVE.",
                               valueName: "file"))
    var curveServerKey: String?
    @Option(help: ArgumentHelp("This peer's key pair: a NAME.key file from `aligners keys generate` (mode 0600), whose NAME.pub is on the router's allowlist.",
                               valueName: "file"))
    var curveKey: String?
    @Flag(help: "Allow plain tcp (no CURVE) to an address other than loopback, and metrics beyond loopback; logs a warning. Without CURVE, anyone on the network can read and inject samples.")
    var insecure = false

    func validate() throws {
        guard (curveServerKey == nil) == (curveKey == nil) else {
            throw ValidationError("--curve-server-key and --curve-key go together: the router's NAME.pub and this peer's NAME.key")
        }
    }

    /// The keys read from their files, or nil without CURVE.
    func keys() throws -> CurveClientKeys? {
        guard let curveServerKey, let curveKey else { return nil }
        return try CurveClientKeys(serverKeyFile: curveServerKey, keyFile: curveKey)
    }
}

/// The squad's settings, shared by `filter` (in process) and `router`.
struct SquadOptions: ParsableArguments {
    @Option(help: "Comma-separated criteria, in the order that breaks ties.")
    var criteria: String = "ethical,factuality,helpful"

    @Option(help: "A sample goes to a criterion's aligner when its score is strictly below this.")
    var threshold: Double = 0.5

    @Option(help: "Samples per squad batch (the order of criteria is decided per batch).")
    var batchSize: Int = 64

    @Option(help: "Milliseconds a partial batch waits for more samples.")
    var windowMs: Int = 50

    @Option(help: ArgumentHelp("Which rewrites stay: always (the paper's policy), no-regression (undo one after which its own criterion scores lower), improvement (keep one only when its own criterion scores higher and no passing criterion starts failing).",
                               discussion: "An undone step stays in alignment.steps with changed: false and a note saying why."))
    var acceptance: String = "improvement"

    @Option(help: "With --acceptance improvement: how much higher the rewrite's own score must be.")
    var acceptanceMargin = 0.05

    @Option(help: ArgumentHelp("With --acceptance improvement: per-criterion margins in place of --acceptance-margin, as NAME=MARGIN,…; NAME=off (or a margin above 1) never runs that aligner (its inspector still scores). 'none' clears the defaults.",
                               discussion: "The default turns the helpful aligner off: on the valid split no margin made its kept rewrites win 65% of the judge's comparisons (BENCHMARKS.md, \"Acceptance margins\")."))
    var acceptanceMargins = SquadOptions.defaultAcceptanceMargins

    static let defaultAcceptanceMargins = "helpful=off"

    /// `--acceptance-margins` parsed.
    var marginsByCriterion: [String: Double] {
        get throws {
            let text = acceptanceMargins.trimmingCharacters(in: .whitespaces)
            guard !text.isEmpty, text != "none" else { return [:] }
            var out: [String: Double] = [:]
            for item in text.split(separator: ",") {
                let parts = item.split(separator: "=", maxSplits: 1).map { $0.trimmingCharacters(in: .whitespaces) }
                let value = parts.count == 2 ? (parts[1] == "off" ? Double.infinity : Double(parts[1])) : nil
                guard parts.count == 2, !parts[0].isEmpty, let m = value, m >= 0, !m.isNaN else {
                    throw ValidationError("--acceptance-margins: '\(item)' is not NAME=MARGIN with a margin ≥ 0 or NAME=off (e.g. helpful=0.3)")
                }
                out[parts[0]] = m
            }
            return out
        }
    }

    @Flag(help: "Same as --acceptance no-regression.")
    var revertRegressions = false

    var acceptancePolicy: SquadRun.Acceptance {
        revertRegressions ? .noRegression : SquadRun.Acceptance(rawValue: acceptance) ?? .always
    }

    var criteriaList: [String] {
        criteria.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
    }

    func validate() throws {
        guard !criteriaList.isEmpty else { throw ValidationError("--criteria needs at least one criterion") }
        guard Set(criteriaList).count == criteriaList.count else { throw ValidationError("--criteria lists a criterion twice") }
        guard (0...1).contains(threshold) else { throw ValidationError("--threshold must be within [0, 1]") }
        guard batchSize >= 1 else { throw ValidationError("--batch-size must be at least 1") }
        guard windowMs >= 0 else { throw ValidationError("--window-ms must not be negative") }
        guard (0...1).contains(acceptanceMargin) else { throw ValidationError("--acceptance-margin must be within [0, 1]") }
        _ = try marginsByCriterion
        guard SquadRun.Acceptance(rawValue: acceptance) != nil else {
            throw ValidationError("--acceptance must be one of \(SquadRun.Acceptance.allCases.map(\.rawValue).joined(separator: ", "))")
        }
    }

    /// The options given a value other than their default (what `filter --connect` cannot pass on).
    func changedFromDefaults() -> [String] {
        guard let d = try? SquadOptions.parse([]) else { return [] }
        var out: [String] = []
        if criteriaList != d.criteriaList { out.append("--criteria") }
        if threshold != d.threshold { out.append("--threshold") }
        if batchSize != d.batchSize { out.append("--batch-size") }
        if windowMs != d.windowMs { out.append("--window-ms") }
        if acceptance != d.acceptance || revertRegressions { out.append(revertRegressions ? "--revert-regressions" : "--acceptance") }
        if acceptanceMargin != d.acceptanceMargin { out.append("--acceptance-margin") }
        if acceptanceMargins != d.acceptanceMargins { out.append("--acceptance-margins") }
        return out
    }

    func routerSettings() -> RouterSettings {
        var s = RouterSettings(criteria: criteriaList)
        s.threshold = threshold
        s.batchSize = batchSize
        s.batchWindowMs = windowMs
        s.acceptance = acceptancePolicy
        s.acceptanceMargin = acceptanceMargin
        s.acceptanceMargins = (try? marginsByCriterion) ?? [:]   // validated in validate()
        return s
    }
}

extension String {
    /// Help text as paragraphs: the source's hard-wrapped lines are joined so that argument-parser
    /// wraps them once, at the terminal's width. Blank lines, indented lines (examples) and lines
    /// starting a list item ("- ", "1. ") keep their line breaks.
    var reflowed: String {
        var out: [String] = []
        var joinable = false
        for line in split(separator: "\n", omittingEmptySubsequences: false).map(String.init) {
            let startsItem = line.hasPrefix(" ") || line.hasPrefix("\t") || line.hasPrefix("- ")
                || line.prefix(while: \.isNumber).count > 0 && line.drop(while: \.isNumber).hasPrefix(". ")
            if line.isEmpty {
                out.append(line)
                joinable = false
            } else if joinable && !startsItem {
                out[out.count - 1] += " " + line
            } else {
                out.append(line)
                joinable = !line.hasPrefix(" ") && !line.hasPrefix("\t")
            }
        }
        return out.joined(separator: "\n")
    }
}
