/// A criterion as data: what it asks of a response (principles), how a correction looks
/// (demonstrations), and which inspector head and which aligner serve it.
///
/// Criteria live in YAML files (`Criteria/<name>.yaml`, see `Criteria/README.md`); the loader in
/// AlignersSquadModels (`CriteriaLibrary`) parses the YAML into a `CriterionDocument` and this file
/// validates it. Validation is strict and every error names the file, the field and the problem:
///
///     ethical.yaml:31: demonstrations[1].violated[0]: principle 4 does not exist (the file has 3 principles)
public struct Criterion: Sendable, Hashable {
    public var name: String
    public var description: String
    /// Numbered by position from 1 (demonstrations refer to them by number).
    public var principles: [String]
    public var demonstrations: [Demonstration]
    public var inspector: InspectorSpec
    public var aligner: AlignerSpec
    /// The file it was read from (for messages and relative model paths); nil when built in code.
    public var file: String?

    public init(name: String, description: String, principles: [String], demonstrations: [Demonstration],
                inspector: InspectorSpec, aligner: AlignerSpec = AlignerSpec(), file: String? = nil) {
        self.name = name
        self.description = description
        self.principles = principles
        self.demonstrations = demonstrations
        self.inspector = inspector
        self.aligner = aligner
        self.file = file
    }

    /// One worked example: a question, a flawed (or already fine) answer, a critique naming the
    /// violated principles, and the corrected answer. `violated` empty means the answer was fine
    /// and `corrected` repeats it.
    public struct Demonstration: Sendable, Hashable {
        public var question: String
        public var answer: String
        public var critique: String
        public var violated: [Int]
        public var corrected: String
        public var isFine: Bool { violated.isEmpty }
        public init(question: String, answer: String, critique: String, violated: [Int], corrected: String) {
            self.question = question
            self.answer = answer
            self.critique = critique
            self.violated = violated
            self.corrected = corrected
        }
    }

    /// The inspector head serving the criterion: a path relative to the inspectors directory
    /// (`inspectors/ethical` means `inspectors/ethical.safetensors` + `.json`), or absolute.
    public struct InspectorSpec: Sendable, Hashable {
        public var head: String
        public init(head: String) { self.head = head }
        /// The head's criterion name as `InspectorStore` looks it up (`inspectors/ethical` -> `ethical`).
        public var headName: String {
            var s = Substring(head)
            if let slash = s.lastIndex(of: "/") { s = s[s.index(after: slash)...] }
            for ext in [".safetensors", ".json"] where s.hasSuffix(ext) { s = s.dropLast(ext.count) }
            return String(s)
        }
    }

    public struct AlignerSpec: Sendable, Hashable {
        public enum Kind: String, Sendable, Hashable, CaseIterable {
            /// The decoder given principles and demonstrations (few-shot corrector prompt).
            case prompted
            /// A model trained on `x [INIT] y [ALIGNED] y' [DONE]`.
            case trained
        }
        public var kind: Kind
        /// `default` (the default decoder) or a GGUF path: absolute, relative to the criterion
        /// file, or relative to a models directory (`ModelLocator`).
        public var model: String
        /// Trained aligners: a PEFT LoRA adapter directory (`adapter_config.json` +
        /// `adapter_model.safetensors`) served over `model`; absolute or relative to the criterion file.
        public var adapter: String?
        /// How many demonstrations the prompted aligner puts in its prompt (the first ones; at most
        /// this many, always including a fine one when the file has one).
        public var demonstrationsInPrompt: Int
        public var maxNewTokens: Int?
        /// Prompted aligners: demonstrations show a critique before the correction (the paper's
        /// corrector format). Off by default: a 135M decoder answers better without.
        public var critique: Bool
        public init(kind: Kind = .prompted, model: String = "default", adapter: String? = nil, demonstrationsInPrompt: Int = 3,
                    maxNewTokens: Int? = nil, critique: Bool = false) {
            self.critique = critique
            self.adapter = adapter
            self.kind = kind
            self.model = model
            self.demonstrationsInPrompt = demonstrationsInPrompt
            self.maxNewTokens = maxNewTokens
        }
        public var usesDefaultModel: Bool { model == "default" }
    }
}

