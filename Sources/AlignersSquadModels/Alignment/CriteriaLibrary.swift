import AlignersEngine
import Foundation
import AlignersCore
import Yams

/// Finds and loads criterion files (`<name>.yaml` or `<name>.yml`).
///
/// Search order, first directory holding the file wins: an explicit `--criteria-dir`,
/// `$ALIGNERS_CRITERIA_DIR`, `./Criteria`, `Criteria/` beside the repository that built the
/// executable, then `/etc/aligners/criteria`.
///
///     let ethical = try CriteriaLibrary(searchDir: criteriaDir).load("ethical")
///     let all = try CriteriaLibrary().loadAll()          // every criterion in the first directory that has any
public struct CriteriaLibrary: Sendable {
    public static let environmentVariable = "ALIGNERS_CRITERIA_DIR"
    public static let extensions = ["yaml", "yml"]

    public let directories: [URL]

    /// `searchDir` (e.g. `--criteria-dir`) is searched first.
    public init(searchDir: String? = nil) {
        directories = Self.searchDirectories(explicit: searchDir)
    }

    /// Exactly these directories, in this order (tests).
    public init(directories: [URL]) {
        self.directories = directories
    }

    public static func searchDirectories(explicit: String? = nil) -> [URL] {
        SearchPath.directories(folder: "Criteria", explicit: explicit, environment: environmentVariable,
                               system: "/etc/aligners/criteria")
    }

    /// The file for criterion `name`, or an error listing where it looked.
    public func locate(_ name: String) throws -> URL {
        for dir in directories {
            for ext in Self.extensions {
                let u = dir.appendingPathComponent("\(name).\(ext)")
                if FileManager.default.fileExists(atPath: u.path) { return u }
            }
        }
        throw CriterionNotFound(name: name, searched: directories.map(\.path))
    }

    /// Loads and validates criterion `name`.
    public func load(_ name: String) throws -> Criterion {
        try Self.load(file: locate(name))
    }

    /// The criterion names in the first search directory that holds any criterion file.
    public func available() -> [String] {
        for dir in directories {
            guard let items = try? FileManager.default.contentsOfDirectory(atPath: dir.path) else { continue }
            let names = items.filter { n in Self.extensions.contains { n.hasSuffix(".\($0)") } }
                .map { URL(fileURLWithPath: $0).deletingPathExtension().lastPathComponent }
            if !names.isEmpty { return Array(Set(names)).sorted() }
        }
        return []
    }

    /// Every criterion of `available()`, validated.
    public func loadAll() throws -> [Criterion] {
        try available().map(load)
    }

    /// Parses and validates one file. The file's base name must equal its `name` field.
    public static func load(file url: URL) throws -> Criterion {
        let data: Data
        do { data = try Data(contentsOf: url) } catch {
            throw CriterionError(file: url.path, field: "", problem: "cannot be read: \(error.localizedDescription)")
        }
        guard let text = String(data: data, encoding: .utf8) else {
            throw CriterionError(file: url.path, field: "", problem: "is not UTF-8 text")
        }
        return try parse(text, file: url.path, expectedName: url.deletingPathExtension().lastPathComponent)
    }

    /// Parses and validates YAML text; `file` names it in errors.
    public static func parse(_ yaml: String, file: String, expectedName: String? = nil) throws -> Criterion {
        let root: Node?
        do { root = try Yams.compose(yaml: yaml) } catch let e as YamlError {
            throw CriterionError(file: file, field: "", problem: "is not valid YAML: \(Self.describe(e))", line: Self.line(of: e))
        }
        guard let root else { throw CriterionError(file: file, field: "", problem: "is empty") }
        return try Criterion(document: document(root, file: file), file: file, expectedName: expectedName)
    }

    /// Yams' tree as the neutral document the validator reads. Plain scalars stay text (no YAML 1.1
    /// booleans); plain `~`, `null` and empty values are `.null`.
    static func document(_ node: Node, file: String) throws -> CriterionDocument {
        let line = node.mark?.line ?? 0
        switch node {
        case .scalar(let s):
            if s.style == .plain && ["", "~", "null", "Null", "NULL"].contains(s.string) { return .null(line: line) }
            return .scalar(s.string, line: line)
        case .sequence(let seq):
            return .sequence(try seq.map { try document($0, file: file) }, line: line)
        case .mapping(let m):
            var pairs: [(key: String, value: CriterionDocument)] = []
            for (k, v) in m {
                guard case .scalar(let ks) = k else {
                    throw CriterionError(file: file, field: "", problem: "has a key that is not text", line: k.mark?.line)
                }
                pairs.append((ks.string, try document(v, file: file)))
            }
            return .mapping(pairs, line: line)
        case .alias:
            throw CriterionError(file: file, field: "", problem: "uses a YAML alias; write the value out", line: line)
        }
    }

    private static func line(of e: YamlError) -> Int? {
        switch e {
        case .scanner(_, _, let m, _), .parser(_, _, let m, _), .composer(_, _, let m, _): m.line
        default: nil
        }
    }

    private static func describe(_ e: YamlError) -> String {
        switch e {
        case .scanner(let c, let p, _, _), .parser(let c, let p, _, _), .composer(let c, let p, _, _):
            (c.map { "\($0.description) " } ?? "") + p
        default: "\(e)"
        }
    }
}

public struct CriterionNotFound: Error, CustomStringConvertible {
    public let name: String
    public let searched: [String]
    public var description: String {
        "no criterion file \(name).yaml; looked in: \(searched.joined(separator: ", ")). "
            + "Pass --criteria-dir or set \(CriteriaLibrary.environmentVariable); see Criteria/README.md to write one."
    }
}
