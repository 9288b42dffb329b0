import ArgumentParser

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
            """,
        subcommands: [FilterCommand.self, RouterCommand.self, WorkerCommand.self,
                      TrainGroup.self, EvalGroup.self, ScoreCommand.self,
                      GenerateCommand.self, GenerateBenchCommand.self])

    /// Splices `--config` options in before parsing.
    static func main() async {
        do {
            let arguments = try ConfigFile.apply(to: Array(CommandLine.arguments.dropFirst()))
            await main(arguments)
        } catch {
            exit(withError: error)
        }
    }
}