/// An invalid criterion file: which file, which field (a path such as `demonstrations[2].violated`),
/// what is wrong, and the line when known.
public struct CriterionError: Error, CustomStringConvertible, Hashable, Sendable {
    public var file: String
    public var field: String
    public var problem: String
    public var line: Int?

    public init(file: String, field: String, problem: String, line: Int? = nil) {
        self.file = file
        self.field = field
        self.problem = problem
        self.line = line
    }

    public var description: String {
        "\(file)\(line.map { ":\($0)" } ?? ""): \(field.isEmpty ? "(top level)" : field): \(problem)"
    }
}

/// A parsed YAML (or JSON) document, neutral of the parser: scalars stay text, so `no` or `1.0`
/// in a principle is text rather than a boolean or a number. Lines are 1-based (0: unknown).
public indirect enum CriterionDocument: Sendable {
    case null(line: Int)
    case scalar(String, line: Int)
    case sequence([CriterionDocument], line: Int)
    case mapping([(key: String, value: CriterionDocument)], line: Int)

    public var line: Int {
        switch self {
        case .null(let l), .scalar(_, let l), .sequence(_, let l), .mapping(_, let l): l
        }
    }

    var kindName: String {
        switch self {
        case .null: "nothing"
        case .scalar: "a single value"
        case .sequence: "a list"
        case .mapping: "a mapping"
        }
    }
}

extension Criterion {
    public static let fields = ["name", "description", "principles", "demonstrations", "inspector", "aligner"]
    static let demonstrationFields = ["question", "answer", "critique", "violated", "corrected"]

