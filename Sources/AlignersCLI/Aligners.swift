import ArgumentParser

@main
struct Aligners: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "aligners", abstract: "Align LLM answers after the fact.")
}
