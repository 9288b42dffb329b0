import Foundation

/// Finds installed model packages (`make models` puts them in `models/` at the repository root).
///
/// Search order, first directory holding the file wins: an explicit `--models-dir`,
/// `$ALIGNERS_MODELS_DIR`, `./models`, `models/` beside the repository that built the executable,
/// then `/var/lib/aligners/models` (the systemd units' state directory).
public enum ModelLocator {
    public static let environmentVariable = "ALIGNERS_MODELS_DIR"

    public static func searchDirectories(explicit: String? = nil) -> [URL] {
        var dirs: [URL] = []
        if let explicit { dirs.append(URL(fileURLWithPath: explicit)) }
        if let env = ProcessInfo.processInfo.environment[environmentVariable], !env.isEmpty {
            dirs.append(URL(fileURLWithPath: env))
        }
        dirs.append(URL(fileURLWithPath: FileManager.default.currentDirectoryPath).appendingPathComponent("models"))
        // .build/<config>/aligners -> repository root
        let exe = URL(fileURLWithPath: CommandLine.arguments.first ?? "").resolvingSymlinksInPath()
        var up = exe.deletingLastPathComponent()
        for _ in 0..<4 {
            up = up.deletingLastPathComponent()
            dirs.append(up.appendingPathComponent("models"))
        }
        dirs.append(URL(fileURLWithPath: "/var/lib/aligners/models"))
        var seen = Set<String>()
        return dirs.filter { seen.insert($0.standardizedFileURL.path).inserted }
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