    /// Validates a parsed document. `file` names the file in errors; `expectedName` (the file's
    /// base name), when given, must equal the `name` field.
    public init(document: CriterionDocument, file: String, expectedName: String? = nil) throws {
        let v = Validator(file: file)
        let top = try v.mapping(document, "", allowed: Self.fields)

        let name = try v.string(v.require(top, "name", in: "", line: document.line), "name")
        guard name.allSatisfy({ $0.isASCII && ($0.isLowercase || $0.isNumber || $0 == "-" || $0 == "_") }),
              name.first?.isLetter == true else {
            throw v.error("name", "'\(name)' is not a valid criterion name (lowercase letters, digits, '-' and '_', starting with a letter)", top["name"]!.line)
        }
        if let expectedName, expectedName != name {
            throw v.error("name", "is '\(name)' but the file is named '\(expectedName)'; criteria are found by file name, so they must agree", top["name"]!.line)
        }
        let description = try v.string(v.require(top, "description", in: "", line: document.line), "description")

        let principlesNode = try v.require(top, "principles", in: "", line: document.line)
        let principleItems = try v.sequence(principlesNode, "principles")
        guard !principleItems.isEmpty else { throw v.error("principles", "is empty; a criterion needs at least one principle", principlesNode.line) }
        let principles = try principleItems.enumerated().map { i, p in try v.string(p, "principles[\(i)]") }

        let demosNode = try v.require(top, "demonstrations", in: "", line: document.line)
        let demoItems = try v.sequence(demosNode, "demonstrations")
        guard demoItems.count >= 2 else {
            throw v.error("demonstrations", "has \(demoItems.count); at least two are needed (one flawed answer and one already fine)", demosNode.line)
        }
        var demonstrations: [Demonstration] = []
        for (i, item) in demoItems.enumerated() {
            let path = "demonstrations[\(i)]"
            let m = try v.mapping(item, path, allowed: Self.demonstrationFields)
            func text(_ key: String) throws -> String {
                try v.string(v.require(m, key, in: path, line: item.line), "\(path).\(key)")
            }
            let question = try text("question"), answer = try text("answer"), critique = try text("critique")
            let corrected = try text("corrected")
            let violatedNode = try v.require(m, "violated", in: path, line: item.line)
            var violated: [Int] = []
            for (j, n) in try v.sequence(violatedNode, "\(path).violated").enumerated() {
                let f = "\(path).violated[\(j)]"
                guard case .scalar(let s, let line) = n, let k = Int(s.trimmed) else {
                    throw v.error(f, "must be a principle number (1...\(principles.count)), found \(n.describe)", n.line)
                }
                guard (1...principles.count).contains(k) else {
                    throw v.error(f, "principle \(k) does not exist (the file has \(principles.count) principle\(principles.count == 1 ? "" : "s"), numbered from 1)", line)
                }
                guard !violated.contains(k) else { throw v.error(f, "principle \(k) is listed twice", line) }
                violated.append(k)
            }
            let same = Self.normalized(answer) == Self.normalized(corrected)
            if violated.isEmpty && !same {
                throw v.error("\(path).corrected", "differs from the answer, but `violated` is empty; an answer that violates nothing is kept as it is (list the violated principles, or repeat the answer)", m["corrected"]!.line)
            }
            if !violated.isEmpty && same {
                throw v.error("\(path).corrected", "repeats the answer, but `violated` lists principles \(violated); a flawed answer needs a correction", m["corrected"]!.line)
            }
            demonstrations.append(Demonstration(question: question, answer: answer, critique: critique, violated: violated, corrected: corrected))
        }
        guard demonstrations.contains(where: \.isFine) else {
            throw v.error("demonstrations", "has no demonstration of an answer that is already fine (one with `violated: []` and `corrected` equal to `answer`)", demosNode.line)
        }
        guard demonstrations.contains(where: { !$0.isFine }) else {
            throw v.error("demonstrations", "has no demonstration of a flawed answer (one with violated principles)", demosNode.line)
        }

        let inspNode = try v.require(top, "inspector", in: "", line: document.line)
        let insp = try v.mapping(inspNode, "inspector", allowed: ["head"])
        let head = try v.string(v.require(insp, "head", in: "inspector", line: inspNode.line), "inspector.head")

        var aligner = AlignerSpec()
        if let alNode = top["aligner"] {
            let al = try v.mapping(alNode, "aligner", allowed: ["kind", "model", "adapter", "demonstrations_in_prompt", "max_new_tokens", "critique"])
            let kindText = try v.string(v.require(al, "kind", in: "aligner", line: alNode.line), "aligner.kind")
            guard let kind = AlignerSpec.Kind(rawValue: kindText) else {
                throw v.error("aligner.kind", "'\(kindText)' is not a kind of aligner; use one of: \(AlignerSpec.Kind.allCases.map(\.rawValue).joined(separator: ", "))", al["kind"]!.line)
            }
            aligner.kind = kind
            if let m = al["model"] { aligner.model = try v.string(m, "aligner.model") }
            if let a = al["adapter"] {
                guard kind == .trained else {
                    throw v.error("aligner.adapter", "is only for `kind: trained` (a prompted aligner runs the plain model)", a.line)
                }
                aligner.adapter = try v.string(a, "aligner.adapter")
            }
            if kind == .trained && aligner.model == "default" && aligner.adapter == nil {
                throw v.error("aligner.model", "is the default decoder, but a trained aligner needs its own GGUF model or an `adapter`",
                              (al["model"] ?? alNode).line)
            }
            if let n = al["demonstrations_in_prompt"] {
                aligner.demonstrationsInPrompt = try v.int(n, "aligner.demonstrations_in_prompt", range: 0...demonstrations.count)
            }
            if let n = al["max_new_tokens"] { aligner.maxNewTokens = try v.int(n, "aligner.max_new_tokens", range: 16...4096) }
            if let n = al["critique"] { aligner.critique = try v.bool(n, "aligner.critique") }
        }

        self.init(name: name, description: description, principles: principles, demonstrations: demonstrations,
                  inspector: InspectorSpec(head: head), aligner: aligner, file: file)
    }

