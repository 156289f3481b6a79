import ArgumentParser
import UffdTools

/// `uffd bench restore`.
struct RestoreBenchCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "restore",
    abstract: "Snapshot restore into another process: demand, fault-around, prefetch; Swift beside a C handler and memcpy.")

  @Option(parsing: .unconditional, help: "Snapshot size in MiB (4-65536).")
  var mib = 1024
  @Option(parsing: .unconditional, help: "Runs per row (1-100; rows interleaved); the table shows medians.")
  var runs = 3
  @OptionGroup var output: OutputOptions

  func validate() throws {
    try check(mib, in: RestoreBenchmark.mibRange, "--mib")
    try check(runs, in: 1...100, "--runs")
  }

  func run() throws {
    let report = try RestoreBenchmark(mib: mib, reps: runs).run(progress: Progress("bench restore"))
    print(output.json ? try JSONOutput.string(report) : RestoreBenchmark.table(report))
  }
}
