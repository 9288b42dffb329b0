import ArgumentParser

@main
struct Aligners: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "aligners",
        abstract: "Align LLM answers after the fact with per-criterion inspectors and aligners.",
        discussion: """
            Pipe chat logs through the squad:  cat chats.jsonl | aligners filter > aligned.jsonl
            Or run the stages as daemons:      aligners router … ; aligners worker --role … ; aligners filter --connect …
            """,
        subcommands: [FilterCommand.self, RouterCommand.self, WorkerCommand.self,
                      InspectorTrainGroup.self, InspectorEvalGroup.self, ScoreCommand.self,
                      GenerateCommand.self, GenerateBenchCommand.self])
}
