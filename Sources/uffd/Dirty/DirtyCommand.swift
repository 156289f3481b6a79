import ArgumentParser

/// `uffd dirty`: which pages of memory are written.
struct DirtyCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "dirty",
    abstract: "Which pages of a process's memory are being written.",
    subcommands: [DirtyWatchCommand.self])
}
