import AlignersKernels
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
            """,
        subcommands: [FilterCommand.self, RouterCommand.self, WorkerCommand.self,
                      TrainGroup.self, EvalGroup.self, ScoreCommand.self,
                      GenerateCommand.self, GenerateBenchCommand.self])

    /// Splices `--config` options in before parsing. Exit status: what the command says (0, or 1 when
    /// some lines were errors), else 2: it could not run (bad options or config file included;
    /// argument-parser's own 64 would contradict README's promise).
    static func main() async {
        selectBLASKernels()
        do {
            let arguments = try ConfigFile.apply(to: Array(CommandLine.arguments.dropFirst()))
            var command = try parseAsRoot(arguments)
            if var async = command as? AsyncParsableCommand { try await async.run() } else { try command.run() }
        } catch {
            let code = exitCode(for: error)
            if code == .success || error is ExitCode {
                exit(withError: error)
            }
            FileHandle.standardError.write(Data((fullMessage(for: error) + "\n").utf8))
            Foundation.exit(2)
        }
    }
}

/// Restarts the process with `OPENBLAS_CORETYPE` set where OpenBLAS's CPU detection picks slower
/// kernels than the CPU runs (`BLAS.preferredCoreType`); a user's own setting always wins, and
/// `ALIGNERS_BLAS_CORETYPE=auto` keeps OpenBLAS's choice. exec keeps the PID (systemd's notify
/// socket and watchdog see the same process).
func selectBLASKernels() {
    guard getenv("OPENBLAS_CORETYPE") == nil else { return }
    let choice = getenv("ALIGNERS_BLAS_CORETYPE").map { String(cString: $0) } ?? BLAS.preferredCoreType
    guard let core = choice, core != "auto", !core.isEmpty else { return }
    setenv("OPENBLAS_CORETYPE", core, 1)
    var argv = CommandLine.arguments.map { strdup($0) }
    argv.append(nil)
    execv("/proc/self/exe", argv)
    // exec failed (no /proc): run on with OpenBLAS's own choice.
}
