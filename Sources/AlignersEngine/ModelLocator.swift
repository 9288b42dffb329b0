import Foundation

/// Finds installed model packages (`make models` puts them in `models/` at the repository root).
///
/// Search order, first directory holding the file wins: an explicit `--models-dir` (then only it),
/// `$ALIGNERS_MODELS_DIR`, `./models`, `models/` beside the repository that built the executable,
/// then `/var/lib/aligners/models` (the systemd units' state directory).
public enum ModelLocator {
    public static let environmentVariable = "ALIGNERS_MODELS_DIR"

    public static func searchDirectories(explicit: String? = nil) -> [URL] {
        SearchPath.directories(folder: "models", explicit: explicit, environment: environmentVariable,
                               system: "/var/lib/aligners/models")
    }

    /// The first existing `directory/relativePath`, or an error listing where it looked.
    public static func locate(_ relativePath: String, explicit: String? = nil) throws -> URL {
        let dirs = searchDirectories(explicit: explicit)
        for dir in dirs {
            let candidate = dir.appendingPathComponent(relativePath)
            if FileManager.default.fileExists(atPath: candidate.path) { return candidate }
        }
        throw ModelNotFound(relativePath: relativePath, searched: dirs.map(\.path))
    }
}

public struct ModelNotFound: Error, CustomStringConvertible {
    public let relativePath: String
    public let searched: [String]
    public var description: String {
        "model file \(relativePath) not found; looked in: \(searched.joined(separator: ", ")). "
            + "Run `make models` in the aligners checkout, or pass --models-dir / set \(ModelLocator.environmentVariable)."
    }
}

/// Where a kind of file is looked for, first hit wins: an explicit flag alone (a directory named on
/// the command line is the one meant: no silent fall-back to another copy), else an environment
/// variable, `./<folder>`, `<folder>/` of the checkout that built the executable
/// (`.build/<config>/aligners` → the repository root), then a system directory. Shared by models,
/// inspector heads and criteria.
public enum SearchPath {
    public static func directories(folder: String, explicit: String?, environment: String, system: String) -> [URL] {
        if let explicit, !explicit.isEmpty { return [URL(fileURLWithPath: explicit)] }
        var dirs: [URL] = []
        if let env = ProcessInfo.processInfo.environment[environment], !env.isEmpty {
            dirs.append(URL(fileURLWithPath: env))
        }
        dirs.append(URL(fileURLWithPath: FileManager.default.currentDirectoryPath).appendingPathComponent(folder))
        var up = URL(fileURLWithPath: CommandLine.arguments.first ?? "").resolvingSymlinksInPath().deletingLastPathComponent()
        for _ in 0..<4 {
            up = up.deletingLastPathComponent()
            dirs.append(up.appendingPathComponent(folder))
        }
        dirs.append(URL(fileURLWithPath: system))
        var seen = Set<String>()
        return dirs.filter { seen.insert($0.standardizedFileURL.path).inserted }
    }
}
