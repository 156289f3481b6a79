import ArgumentParser

/// The `uffd` tool: probe the kernel, benchmark, compact, stress.
@main
struct UffdCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "uffd",
    abstract: "userfaultfd from Swift: probe the kernel's UFFDIO_MOVE support and more.",
    subcommands: [ProbeCommand.self, CompactCommand.self, BenchCommand.self, StressCommand.self]
  )
}

/// Options every subcommand that prints results shares.
struct OutputOptions: ParsableArguments {
  @Flag(name: .long, help: "Print one JSON object instead of a table.")
  var json = false
}
