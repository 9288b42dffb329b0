import AlignersCore
import Foundation
import Synchronization
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// How to reach an OpenAI-compatible chat-completions server.
public struct OpenAIBackendSettings: Sendable, CustomStringConvertible {
    /// The server, with or without the `/v1` suffix (`http://host:8000`, `https://api.openai.com/v1`).
    public var baseURL: URL
    /// The `model` field of each request.
    public var model: String
    /// Sent as `Authorization: Bearer …` when present; never logged or printed.
    public var apiKey: String?
    /// Seconds one request may take (connect, send and wait for the reply).
    public var timeout: TimeInterval
    /// Further attempts after a connection error, a timeout, a 429 or a 5xx.
    public var maxRetries: Int
    /// Most requests in flight at once for one batch.
    public var concurrency: Int
    public var maxTokens: Int
    public var temperature: Double
    /// First backoff delay in seconds; it doubles per retry (with jitter) up to `maxBackoff`.
    public var initialBackoff: TimeInterval
    public var maxBackoff: TimeInterval

    public init(baseURL: URL, model: String = "gpt-4o-mini", apiKey: String? = nil, timeout: TimeInterval = 60,
                maxRetries: Int = 3, concurrency: Int = 8, maxTokens: Int = 256, temperature: Double = 0.7,
                initialBackoff: TimeInterval = 0.5, maxBackoff: TimeInterval = 30) {
        self.baseURL = baseURL
        self.model = model
        self.apiKey = apiKey
        self.timeout = timeout
        self.maxRetries = max(0, maxRetries)
        self.concurrency = max(1, concurrency)
        self.maxTokens = maxTokens
        self.temperature = temperature
        self.initialBackoff = max(0, initialBackoff)
        self.maxBackoff = max(0, maxBackoff)
    }

    /// `<base>/v1/chat/completions`, whether or not `baseURL` already ends with `/v1` (or names the endpoint).
    public var endpoint: URL {
        var text = baseURL.absoluteString
        while text.hasSuffix("/") { text.removeLast() }
        if text.hasSuffix("/chat/completions") { return URL(string: text)! }
        if !text.hasSuffix("/v1") { text += "/v1" }
        return URL(string: text + "/chat/completions")!
    }

    /// `host` or `host:port`.
    public var hostLabel: String {
        let host = baseURL.host ?? baseURL.absoluteString
        if let port = baseURL.port { return "\(host):\(port)" }
        return host
    }

    /// Everything but the key.
    public var description: String {
        "OpenAIBackendSettings(endpoint: \(endpoint.absoluteString), model: \(model), apiKey: \(apiKey == nil ? "none" : "<redacted>"), "
            + "timeout: \(timeout)s, maxRetries: \(maxRetries), concurrency: \(concurrency), maxTokens: \(maxTokens), "
            + "temperature: \(temperature))"
    }

    /// The API key from `file` (trimmed) when given, otherwise from the environment variable `env`
    /// (default `OPENAI_API_KEY`); nil when the variable is unset or empty. A named file that cannot be
    /// read or is empty is an error.
    public static func resolveAPIKey(env: String? = nil, file: String? = nil,
                                     environment: [String: String] = ProcessInfo.processInfo.environment) throws -> String? {
        if let file {
            let text: String
            do { text = try String(contentsOfFile: file, encoding: .utf8) } catch {
                throw OpenAIBackendError.apiKey("cannot read the API key file \(file): \(error.localizedDescription)")
            }
            let key = text.trimmingCharacters(in: .whitespacesAndNewlines)
            guard !key.isEmpty else { throw OpenAIBackendError.apiKey("the API key file \(file) is empty") }
            return key
        }
        let name = env ?? "OPENAI_API_KEY"
        if let key = environment[name]?.trimmingCharacters(in: .whitespacesAndNewlines), !key.isEmpty { return key }
        if env != nil { throw OpenAIBackendError.apiKey("the environment variable \(name) is unset or empty") }
        return nil
    }
}

public enum OpenAIBackendError: Error, CustomStringConvertible, Sendable {
    /// The server answered with a status other than 2xx (after `attempts` tries).
    case http(url: String, status: Int, body: String, attempts: Int)
    /// No answer: connection refused, reset, timed out (after `attempts` tries).
    case transport(url: String, message: String, attempts: Int)
    /// A 2xx reply that is not a chat completion.
    case malformed(url: String, message: String, body: String)
    case apiKey(String)

    public var description: String {
        switch self {
        case let .http(url, status, body, attempts):
            "POST \(url) failed with HTTP \(status) after \(attempts) attempt(s): \(body)"
        case let .transport(url, message, attempts):
            "POST \(url) failed after \(attempts) attempt(s): \(message)"
        case let .malformed(url, message, body):
            "POST \(url) returned an unusable reply (\(message)): \(body)"
        case let .apiKey(message): message
        }
    }
}

