import AlignersCore

public struct RouterSettings: Sendable, Equatable {
    /// Criteria the squad applies, in the order that breaks ties between equal means.
    public var criteria: [String]
    /// The gate: a sample goes to a criterion's aligner when its score is strictly below this.
    public var threshold: Double = 0.5
    /// Which rewrites stay after their re-inspection (`SquadRun.Acceptance`; the paper keeps all).
    public var acceptance: SquadRun.Acceptance = .always
    /// The rise of its own score that `improvement` asks of a rewrite.
    public var acceptanceMargin = 0.05
    /// Per-criterion margins in place of `acceptanceMargin` (`SquadRun.acceptanceMargins`).
    public var acceptanceMargins: [String: Double] = [:]
    /// The `noRegression` variant on or off (`--revert-regressions`).
    public var revertRegressions: Bool {
        get { acceptance != .always }
        set { acceptance = newValue ? .noRegression : .always }
    }
    /// Samples per squad batch (the order of criteria is decided per batch).
    public var batchSize: Int = 64
    /// How long a partial batch waits for more samples before it starts anyway.
    public var batchWindowMs: Int = 50
    /// Most envelopes in one job; smaller jobs spread a batch over more workers.
    public var jobSize: Int = 16
    /// Envelopes a client may have in flight.
    public var clientWindow: Int = 256
    /// Dispatches of one job before its samples fail.
    public var maxAttempts: Int = 3
    /// A job not answered this long after it was dispatched goes back to its queue for another
    /// worker (a new attempt); the worker holding it gets no more work until it answers or is lost.
    /// Generous: it bounds a stuck model, not a slow one (a CPU generator's job of 16 long answers
    /// can take minutes), and stays under the workers' own 600 s watchdog bound. nil: no deadline
    /// (in process, where no other worker could take a job over).
    public var jobTimeoutMs: Int? = 300_000
    /// Work for a service that no worker has served for this long fails (NO_WORKER).
    public var serviceTimeoutMs: Int = 60_000
    public var heartbeat = HeartbeatSettings()
    /// Largest message accepted from a client or worker (bigger ones drop that peer's connection).
    /// Clients send at most `FilterSettings.maxSubmitBytes` at once; a job's result holds `jobSize`
    /// envelopes of lines up to 4 MiB.
    public var maxMessageBytes = 128 << 20

    public init(criteria: [String]) { self.criteria = criteria }
}

/// How the router's endpoints are protected.
public struct RouterSecurity: Sendable {
    /// CURVE on every socket (front end, back end, tap), peers admitted by allowlist; nil: none.
    public var curve: CurveServerKeys?
    /// Allow plain tcp on addresses other than loopback (logged as a warning).
    public var insecure: Bool
    public init(curve: CurveServerKeys? = nil, insecure: Bool = false) {
        self.curve = curve
        self.insecure = insecure
    }
}

/// A CURVE router's key pair and the allowlists its ZAP handler checks.
public struct CurveServerKeys: Sendable {
    public let keyPair: CurveKeyPair
    public let allowlists: PeerAllowlists
    public init(keyPair: CurveKeyPair, allowlists: PeerAllowlists) {
        self.keyPair = keyPair
        self.allowlists = allowlists
    }
}

/// What the router has done so far (for status lines and metrics).
public struct RouterStats: Sendable, Equatable {
    public var received = 0
    public var delivered = 0
    public var failed = 0
    public var inFlight = 0
    public var batches = 0
    public var dispatched = 0
    public var jobs = 0
    public var requeued = 0
    /// Jobs re-queued because their worker did not answer within `jobTimeoutMs`.
    public var expiredDeadlines = 0
    /// Answers to attempts that had ended (a job re-queued and run elsewhere), ignored.
    public var lateResults = 0
    public var rejectedFrames = 0
    /// Workers dropped for answers that were not valid, or whose key left the allowlist.
    public var droppedWorkers = 0
    /// CURVE handshakes refused (keys not on the allowlist).
    public var refusedPeers = 0
    public var workers = 0
    public var queued = 0
    /// CPU time the router's thread has used (its own cost, whatever else shares the cores).
    public var cpuNanos: UInt64 = 0
}
