import AlignersCore
import Foundation
import Testing
@testable import AlignersEngine
@testable import AlignersSquadModels
@testable import AlignersBackends
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A tiny HTTP/1.1 server on 127.0.0.1 with an ephemeral port, for testing the HTTP generator against
/// real sockets. One thread accepts; each connection gets a thread that reads the headers and the
/// `Content-Length` body, asks `handler` for a reply, writes it and closes. It records every request
/// and the most connections handled at once, and stops itself after `lifetime` seconds at the latest.
final class TinyHTTPServer: @unchecked Sendable {
    struct Request: Sendable {
        var method: String
        var path: String
        var headers: [String: String]  // lowercased names
        var body: Data
        var json: [String: Any]? { try? JSONSerialization.jsonObject(with: body) as? [String: Any] }
    }
    struct Reply: Sendable {
        var status: Int = 200
        var headers: [String: String] = [:]
        var body: String = ""
        /// Seconds to wait before answering.
        var delay: TimeInterval = 0
    }

    let port: UInt16
    private let listener: Int32
    private let lock = NSLock()
    private var _requests: [Request] = []
    private var active = 0
    private var _maxActive = 0
    private var stopped = false
    private let handler: @Sendable (_ request: Request, _ index: Int) -> Reply

    var baseURL: URL { URL(string: "http://127.0.0.1:\(port)")! }
    var requests: [Request] { lock.lock(); defer { lock.unlock() }; return _requests }
    var maxConcurrent: Int { lock.lock(); defer { lock.unlock() }; return _maxActive }

    init(lifetime: TimeInterval = 30, handler: @escaping @Sendable (_ request: Request, _ index: Int) -> Reply) throws {
        self.handler = handler
        #if canImport(Glibc)
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        #else
        let fd = socket(AF_INET, SOCK_STREAM, 0)
        #endif
        guard fd >= 0 else { throw POSIXError(.EIO) }
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = 0
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard bound == 0, listen(fd, 64) == 0 else { close(fd); throw POSIXError(.EADDRINUSE) }
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        listener = fd
        port = UInt16(bigEndian: address.sin_port)
        let deadline = Date().addingTimeInterval(lifetime)
        let thread = Thread { [self] in acceptLoop(until: deadline) }
        thread.name = "tiny-http-accept"
        thread.start()
    }

    func stop() {
        lock.lock(); stopped = true; lock.unlock()
    }

    private var isStopped: Bool { lock.lock(); defer { lock.unlock() }; return stopped }

    private func acceptLoop(until deadline: Date) {
        defer { close(listener) }
        while !isStopped && Date() < deadline {
            var poller = pollfd(fd: listener, events: Int16(POLLIN), revents: 0)
            guard poll(&poller, 1, 50) > 0 else { continue }
            let client = accept(listener, nil, nil)
            guard client >= 0 else { continue }
            let worker = Thread { [self] in serve(client) }
            worker.start()
        }
    }

