import AlignersSchema
import Foundation
import Logging
import Testing
@testable import AlignersPipeline
import PipelineTestDoubles

@Suite("Router transport: values in process, protobuf over ZeroMQ", .serialized)
struct RouterTransportTests {
    @Test("a filter run on the in-process hubs gives what the same run gives over inproc:// sockets", .timeLimit(.minutes(10)))
    func hubMatchesSockets() throws {
        let objects: [[String: Any]] = (0..<30).map { i in
            var markers = ""
            if i % 3 == 0 { markers += "[bad:ethical]" }
            if i % 4 == 0 { markers += "[bad:helpful]" }
            return i % 5 == 4 ? ["id": "s\(i)", "prompt": "q\(i)"]   // the generator writes its response
                : ["id": "s\(i)", "prompt": "q\(i)", "response": "a\(i) \(markers)", "extra": ["n": i]]
        }
        let values = try runFilter(jsonl(objects), transport: .values)
        let sockets = try runFilter(jsonl(objects), transport: .inprocSockets)
        #expect(values.summary == sockets.summary)
        #expect(values.summary.lines == 30 && values.summary.aligned > 0 && values.summary.failed == 0)
        #expect(values.raw.map(normalized) == sockets.raw.map(normalized))
    }

    @Test("a hub carries values both ways, a new link is a new peer, a closed one is gone")
    func hubLinks() throws {
        let hub = try LocalHub(name: "backend")
        let first = try hub.connect(), second = try hub.connect()
        #expect(first.identity != second.identity)
        try first.send(.heartbeat(HeartbeatSettings()))
        try second.send(.disconnect("draining"))
        guard case .message(let a, let fromA, _)? = try hub.receive(), case .message(let b, let fromB, _)? = try hub.receive() else {
            Issue.record("the hub's inbox lost a message")
            return
        }
        #expect(try hub.receive() == nil)
        #expect(fromA == first.identity && fromB == second.identity)
        if case .heartbeat = a.kind {} else { Issue.record("expected the heartbeat first, got \(a)") }
        if case .disconnect(let d) = b.kind { #expect(d.reason == "draining") } else { Issue.record("expected the disconnect, got \(b)") }

        #expect(hub.send(.disconnect("unknown worker: send Ready"), to: second.identity))
        guard case .message(let reply)? = try second.receive() else {
            Issue.record("the peer's mailbox lost a message")
            return
        }
        if case .disconnect(let d) = reply.kind { #expect(d.reason == "unknown worker: send Ready") } else { Issue.record("got \(reply)") }
        #expect(try first.receive() == nil)

        second.close()
        #expect(!hub.send(.heartbeat(HeartbeatSettings()), to: second.identity))
        #expect(hub.send(.heartbeat(HeartbeatSettings()), to: first.identity))
    }

    @Test("a worker whose in-process router is silent reconnects on a new link and registers again", .timeLimit(.minutes(10)))
    func workerReconnectsInProcess() throws {
        let hub = try LocalHub(name: "backend")
        var settings = WorkerSettings()
        settings.heartbeat = HeartbeatSettings(intervalMs: 20, liveness: 2)
        settings.name = "lonely"
        let worker = try Worker(context: ZMQContext(), router: .inProcess(hub), handler: InspectorStage(MarkerInspector(criterion: "ethical")),
                                settings: settings, logger: Logger(label: "test") { _ in SwiftLogNoOpLogHandler() })
        let stopped = DispatchSemaphore(value: 0)
        Thread {
            try? worker.run()
            stopped.signal()
        }.start()
        // Nobody answers: each registration comes from a fresh identity.
        var registrations: [Identity] = []
        #expect(wait {
            while case .message(let message, let peer, _)? = try? hub.receive() {
                if case .ready(let ready) = message.kind, ready.worker == "lonely" { registrations.append(peer) }
            }
            return registrations.count >= 2
        })
        #expect(Set(registrations).count == registrations.count)
        worker.drain()
        stopped.wait()
    }

    @Test("frames that are not a message arrive as junk on a ZeroMQ port and link")
    func zeroMQJunk() throws {
        let context = ZMQContext()
        let endpoint = "inproc://transport-test-\(UUID().uuidString)"
        let socket = try ZMQSocket(context, .router)
        try socket.setRouterMandatory()
        try socket.bind(endpoint)
        let port = ZMQRouterPort(socket, readsKeys: false)
        defer { port.close() }
        let link = try RouterConnection(context: context, endpoint: endpoint, curve: nil)
        defer { link.close() }
        try link.socket.send([[0xff, 0xff, 0xff]])   // not a protobuf Message
        try link.send(.heartbeat(HeartbeatSettings()))
        var arrivals: [RouterArrival] = []
        #expect(wait { if let a = try? port.receive() { arrivals.append(a) }; return arrivals.count == 2 })
        guard arrivals.count == 2, case .junk = arrivals[0], case .message(let message, let peer, let key) = arrivals[1] else {
            Issue.record("got \(arrivals)")
            return
        }
        if case .heartbeat = message.kind {} else { Issue.record("got \(message)") }
        #expect(key == "")
        #expect(port.send(.disconnect("bye"), to: peer))
        #expect(!port.send(.disconnect("bye"), to: Identity([1, 2, 3])))
        #expect(try socket.send([peer.bytes, [0xff, 0xff]]))
        var heard: [LinkArrival] = []
        #expect(wait { if let a = try? link.receive() { heard.append(a) }; return heard.count == 2 })
        guard heard.count == 2, case .message(let bye) = heard[0], case .junk = heard[1] else {
            Issue.record("got \(heard)")
            return
        }
        if case .disconnect(let d) = bye.kind { #expect(d.reason == "bye") } else { Issue.record("got \(bye)") }
    }

    /// Polls `condition` until it holds (true) or a generous while passes (false); only catches hangs.
    private func wait(_ condition: () -> Bool) -> Bool {
        let deadline = Date().addingTimeInterval(60)
        while Date() < deadline {
            if condition() { return true }
            Thread.sleep(forTimeInterval: 0.005)
        }
        return false
    }
}