/// A `Generator` backed by an OpenAI-compatible `/v1/chat/completions` server. `generate` blocks the
/// calling thread while up to `settings.concurrency` requests of the batch run at once.
public final class OpenAIChatGenerator: Generator, @unchecked Sendable {
    public let settings: OpenAIBackendSettings
    public var modelName: String { "openai:\(settings.model)@\(settings.hostLabel)" }
    private let session: URLSession

    public init(settings: OpenAIBackendSettings) {
        self.settings = settings
        let configuration = URLSessionConfiguration.ephemeral
        // `send` enforces `settings.timeout` itself (swift-corelibs-foundation truncates URLSession
        // timeouts to whole seconds, so 0.5 s would mean "at once"); URLSession's is a looser backstop.
        configuration.timeoutIntervalForRequest = Self.sessionTimeout(settings.timeout)
        configuration.timeoutIntervalForResource = Self.sessionTimeout(settings.timeout)
        configuration.httpMaximumConnectionsPerHost = settings.concurrency
        configuration.requestCachePolicy = .reloadIgnoringLocalCacheData
        configuration.urlCache = nil
        configuration.httpCookieStorage = nil
        session = URLSession(configuration: configuration, delegate: SameOriginRedirects(), delegateQueue: nil)
    }

    deinit { session.finishTasksAndInvalidate() }

    private static func sessionTimeout(_ timeout: TimeInterval) -> TimeInterval { (timeout + 1).rounded(.up) }

    public func generate(_ conversations: [[Turn]]) throws -> [String] {
        if conversations.isEmpty { return [] }
        let results = ResultSlots(count: conversations.count)
        let next = Counter()
        let group = DispatchGroup()
        // One thread per in-flight request, each taking the next conversation until none is left.
        for _ in 0..<min(settings.concurrency, conversations.count) {
            group.enter()
            let thread = Thread { [self] in
                defer { group.leave() }
                while let index = next.take(below: conversations.count) {
                    if results.failed { return }
                    do { results.set(index, .success(try complete(conversations[index]))) } catch {
                        results.set(index, .failure(error))
                    }
                }
            }
            thread.name = "openai-generator"
            thread.start()
        }
        group.wait()
        return try results.values()
    }

    // MARK: One request

    private struct Message: Codable { var role: String; var content: String? }
    private struct RequestBody: Encodable {
        var model: String
        var messages: [Message]
        var max_tokens: Int
        var temperature: Double
    }
    private struct ResponseBody: Decodable {
        struct Choice: Decodable { var message: Message? }
        var choices: [Choice]
    }

    private enum Attempt {
        case done(Data)
        case retry(OpenAIBackendError, retryAfter: TimeInterval?)
        case fail(OpenAIBackendError)
    }

    /// One conversation's reply, retrying connection errors, timeouts, 429 and 5xx with backoff.
    func complete(_ conversation: [Turn]) throws -> String {
        let url = settings.endpoint
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        let body = try encoder.encode(RequestBody(model: settings.model,
                                                  messages: conversation.map { Message(role: $0.role, content: $0.content) },
                                                  max_tokens: settings.maxTokens, temperature: settings.temperature))
        var request = URLRequest(url: url, cachePolicy: .reloadIgnoringLocalCacheData,
                                 timeoutInterval: Self.sessionTimeout(settings.timeout))
        request.httpMethod = "POST"
        request.httpBody = body
        request.setValue("application/json", forHTTPHeaderField: "Content-Type")
        request.setValue("application/json", forHTTPHeaderField: "Accept")
        if let key = settings.apiKey, !key.isEmpty { request.setValue("Bearer \(key)", forHTTPHeaderField: "Authorization") }

        var attempt = 0
        while true {
            attempt += 1
            switch send(request, attempt: attempt) {
            case let .done(data):
                return try parse(data, url: url)
            case let .fail(error):
                throw error
            case let .retry(error, retryAfter):
                if attempt > settings.maxRetries { throw error }
                Thread.sleep(forTimeInterval: delay(beforeRetry: attempt, retryAfter: retryAfter))
            }
        }
    }

    /// Exponential backoff with jitter (half to all of `initial · 2^(n-1)`, capped), or the server's
    /// `Retry-After` when it gave one.
    func delay(beforeRetry retry: Int, retryAfter: TimeInterval?) -> TimeInterval {
        if let retryAfter { return min(max(0, retryAfter), max(settings.maxBackoff, 120)) }
        let exponential = min(settings.maxBackoff, settings.initialBackoff * pow(2, Double(min(retry - 1, 30))))
        return exponential * Double.random(in: 0.5...1.0)
    }

