import ArgumentParser

/// The `uffd` tool: probe the kernel, benchmark, compact, stress. Every subcommand only parses and
/// calls into `UffdTools`.
@main
struct UffdCommand: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "uffd",
    abstract: "userfaultfd from Swift: probe the kernel's UFFDIO_MOVE support and more.",
    subcommands: [ProbeCommand.self, CompactCommand.self, BenchCommand.self, StressCommand.self, ServeCommand.self, SnapshotCommand.self]
  )
}
