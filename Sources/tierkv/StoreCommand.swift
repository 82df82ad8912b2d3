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
        discussion: """
            Also checks the key-summary files (summaries.tkv, summaries.log) against the blocks: \
            how many cold blocks a reopen would find summarised, and any stale, corrupt or \
            damaged entries. Summaries are derived data (a block without one is summarised again \
            at the next open or rebuild), so they never change the exit status.

            Exits 0 when no slot is corrupt (or all corrupt ones were quarantined), 1 otherwise.
            """
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
        let summaries = KeySummaryFileCheck.run(directory: directory, copies: report.newestCopies)
        if json {
            guard case .object(var members) = report.json else { preconditionFailure("the report is an object") }
            members.append(("key_summaries", summaries.json))
            Output.printJSON(.object(members))
        } else {
            Output.printTable("fsck \(directory)", [
                ("slots", "\(report.slots)"), ("valid", "\(report.valid)"), ("corrupt", "\(report.corrupt)"),
                ("empty", "\(report.empty)"), ("recovered blocks", "\(report.recovered)"),
                ("superseded copies", "\(report.superseded)"), ("quarantined", "\(report.quarantined)"),
            ])
            for (slot, reason) in report.corruptSlots { Output.printError("corrupt slot \(slot): \(reason)") }
            // The rotated journal exists only mid-snapshot or after a crash: listed when present.
            let files = [summaries.snapshot, summaries.journal] + (summaries.rotatedJournal.present ? [summaries.rotatedJournal] : [])
            Output.printTable("key summaries", [
                ("cold blocks summarised", "\(summaries.covered) of \(summaries.coldBlocks)"),
            ] + files.map { file in
                (file.name, file.present ? "\(file.current) current, \(file.stale) stale, \(file.corrupt) corrupt" : "absent")
            })
            for file in files {
                if let problem = file.problem { Output.printError(problem) }
            }
        }
        if report.corrupt > report.quarantined { throw ExitCode(1) }
    }
}
