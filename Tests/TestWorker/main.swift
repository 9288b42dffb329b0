// A worker process serving test doubles, so the end-to-end tests can run real ZeroMQ between
// real processes without model files. Not part of the product.
import AlignersPipeline
import Foundation
import Logging
import PipelineTestDoubles

let args = CommandLine.arguments
func value(_ flag: String) -> String? { args.firstIndex(of: flag).flatMap { $0 + 1 < args.count ? args[$0 + 1] : nil } }
guard let service = value("--service"), let endpoint = value("--connect") else {
    FileHandle.standardError.write(Data(("usage: aligners-testworker --service SERVICE --connect ENDPOINT [--delay-ms N] [--heartbeat-ms N] [--liveness N] "
        + "[--curve-server-key FILE --curve-key FILE]\n").utf8))
    exit(2)
}
let delay = Int(value("--delay-ms") ?? "0") ?? 0
let handler: any StageHandler
if service == "generate" {
    handler = GeneratorStage(EchoGenerator())
} else if service.hasPrefix("inspect.") {
    handler = InspectorStage(MarkerInspector(criterion: String(service.dropFirst(8)), delayMs: delay))
} else if service.hasPrefix("align.") {
    handler = AlignerStage(MarkerAligner(criterion: String(service.dropFirst(6)), delayMs: delay))
} else {
    FileHandle.standardError.write(Data("unknown service \(service)\n".utf8))
    exit(2)
}
var logger = Logger(label: "testworker")
logger.logLevel = .warning
var settings = WorkerSettings()
settings.heartbeat.intervalMs = Int(value("--heartbeat-ms") ?? "250") ?? 250
settings.heartbeat.liveness = Int(value("--liveness") ?? "3") ?? 3
if let serverKey = value("--curve-server-key"), let key = value("--curve-key") {
    settings.curve = try CurveClientKeys(serverKeyFile: serverKey, keyFile: key)
}
let worker = try Worker(context: ZMQContext(), endpoint: endpoint, handler: handler, settings: settings, logger: logger)
signal(SIGTERM) { _ in exit(0) }
try worker.run()
