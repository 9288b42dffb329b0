import Foundation
import Yams

/// `--config FILE` (or `$ALIGNERS_CONFIG`): a YAML file with one section per subcommand whose keys
/// are that subcommand's long option names. Values fill in options the command line leaves out;
/// what is on the command line wins.
///
///     filter:
///       criteria: [ethical, helpful]
///       threshold: 0.4
///       explain: true
///     router:
///       frontend: tcp://0.0.0.0:5555
enum ConfigFile {
    struct Invalid: Error, CustomStringConvertible {
        let description: String
    }

    /// The arguments with the config's options for the chosen subcommand spliced in.
    static func apply(to arguments: [String], environment: [String: String] = ProcessInfo.processInfo.environment) throws -> [String] {
        var args = arguments
        var path: String?
        if let i = args.firstIndex(of: "--config") {
            guard i + 1 < args.count else { throw Invalid(description: "--config needs a file") }
            path = args[i + 1]
            args.removeSubrange(i...(i + 1))
        } else if let i = args.firstIndex(where: { $0.hasPrefix("--config=") }) {
            path = String(args[i].dropFirst("--config=".count))
            args.remove(at: i)
        } else if let env = environment["ALIGNERS_CONFIG"], !env.isEmpty {
            path = env
        }
        guard let path, let command = args.first, !command.hasPrefix("-") else { return args }
        let text: String
        do {
            text = try String(contentsOfFile: path, encoding: .utf8)
        } catch {
            throw Invalid(description: "cannot read config file \(path): \(error.localizedDescription)")
        }
        let root: Any?
        do {
            root = try Yams.load(yaml: text)
        } catch {
            throw Invalid(description: "\(path): not valid YAML: \(error)")
        }
        guard let sections = root as? [String: Any] else {
            throw Invalid(description: "\(path): expected a mapping of subcommand names (filter, router, worker, …) to options")
        }
        guard let section = sections[command] else { return args }
        guard let options = section as? [String: Any] else {
            throw Invalid(description: "\(path): '\(command)' must be a mapping of option names to values")
        }
        var extra: [String] = []
        for key in options.keys.sorted() {
            let flag = "--\(key)"
            if args.contains(flag) || args.contains(where: { $0.hasPrefix(flag + "=") }) { continue }
            switch options[key] {
            case let b as Bool:
                if b { extra.append(flag) }
            case let list as [Any]:
                extra += [flag, list.map { "\($0)" }.joined(separator: ",")]
            case let value?:
                extra += [flag, "\(value)"]
            case nil:
                throw Invalid(description: "\(path): \(command).\(key) has no value")
            }
        }
        return [command] + extra + args.dropFirst()
    }
}
