import ArgumentParser
import UffdTools

/// `uffd bench faults`.
struct FaultsBenchCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "faults",
    abstract: "Missing-fault round-trip latency: handler thread, busy-poll, SIGBUS; COPY and MOVE; Swift beside C.")

  @OptionGroup var options: BenchOptions
  @OptionGroup var output: OutputOptions

  func run() throws {
    let rows = try Self.measure(options: options)
    print(output.json ? try JSONOutput.string(["rows": rows]) : FaultsBenchmark.table(rows, reps: options.reps))
  }

  static func measure(options: BenchOptions) throws -> [FaultsBenchmark.Row] {
    try FaultsBenchmark(reps: options.reps).run(filter: options.rows, progress: Progress("bench faults").callAsFunction)
  }
}
