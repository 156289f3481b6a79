import ArgumentParser

/// `uffd snapshot`: snapshots of memory.
struct SnapshotCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "snapshot",
    abstract: "Snapshots of memory.",
    subcommands: [SnapshotLiveCommand.self])
}
