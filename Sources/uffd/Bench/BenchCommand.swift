import ArgumentParser
import UffdTools
import Userfaultfd

/// `uffd bench`: the moves and faults benchmarks, or one by name; this only parses and calls.
struct BenchCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "bench",
    abstract: "Benchmark userfaultfd operations on this machine, Swift library beside C reference loops.",
    discussion: "Run in release mode: swift run -c release uffd bench. With no subcommand, runs moves then"
      + " faults; restore, fleet (snapshots restored into forked clients, minutes long) and dirty run only as their own subcommands.",
    subcommands: [MovesBenchCommand.self, FaultsBenchCommand.self, RestoreBenchCommand.self, FleetBenchCommand.self, DirtyBenchCommand.self, RemoteBenchCommand.self])

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
      print(try JSONOutput.string(Report(moves: ["rows": moves], faults: ["rows": faults])))
    } else {
      print(MovesBenchmark.table(moves, reps: options.reps))
      print()
      print(FaultsBenchmark.table(faults, reps: options.reps))
    }
  }
}

/// Options every benchmark shares.
struct BenchOptions: ParsableArguments {
  @Option(parsing: .unconditional, help: "Repetitions per row (5-1000); the median is reported.")
  var reps = 7

  @Option(help: "Run only the rows whose name contains this text (e.g. move/ or thp).")
  var rows: String?

  func validate() throws {
    try check(reps, in: 5...1000, "--reps", why: "medians of fewer are noise")
  }
}
