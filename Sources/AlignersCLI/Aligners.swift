import AlignersPipeline
import ArgumentParser
import Foundation

@main
struct Aligners: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "aligners",
        abstract: "Align LLM answers after the fact with per-criterion inspectors and aligners.",
        discussion: """
            Pipe chat logs through the squad:  cat chats.jsonl | aligners filter > aligned.jsonl
            Or run the stages as daemons:      aligners router … ; aligners worker --role … ; aligners filter --connect …

            Every option can also come from a YAML file: --config FILE (or $ALIGNERS_CONFIG), one section
            per subcommand whose keys are its long option names; the command line wins.
            """.reflowed,
        subcommands: [FilterCommand.self, RouterCommand.self, WorkerCommand.self, KeysGroup.self,
                      TrainGroup.self, EvalGroup.self, ScoreCommand.self,
                      GenerateCommand.self, GenerateBenchCommand.self])

    /// Splices `--config` options in before parsing. Exit status: what the command says (0, or 1 when
    /// some lines were errors), else 2: it could not run (bad options or config file included;
    /// argument-parser's own 64 would contradict README's promise).
    static func main() async {
        do {
            let arguments = try ConfigFile.apply(to: Array(CommandLine.arguments.dropFirst()))
            var command = try parseAsRoot(arguments)
            if var async = command as? AsyncParsableCommand { try await async.run() } else { try command.run() }
        } catch {
            let code = exitCode(for: error)
            if code == .success || error is ExitCode {
                exit(withError: error)
            }
            StandardStreams.error(fullMessage(for: error) + "\n")
            Foundation.exit(2)
        }
    }
}
