// A worker process serving test doubles, so the end-to-end tests can run real ZeroMQ between
// real processes without model files. Not part of the product.
//
// With --tap ENDPOINT it is a tap subscriber instead (see TapReader.swift): the multi-host test runs
// one on an allowlisted host and one on an intruder's.
import AlignersPipeline
import Foundation
import Logging
import PipelineTestDoubles

let args = CommandLine.arguments
func value(_ flag: String) -> String? { args.firstIndex(of: flag).flatMap { $0 + 1 < args.count ? args[$0 + 1] : nil } }
let usage = "usage: aligners-testworker --service SERVICE --connect ENDPOINT [--criteria A,B] [--delay-ms N] [--heartbeat-ms N] [--liveness N] "
    + "[--name NAME] [--record FILE] [--insecure] [--curve-server-key FILE --curve-key FILE]\n"
    + "       aligners-testworker --tap ENDPOINT [--record FILE] [--curve-server-key FILE --curve-key FILE]\n"
func fail(_ message: String) -> Never {
    FileHandle.standardError.write(Data("aligners-testworker: \(message)\n".utf8))
    exit(2)
}

/// Where `--record FILE` appends the id of every envelope received, one per line.
let recorder: IDRecorder?
do { recorder = try value("--record").map(IDRecorder.init(path:)) } catch { fail("\(error)") }

let curve: CurveClientKeys?
switch (value("--curve-server-key"), value("--curve-key")) {
case (let serverKey?, let key?):
    do { curve = try CurveClientKeys(serverKeyFile: serverKey, keyFile: key) } catch { fail("\(error)") }
case (nil, nil):
    curve = nil
default:
    fail("--curve-server-key and --curve-key go together")
}

if let tap = value("--tap") {
    runTapReader(endpoint: tap, curve: curve, recorder: recorder)
}

guard let service = value("--service"), let endpoint = value("--connect") else { fail(usage) }
let delay = Int(value("--delay-ms") ?? "0") ?? 0
var handler: any StageHandler
if service == "generate" {
    handler = GeneratorStage(EchoGenerator())
} else if service == "inspect" {
    // Every criterion the tests' routers run (a router takes an inspector only if it scores all of its criteria).
    let criteria = (value("--criteria") ?? "ethical,helpful").split(separator: ",").map(String.init)
    handler = InspectorStage(criteria.map { MarkerInspector(criterion: $0, delayMs: delay) })
} else if service.hasPrefix("align.") {
    handler = AlignerStage(MarkerAligner(criterion: String(service.dropFirst(6)), delayMs: delay))
} else {
    fail("unknown service \(service)")
}
if let recorder { handler = RecordingStage(handler, recorder: recorder) }
var logger = Logger(label: "testworker")
logger.logLevel = .warning
var settings = WorkerSettings()
settings.heartbeat.intervalMs = Int(value("--heartbeat-ms") ?? "250") ?? 250
settings.heartbeat.liveness = Int(value("--liveness") ?? "3") ?? 3
settings.curve = curve
settings.insecure = args.contains("--insecure")
if let name = value("--name") { settings.name = name }
let worker = try Worker(context: ZMQContext(), endpoint: endpoint, handler: handler, settings: settings, logger: logger)
signal(SIGTERM) { _ in exit(0) }
try worker.run()
