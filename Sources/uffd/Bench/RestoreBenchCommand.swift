import ArgumentParser
import Foundation
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
    var benchmark = RestoreBenchmark(mib: mib, reps: runs)
    // The restart row kills and restarts this very executable's `serve`.
    benchmark.daemonExecutable = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
    let report = try benchmark.run(progress: Progress("bench restore"))
    print(output.json ? try JSONOutput.string(report) : RestoreBenchmark.table(report))
  }
}
