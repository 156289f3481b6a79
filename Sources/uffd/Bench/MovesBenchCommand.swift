import ArgumentParser
import UffdTools
import Userfaultfd

/// `uffd bench moves`.
struct MovesBenchCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "moves",
    abstract: "Per-page cost of MOVE, COPY+MADV_DONTNEED and the logical move, Swift beside C.")

  @OptionGroup var options: BenchOptions
  @OptionGroup var output: OutputOptions

  func run() throws {
    let rows = try Self.measure(options: options)
    print(output.json ? try JSONOutput.string(["rows": rows]) : MovesBenchmark.table(rows, reps: options.reps))
  }

  static func measure(options: BenchOptions) throws -> [MovesBenchmark.Row] {
    let progress = Progress("bench moves")
    let verdict = PageMover.moveVerdict
    if !verdict.isUsable { progress("UFFDIO_MOVE rows unavailable here (\(verdict)); running the COPY rows") }
    let benchmark = MovesBenchmark(uffd: try Userfaultfd(), reps: options.reps, moveUsable: verdict.isUsable)
    return try benchmark.run(filter: options.rows, progress: progress.callAsFunction)
  }
}