    /// Whitespace-insensitive comparison text.
    static func normalized(_ s: String) -> String {
        s.split(whereSeparator: { $0.isWhitespace }).joined(separator: " ")
    }

    /// The demonstrations the prompted aligner shows: the first `demonstrationsInPrompt`, with the
    /// first fine one swapped in for the last when none of those is fine.
    public var promptDemonstrations: [Demonstration] {
        let n = min(aligner.demonstrationsInPrompt, demonstrations.count)
        var picked = Array(demonstrations.prefix(n))
        if n > 0, !picked.contains(where: \.isFine), let fine = demonstrations.first(where: \.isFine) {
            picked[n - 1] = fine
        }
        return picked
    }
}

extension CriterionDocument {
    fileprivate var describe: String {
        if case .scalar(let s, _) = self { return "'\(s.count > 40 ? String(s.prefix(40)) + "…" : s)'" }
        return kindName
    }
}

private struct Validator {
    let file: String

    struct Fields {
        let pairs: [(key: String, value: CriterionDocument)]
        subscript(_ key: String) -> CriterionDocument? { pairs.first { $0.key == key }?.value }
    }

    func error(_ field: String, _ problem: String, _ line: Int) -> CriterionError {
        CriterionError(file: file, field: field, problem: problem, line: line > 0 ? line : nil)
    }

    func join(_ parent: String, _ key: String) -> String { parent.isEmpty ? key : "\(parent).\(key)" }

    func mapping(_ node: CriterionDocument, _ field: String, allowed: [String]) throws -> Fields {
        guard case .mapping(let pairs, _) = node else {
            throw error(field, "must be a mapping of fields (\(allowed.joined(separator: ", "))), found \(node.kindName)", node.line)
        }
        var seen = Set<String>()
        for (k, v) in pairs {
            guard allowed.contains(k) else {
                throw error(join(field, k), "is not a known field; expected one of: \(allowed.joined(separator: ", "))", v.line)
            }
            guard seen.insert(k).inserted else { throw error(join(field, k), "is given twice", v.line) }
        }
        return Fields(pairs: pairs)
    }

    func require(_ m: Fields, _ key: String, in parent: String, line: Int) throws -> CriterionDocument {
        guard let v = m[key] else { throw error(join(parent, key), "is missing", line) }
        return v
    }

    func string(_ node: CriterionDocument, _ field: String) throws -> String {
        switch node {
        case .scalar(let s, let line):
            let t = s.trimmed
            guard !t.isEmpty else { throw error(field, "is empty", line) }
            return t
        case .null(let line): throw error(field, "is empty", line)
        default: throw error(field, "must be text, found \(node.kindName)", node.line)
        }
    }

    func sequence(_ node: CriterionDocument, _ field: String) throws -> [CriterionDocument] {
        guard case .sequence(let items, _) = node else {
            throw error(field, "must be a list, found \(node.kindName)", node.line)
        }
        return items
    }

    func bool(_ node: CriterionDocument, _ field: String) throws -> Bool {
        guard case .scalar(let s, _) = node, ["true", "false"].contains(s.trimmed.lowercased()) else {
            throw error(field, "must be true or false, found \(node.describe)", node.line)
        }
        return s.trimmed.lowercased() == "true"
    }

    func int(_ node: CriterionDocument, _ field: String, range: ClosedRange<Int>) throws -> Int {
        guard case .scalar(let s, let line) = node, let n = Int(s.trimmed) else {
            throw error(field, "must be a whole number, found \(node.kindName)", node.line)
        }
        guard range.contains(n) else { throw error(field, "\(n) is out of range \(range.lowerBound)...\(range.upperBound)", line) }
        return n
    }
}

extension String {
    /// Without leading and trailing whitespace (AlignersCore does without Foundation).
    var trimmed: String {
        guard let first = firstIndex(where: { !$0.isWhitespace }), let last = lastIndex(where: { !$0.isWhitespace }) else { return "" }
        return String(self[first...last])
    }
}
