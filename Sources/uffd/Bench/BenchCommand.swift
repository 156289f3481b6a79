import ArgumentParser

/// `uffd bench`: every benchmark, or one by name.
struct BenchCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "bench",
    abstract: "Benchmark userfaultfd operations on this machine, Swift library beside C reference loops.",
    discussion: "Run in release mode: swift run -c release uffd bench. With no subcommand, runs all.",
    subcommands: [MovesBenchCommand.self, FaultsBenchCommand.self])

  @OptionGroup var options: BenchOptions
  @OptionGroup var output: OutputOptions

  func run() throws {
    let moves = try MovesBenchCommand.measure(options: options)
    let faults = try FaultsBenchCommand.measure(options: options)
    if output.json {
      struct Report: Encodable {
        var moves: [String: [MovesBenchmark.Row]]
        var faults: [String: [FaultsBenchmark.Row]]
      }
      try printJSON(Report(moves: ["rows": moves], faults: ["rows": faults]))
    } else {
      MovesBenchCommand.printTable(moves, reps: options.reps)
      print()
      FaultsBenchCommand.printTable(faults, reps: options.reps)
    }
  }
}

/// Options every benchmark shares.
struct BenchOptions: ParsableArguments {
  @Option(parsing: .unconditional, help: "Repetitions per row; the median is reported (at least 5).")
  var reps = 7

  @Option(help: "Run only the rows whose name contains this text (e.g. move/ or thp).")
  var rows: String?

  func validate() throws {
    guard reps >= 5 else { throw ValidationError("--reps must be at least 5 (medians of fewer are noise)") }
    guard reps <= 1000 else { throw ValidationError("--reps must be at most 1000") }
  }
}
