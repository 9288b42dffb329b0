import Foundation

/// Which endpoints may carry samples in the clear. inproc://, ipc:// and tcp on a loopback address
/// stay on this host (ipc:// is guarded by file permissions); anything else reaches a network and
/// needs CURVE, or the operator's explicit `--insecure`.
public enum EndpointPolicy {
    /// Whether a ZeroMQ endpoint stays on this host.
    public static func isLocal(_ endpoint: String) -> Bool {
        if endpoint.hasPrefix("inproc://") || endpoint.hasPrefix("ipc://") { return true }
        guard endpoint.hasPrefix("tcp://") else { return false }
        // tcp://HOST:PORT, tcp://[IPv6]:PORT, or for a connect tcp://SOURCE;HOST:PORT.
        var address = endpoint.dropFirst("tcp://".count)
        if let semicolon = address.lastIndex(of: ";") { address = address[address.index(after: semicolon)...] }
        guard let colon = address.lastIndex(of: ":") else { return false }
        var host = address[..<colon]
        if host.hasPrefix("[") && host.hasSuffix("]") { host = host.dropFirst().dropLast() }
        return isLoopbackHost(String(host))
    }

    /// Loopback by its literal address or name: 127.0.0.0/8, ::1, `localhost`, or the interface `lo`.
    /// Other names are not resolved here: what they mean can change after the check.
    public static func isLoopbackHost(_ host: String) -> Bool {
        if host == "localhost" || host == "lo" || host == "::1" { return true }
        var v4 = in_addr()
        if inet_pton(AF_INET, host, &v4) == 1 { return UInt32(bigEndian: v4.s_addr) >> 24 == 127 }
        var v6 = in6_addr()
        if inet_pton(AF_INET6, host, &v6) == 1 {
            // ::1, and ::ffff:127.x.y.z (IPv4-mapped loopback).
            let b = withUnsafeBytes(of: v6) { Array($0) }
            if b[0..<15].allSatisfy({ $0 == 0 }) && b[15] == 1 { return true }
            return b[0..<10].allSatisfy({ $0 == 0 }) && b[10] == 0xff && b[11] == 0xff && b[12] == 127
        }
        return false
    }

    /// Checks that `endpoint` may be used for `use` ("bind", "connect to"). Returns the warning to
    /// log when only `insecure` allows it; throws when nothing does. `remedy` says how to protect it.
    public static func check(_ endpoint: String, use: String, encrypted: Bool, insecure: Bool,
                             risk: String = "read and inject samples", remedy: String) throws -> String? {
        if isLocal(endpoint) || encrypted { return nil }
        if insecure {
            return "\(use) \(endpoint) without encryption on a non-loopback address (--insecure): anyone who can reach it can \(risk)"
        }
        throw PlainNetworkEndpoint(endpoint: endpoint, use: use, risk: risk, remedy: remedy)
    }
}

/// A network endpoint without encryption that `--insecure` did not allow.
public struct PlainNetworkEndpoint: Error, CustomStringConvertible {
    public let endpoint: String
    public let use: String
    public let risk: String
    public let remedy: String
    public var description: String {
        "refusing to \(use) \(endpoint) without encryption: it is not a loopback address, so anyone who can reach it "
            + "could \(risk). \(remedy); or pass --insecure to accept that on a network you trust"
    }
}