    private func serve(_ client: Int32) {
        defer { close(client) }
        var timeout = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(client, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var buffer = Data()
        var chunk = [UInt8](repeating: 0, count: 4096)
        let separator = Data("\r\n\r\n".utf8)
        var headerEnd: Range<Data.Index>?
        for _ in 0..<1000 where headerEnd == nil {
            let n = recv(client, &chunk, chunk.count, 0)
            if n <= 0 { return }
            buffer.append(contentsOf: chunk[0..<n])
            headerEnd = buffer.range(of: separator)
        }
        guard let headerEnd else { return }
        let lines = String(decoding: buffer[..<headerEnd.lowerBound], as: UTF8.self).components(separatedBy: "\r\n")
        let requestLine = lines[0].split(separator: " ")
        var headers: [String: String] = [:]
        for line in lines.dropFirst() {
            guard let colon = line.firstIndex(of: ":") else { continue }
            headers[line[..<colon].lowercased()] = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
        }
        let length = Int(headers["content-length"] ?? "0") ?? 0
        var body = Data(buffer[headerEnd.upperBound...])
        for _ in 0..<10_000 where body.count < length {
            let n = recv(client, &chunk, chunk.count, 0)
            if n <= 0 { return }
            body.append(contentsOf: chunk[0..<n])
        }
        let request = Request(method: requestLine.first.map(String.init) ?? "", path: requestLine.count > 1 ? String(requestLine[1]) : "",
                              headers: headers, body: body)
        // A request counts as in flight from when it has been read until just before its reply goes
        // out: the client cannot start its next one before that, so the count has no race with the
        // closing of connections (counting from accept to close saw 3 under a limit of 2 on a loaded machine).
        lock.lock()
        let number = _requests.count
        _requests.append(request)
        active += 1
        _maxActive = max(_maxActive, active)
        lock.unlock()
        let reply = handler(request, number)
        if reply.delay > 0 { Thread.sleep(forTimeInterval: reply.delay) }
        lock.lock(); active -= 1; lock.unlock()
        let payload = Data(reply.body.utf8)
        var head = "HTTP/1.1 \(reply.status) \(reply.status == 200 ? "OK" : "Status")\r\n"
        head += "Content-Type: application/json\r\nContent-Length: \(payload.count)\r\nConnection: close\r\n"
        for (name, value) in reply.headers { head += "\(name): \(value)\r\n" }
        head += "\r\n"
        let bytes = Data(head.utf8) + payload
        bytes.withUnsafeBytes { raw in
            var sent = 0
            while sent < raw.count {
                let n = send(client, raw.baseAddress! + sent, raw.count - sent, Int32(MSG_NOSIGNAL))
                if n <= 0 { return }
                sent += n
            }
        }
    }

    /// A chat completion whose content is `content`.
    static func completion(_ content: String) -> String {
        let encoded = String(decoding: try! JSONEncoder().encode(content), as: UTF8.self)
        return #"{"id":"x","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":\#(encoded)},"finish_reason":"stop"}]}"#
    }

    /// Echoes the last message's content, prefixed with "re: ".
    static func echo(_ request: Request) -> Reply {
        let messages = request.json?["messages"] as? [[String: Any]] ?? []
        return Reply(body: completion("re: " + (messages.last?["content"] as? String ?? "?")))
    }
}

@Suite(.serialized) struct OpenAIBackendTests {
    func settings(_ server: TinyHTTPServer, suffix: String = "", key: String? = "sk-test", timeout: TimeInterval = 10,
                  retries: Int = 3, concurrency: Int = 8) -> OpenAIBackendSettings {
        OpenAIBackendSettings(baseURL: URL(string: server.baseURL.absoluteString + suffix)!, model: "test-model", apiKey: key,
                              timeout: timeout, maxRetries: retries, concurrency: concurrency, maxTokens: 32, temperature: 0.25,
                              initialBackoff: 0.01, maxBackoff: 0.05)
    }

    let conversation = [Turn(role: "system", content: "Be brief."), Turn(role: "user", content: "Hello \"there\"\n")]

    @Test func sendsTheRequestBodyAndBearerKey() throws {
        let server = try TinyHTTPServer { request, _ in TinyHTTPServer.echo(request) }
        defer { server.stop() }
        let generator = OpenAIChatGenerator(settings: settings(server))
        #expect(try generator.generate([conversation]) == ["re: Hello \"there\"\n"])
        #expect(generator.modelName == "openai:test-model@127.0.0.1:\(server.port)")
        let request = try #require(server.requests.first)
        #expect(request.method == "POST")
        #expect(request.path == "/v1/chat/completions")
        #expect(request.headers["authorization"] == "Bearer sk-test")
        #expect(request.headers["content-type"] == "application/json")
        let json = try #require(request.json)
        #expect(json["model"] as? String == "test-model")
        #expect(json["max_tokens"] as? Int == 32)
        #expect(json["temperature"] as? Double == 0.25)
        let messages = try #require(json["messages"] as? [[String: String]])
        #expect(messages == [["role": "system", "content": "Be brief."], ["role": "user", "content": "Hello \"there\"\n"]])
    }

    @Test func baseURLWithV1AndNoKey() throws {
        let server = try TinyHTTPServer { request, _ in TinyHTTPServer.echo(request) }
        defer { server.stop() }
        let generator = OpenAIChatGenerator(settings: settings(server, suffix: "/v1/", key: nil))
        #expect(try generator.generate([conversation]).count == 1)
        #expect(server.requests.first?.path == "/v1/chat/completions")
        #expect(server.requests.first?.headers["authorization"] == nil)
        #expect(try generator.generate([]) == [])
    }

