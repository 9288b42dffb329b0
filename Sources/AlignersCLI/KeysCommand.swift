import AlignersPipeline
import ArgumentParser
import Foundation

struct KeysGroup: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "keys",
        abstract: "CURVE keys that protect the router's tcp endpoints.",
        discussion: """
            Every peer has a key pair: the router, each worker host, each client (filter), each tap
            reader. The router lets a peer in only when its public key is on the allowlist for its kind
            (router --allow-clients, --allow-workers, --allow-tap); peers need the router's public key.
            """.reflowed,
        subcommands: [KeysGenerateCommand.self])
}

struct KeysGenerateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "generate",
        abstract: "Write a new CURVE key pair: DIR/NAME.key (secret, mode 0600) and DIR/NAME.pub.",
        discussion: """
            NAME.key holds both keys as Z85 text, `public-key = …` and `secret-key = …` lines; give it
            only to the peer it names (router --curve-secret-key, worker or filter --curve-key; under
            systemd through LoadCredential=). NAME.pub holds the public key and the name as a comment:
            append it to the router's allowlist for that kind of peer (`cat NAME.pub >> workers.allow`,
            then SIGHUP the router), or, for the router's own key, give it to every peer as
            --curve-server-key.

            Example, one router, workers on one host, one client:
              aligners keys generate --out /etc/aligners/curve --name router
              aligners keys generate --out /etc/aligners/curve --name worker
              aligners keys generate --out ~/.config/aligners --name alice
            """.reflowed)

    @Option(help: ArgumentHelp("Directory to write into (made, mode 0700, if missing).", valueName: "dir"))
    var out: String
    @Option(help: "Name of the pair: the files are NAME.key and NAME.pub, and NAME labels the key in allowlists.")
    var name = "aligners"
    @Flag(help: "Replace existing NAME.key and NAME.pub (the old key stops working wherever it is listed).")
    var force = false

    func run() throws {
        do {
            let pair = try CurveKeyPair.generate()
            let files = try pair.write(to: out, name: name, force: force)
            print("secret key pair: \(files.keyPair) (mode 0600; keep it on this peer only)")
            print("public key:      \(files.publicKey)")
            print(pair.publicKey)
        } catch {
            StandardStreams.error("aligners keys generate: \(error)\n")
            throw ExitCode(2)
        }
    }
}