    private func send(_ request: URLRequest, attempt: Int) -> Attempt {
        let url = request.url!.absoluteString
        let box = ReplyBox()
        let done = DispatchSemaphore(value: 0)
        let task = session.dataTask(with: request) { data, response, error in
            box.store(data: data, response: response, error: error)
            done.signal()
        }
        task.resume()
        if done.wait(timeout: .now() + settings.timeout) == .timedOut {
            task.cancel()
            _ = done.wait(timeout: .now() + 5)
            return .retry(.transport(url: url, message: "timed out after \(settings.timeout)s", attempts: attempt), retryAfter: nil)
        }
        let (data, response, error) = box.load()
        if let error {
            let message: String
            if let urlError = error as? URLError, urlError.code == .timedOut {
                message = "timed out after \(settings.timeout)s"
            } else {
                message = error.localizedDescription
            }
            return .retry(.transport(url: url, message: message, attempts: attempt), retryAfter: nil)
        }
        guard let http = response as? HTTPURLResponse else {
            return .retry(.transport(url: url, message: "no HTTP response", attempts: attempt), retryAfter: nil)
        }
        let payload = data ?? Data()
        if (200..<300).contains(http.statusCode) { return .done(payload) }
        let failure = OpenAIBackendError.http(url: url, status: http.statusCode, body: excerpt(payload), attempts: attempt)
        if http.statusCode == 429 || http.statusCode >= 500 {
            let retryAfter = (http.value(forHTTPHeaderField: "Retry-After"))
                .flatMap { TimeInterval($0.trimmingCharacters(in: .whitespaces)) }
            return .retry(failure, retryAfter: retryAfter)
        }
        return .fail(failure)
    }

    private func parse(_ data: Data, url: URL) throws -> String {
        let reply: ResponseBody
        do { reply = try JSONDecoder().decode(ResponseBody.self, from: data) } catch {
            throw OpenAIBackendError.malformed(url: url.absoluteString, message: "not a chat completion", body: excerpt(data))
        }
        guard let first = reply.choices.first else {
            throw OpenAIBackendError.malformed(url: url.absoluteString, message: "no choices", body: excerpt(data))
        }
        guard let content = first.message?.content else {
            throw OpenAIBackendError.malformed(url: url.absoluteString, message: "choices[0].message.content is missing",
                                               body: excerpt(data))
        }
        return content
    }

    /// A reply body for an error message, with the API key blanked out (a server may echo the
    /// request's headers back).
    func excerpt(_ data: Data) -> String {
        var text = Self.excerpt(data)
        if let key = settings.apiKey, key.count >= 4 { text = text.replacingOccurrences(of: key, with: "<redacted>") }
        return text
    }

    /// The first 200 characters of a body, on one line.
    static func excerpt(_ data: Data, limit: Int = 200) -> String {
        let text = String(decoding: data.prefix(limit * 4), as: UTF8.self)
            .replacingOccurrences(of: "\r", with: " ").replacingOccurrences(of: "\n", with: " ")
        if text.isEmpty { return "(empty body)" }
        return text.count > limit ? String(text.prefix(limit)) + "…" : text
    }
}

/// Follows a redirect only to the same scheme, host and port: the request carries the API key,
/// which another host must not receive. A refused redirect comes back as its 3xx reply (an error).
private final class SameOriginRedirects: NSObject, URLSessionTaskDelegate, @unchecked Sendable {
    func urlSession(_ session: URLSession, task: URLSessionTask, willPerformHTTPRedirection response: HTTPURLResponse,
                    newRequest request: URLRequest, completionHandler: @escaping (URLRequest?) -> Void) {
        let from = task.originalRequest?.url, to = request.url
        let same = from?.scheme == to?.scheme && from?.host == to?.host && from?.port == to?.port
        completionHandler(same ? request : nil)
    }
}

// MARK: Thread-safe helpers

private final class ReplyBox: @unchecked Sendable {
    private let reply = Mutex<(Data?, URLResponse?, Error?)>((nil, nil, nil))
    func store(data: Data?, response: URLResponse?, error: Error?) { reply.withLock { $0 = (data, response, error) } }
    func load() -> (Data?, URLResponse?, Error?) { reply.withLock { $0 } }
}

private final class Counter: Sendable {
    private let value = Mutex(0)
    func take(below limit: Int) -> Int? {
        value.withLock { value in
            guard value < limit else { return nil }
            value += 1
            return value - 1
        }
    }
}

private final class ResultSlots: @unchecked Sendable {
    private struct State {
        var slots: [Result<String, Error>?]
        var firstFailure: Int?
    }
    private let state: Mutex<State>
    init(count: Int) { state = Mutex(State(slots: Array(repeating: nil, count: count))) }
    var failed: Bool { state.withLock { $0.firstFailure != nil } }
    func set(_ index: Int, _ result: Result<String, Error>) {
        state.withLock { s in
            s.slots[index] = result
            if case .failure = result, s.firstFailure == nil || index < s.firstFailure! { s.firstFailure = index }
        }
    }
    /// The answers in order, or the error of the first conversation that failed.
    func values() throws -> [String] {
        let (slots, firstFailure) = state.withLock { ($0.slots, $0.firstFailure) }
        if let firstFailure, case let .failure(error)? = slots[firstFailure] { throw error }
        return try slots.map { slot in
            guard let slot else { throw OpenAIBackendError.transport(url: "", message: "request not run", attempts: 0) }
            return try slot.get()
        }
    }
}