    @Test func batchOfFiveComesBackInOrder() throws {
        // Later requests answer sooner, so completion order differs from batch order.
        let server = try TinyHTTPServer { request, _ in
            var reply = TinyHTTPServer.echo(request)
            let messages = request.json?["messages"] as? [[String: Any]] ?? []
            let n = Int((messages.last?["content"] as? String ?? "q0").dropFirst()) ?? 0
            reply.delay = 0.05 * Double(5 - n)
            return reply
        }
        defer { server.stop() }
        let generator = OpenAIChatGenerator(settings: settings(server))
        let batch = (0..<5).map { [Turn(role: "user", content: "q\($0)")] }
        #expect(try generator.generate(batch) == (0..<5).map { "re: q\($0)" })
        #expect(server.requests.count == 5)
    }

    @Test func retriesA500ThenSucceeds() throws {
        let server = try TinyHTTPServer { request, index in
            index < 2 ? .init(status: 500, body: #"{"error":"boom"}"#) : TinyHTTPServer.echo(request)
        }
        defer { server.stop() }
        let generator = OpenAIChatGenerator(settings: settings(server, retries: 3))
        #expect(try generator.generate([conversation]) == ["re: Hello \"there\"\n"])
        #expect(server.requests.count == 3)
    }

    @Test func givesUpAfterMaxRetries() throws {
        let server = try TinyHTTPServer { _, _ in .init(status: 503, body: "overloaded") }
        defer { server.stop() }
        let generator = OpenAIChatGenerator(settings: settings(server, retries: 2))
        let error = #expect(throws: OpenAIBackendError.self) { try generator.generate([conversation]) }
        #expect(server.requests.count == 3)
        let text = String(describing: error!)
        #expect(text.contains("503") && text.contains("overloaded") && text.contains("/v1/chat/completions"))
    }

    @Test func honoursRetryAfterOn429() throws {
        let server = try TinyHTTPServer { request, index in
            index == 0 ? .init(status: 429, headers: ["Retry-After": "1"], body: #"{"error":"slow down"}"#)
                : TinyHTTPServer.echo(request)
        }
        defer { server.stop() }
        let generator = OpenAIChatGenerator(settings: settings(server))
        let start = Date()
        #expect(try generator.generate([conversation]).count == 1)
        let elapsed = Date().timeIntervalSince(start)
        #expect(server.requests.count == 2)
        #expect(elapsed >= 0.9, "waited \(elapsed)s, Retry-After said 1s")
    }

    @Test func doesNotFollowARedirectToAnotherHost() throws {
        let elsewhere = try TinyHTTPServer { request, _ in TinyHTTPServer.echo(request) }
        defer { elsewhere.stop() }
        // 127.0.0.1 redirects to localhost: another host by name, so the key must not go there.
        let server = try TinyHTTPServer { _, _ in
            .init(status: 307, headers: ["Location": "http://localhost:\(elsewhere.port)/v1/chat/completions"], body: "{}")
        }
        defer { server.stop() }
        let generator = OpenAIChatGenerator(settings: settings(server, retries: 0))
        let error = #expect(throws: OpenAIBackendError.self) { try generator.generate([conversation]) }
        #expect(String(describing: error!).contains("307"))
        #expect(elsewhere.requests.isEmpty)
    }

    @Test func errorBodiesDoNotRepeatTheKey() throws {
        let server = try TinyHTTPServer { request, _ in
            .init(status: 401, body: #"{"error":"invalid key: \#(request.headers["authorization"] ?? "")"}"#)
        }
        defer { server.stop() }
        let generator = OpenAIChatGenerator(settings: settings(server, key: "sk-secret-123456"))
        let error = #expect(throws: OpenAIBackendError.self) { try generator.generate([conversation]) }
        let text = String(describing: error!)
        #expect(text.contains("401") && text.contains("<redacted>"))
        #expect(!text.contains("sk-secret-123456"))
    }

    @Test func doesNotRetryA400() throws {
        let server = try TinyHTTPServer { _, _ in .init(status: 400, body: #"{"error":{"message":"bad model"}}"#) }
        defer { server.stop() }
        let generator = OpenAIChatGenerator(settings: settings(server, retries: 3))
        let error = #expect(throws: OpenAIBackendError.self) { try generator.generate([conversation]) }
        #expect(server.requests.count == 1)
        let text = String(describing: error!)
        #expect(text.contains("400"))
        #expect(text.contains("bad model"))
        #expect(text.contains("http://127.0.0.1:\(server.port)/v1/chat/completions"))
        #expect(!text.contains("sk-test"))
    }

    @Test func timesOut() throws {
        let server = try TinyHTTPServer { request, _ in
            var reply = TinyHTTPServer.echo(request)
            reply.delay = 3
            return reply
        }
        defer { server.stop() }
        let generator = OpenAIChatGenerator(settings: settings(server, timeout: 0.5, retries: 1))
        let start = Date()
        let error = #expect(throws: OpenAIBackendError.self) { try generator.generate([conversation]) }
        let elapsed = Date().timeIntervalSince(start)
        // No upper bound on the time (a loaded runner may be slow): without the timeout the 3 s reply
        // would arrive and nothing would be thrown.
        #expect(elapsed >= 0.9, "took \(elapsed)s for two tries with a 0.5s timeout")
        #expect(server.requests.count == 2)  // one retry
        #expect(String(describing: error!).contains("timed out"))
    }

    @Test func respectsTheConcurrencyLimit() throws {
        let server = try TinyHTTPServer { request, _ in
            var reply = TinyHTTPServer.echo(request)
            reply.delay = 0.15
            return reply
        }
        defer { server.stop() }
        let generator = OpenAIChatGenerator(settings: settings(server, concurrency: 2))
        let batch = (0..<6).map { [Turn(role: "user", content: "q\($0)")] }
        #expect(try generator.generate(batch) == (0..<6).map { "re: q\($0)" })
        #expect(server.maxConcurrent <= 2)
        #expect(server.maxConcurrent == 2)

        let wide = try TinyHTTPServer { request, _ in
            var reply = TinyHTTPServer.echo(request)
            reply.delay = 0.3
            return reply
        }
        defer { wide.stop() }
        let many = OpenAIChatGenerator(settings: settings(wide, concurrency: 8))
        #expect(try many.generate(batch).count == 6)
        #expect(wide.maxConcurrent > 2)
    }

    @Test func connectionRefusedIsATransportError() throws {
        // A port that was just free: bind, read it, close.
        let server = try TinyHTTPServer { request, _ in TinyHTTPServer.echo(request) }
        let port = server.port
        server.stop()
        Thread.sleep(forTimeInterval: 0.2)
        let generator = OpenAIChatGenerator(settings: OpenAIBackendSettings(
            baseURL: URL(string: "http://127.0.0.1:\(port)")!, model: "m", timeout: 2, maxRetries: 1,
            initialBackoff: 0.01, maxBackoff: 0.02))
        let error = #expect(throws: OpenAIBackendError.self) { try generator.generate([conversation]) }
        if case let .transport(url, _, attempts)? = error {
            #expect(url.contains("127.0.0.1:\(port)"))
            #expect(attempts == 2)
        } else {
            Issue.record("expected a transport error, got \(String(describing: error))")
        }
    }

    @Test func resolvesTheAPIKey() throws {
        #expect(try OpenAIBackendSettings.resolveAPIKey(environment: ["OPENAI_API_KEY": "sk-env"]) == "sk-env")
        #expect(try OpenAIBackendSettings.resolveAPIKey(environment: [:]) == nil)
        #expect(try OpenAIBackendSettings.resolveAPIKey(env: "MY_KEY", environment: ["MY_KEY": " sk-mine\n"]) == "sk-mine")
        #expect(throws: OpenAIBackendError.self) { try OpenAIBackendSettings.resolveAPIKey(env: "MISSING", environment: [:]) }
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("aligners-key-\(UUID().uuidString)")
        try "sk-file\n".write(to: file, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(at: file) }
        #expect(try OpenAIBackendSettings.resolveAPIKey(file: file.path, environment: ["OPENAI_API_KEY": "sk-env"]) == "sk-file")
        #expect(throws: OpenAIBackendError.self) { try OpenAIBackendSettings.resolveAPIKey(file: "/nonexistent/key") }
        let settings = OpenAIBackendSettings(baseURL: URL(string: "https://api.example.com/v1")!, apiKey: "sk-secret")
        #expect(!settings.description.contains("sk-secret"))
        #expect(settings.endpoint.absoluteString == "https://api.example.com/v1/chat/completions")
    }

    @Test func backoffGrowsWithJitterAndHonoursRetryAfter() {
        let generator = OpenAIChatGenerator(settings: OpenAIBackendSettings(
            baseURL: URL(string: "http://127.0.0.1:1")!, initialBackoff: 1, maxBackoff: 8))
        for retry in 1...6 {
            let full = min(8, pow(2, Double(retry - 1)))
            let d = generator.delay(beforeRetry: retry, retryAfter: nil)
            #expect(d >= full * 0.5 && d <= full)
        }
        #expect(generator.delay(beforeRetry: 1, retryAfter: 3) == 3)
    }
}
