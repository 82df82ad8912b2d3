import ArgumentParser
import TierKV

struct StoreCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "store", abstract: "Inspect and repair cold-tier cache directories.", subcommands: [FsckCommand.self])
}

struct FsckCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fsck",
        abstract: "Verify every slot of a cold-tier directory (checksums, headers); --repair quarantines corrupt slots.",
        discussion: "Exits 0 when no slot is corrupt (or all corrupt ones were quarantined), 1 otherwise."
    )

    @Argument(help: "The cache directory.")
    var directory: String
    @Flag(help: "Zero the headers of corrupt slots so they become free.")
    var repair = false
    @Flag(help: "Print one JSON object on stdout.")
    var json = false

    func run() throws {
        let report: BlockFileCheck.Report
        do {
            report = try BlockFileCheck.run(directory: directory, repair: repair) { done, total in
                if total > 65536 { Output.printError("fsck: \(done)/\(total) slots") }
            }
        } catch { throw CommandFailure(error) }
        if json {
            Output.printJSON(report.json)
        } else {
            Output.printTable("fsck \(directory)", [
                ("slots", "\(report.slots)"), ("valid", "\(report.valid)"), ("corrupt", "\(report.corrupt)"),
                ("empty", "\(report.empty)"), ("recovered blocks", "\(report.recovered)"),
                ("superseded copies", "\(report.superseded)"), ("quarantined", "\(report.quarantined)"),
            ])
            for (slot, reason) in report.corruptSlots { Output.printError("corrupt slot \(slot): \(reason)") }
        }
        if report.corrupt > report.quarantined { throw ExitCode(1) }
    }
}
