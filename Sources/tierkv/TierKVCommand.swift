import ArgumentParser
import TierKV

@main
struct TierKVCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tierkv",
        abstract: "Tiered KV-cache offloading: accelerator, NUMA-pinned host RAM and NVMe through io_uring.",
        version: TierKVVersion.string,
        subcommands: [SimulateCommand.self, DoctorCommand.self, BenchCommand.self, AttendCommand.self, StoreCommand.self, HashCommand.self]
    )
}
