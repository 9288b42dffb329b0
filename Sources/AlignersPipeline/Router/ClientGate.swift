/// The router's front door: who its clients are and how much each may have in flight. Flow
/// control is credit: a client gets `window` envelopes of credit when it first speaks and more
/// only as its results go back, so nothing queues in the router beyond what clients were granted.
/// It owns no socket: the router sends the credit it grants (`ClientGateTests`).
struct ClientGate {
    struct Client {
        var lastSeen: UInt64
        /// The CURVE public key it connected with ("" without CURVE).
        var key = ""
        var inFlight = 0
        var gone = false
    }

    let window: Int
    private(set) var clients: [Identity: Client] = [:]

    init(window: Int) { self.window = window }

    /// Notes a message from `id`; true when it is a client not seen before (it gets `window`
    /// credit, unless the router is draining).
    mutating func heard(from id: Identity, key: String, now: UInt64) -> Bool {
        if clients[id] != nil {
            clients[id]!.lastSeen = now
            return false
        }
        clients[id] = Client(lastSeen: now, key: key)
        return true
    }

    /// Takes one envelope from `id` against its credit; false when it has none left (the envelope
    /// goes back at once with an error and does not count).
    mutating func take(from id: Identity) -> Bool {
        guard let client = clients[id], client.inFlight < window else { return false }
        clients[id]!.inFlight += 1
        return true
    }

    /// `count` of its envelopes went back to `id` (or were lost with it): the credit to grant it
    /// again, 0 for a client that is gone.
    mutating func returned(_ count: Int, to id: Identity, sent: Bool) -> Int {
        guard clients[id] != nil else { return 0 }
        clients[id]!.inFlight -= count
        return sent ? count : 0
    }

    /// The client said goodbye; it is forgotten once nothing of it is in flight.
    mutating func left(_ id: Identity) {
        clients[id]?.gone = true
    }

    /// Forgets the client now (its key left the allowlist), whatever it has in flight.
    mutating func remove(_ id: Identity) {
        clients[id] = nil
    }

    /// Forgets clients with nothing in flight that said goodbye or were silent past `expiryNs`.
    mutating func purge(now: UInt64, expiryNs: UInt64) {
        for (id, client) in clients where client.inFlight == 0 && (client.gone || now - client.lastSeen > expiryNs) {
            clients[id] = nil
        }
    }

    /// Clients still connected (for heartbeats).
    var connected: [Identity] { clients.filter { !$0.value.gone }.map(\.key) }
}
