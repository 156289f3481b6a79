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
  @Option(parsing: .unconditional, help: "Only these strategies' rows, comma-separated (demand, fault-around, prefetch, fault-all, recorded, restart).")
  var only: String?
  @OptionGroup var output: OutputOptions

  func validate() throws {
    try check(mib, in: RestoreBenchmark.mibRange, "--mib")
    try check(runs, in: 1...100, "--runs")
    let known: Set<String> = ["demand", "fault-around", "prefetch", "fault-all", "recorded", "restart"]
    if let only, only.split(separator: ",").isEmpty { throw ValidationError("--only needs at least one strategy") }
    for name in only?.split(separator: ",").map(String.init) ?? [] where !known.contains(name) {
      throw ValidationError("--only: unknown strategy '\(name)' (one of \(known.sorted().joined(separator: ", ")))")
    }
  }

  func run() throws {
    var benchmark = RestoreBenchmark(mib: mib, reps: runs)
    // The restart row kills and restarts this very executable's `serve`.
    benchmark.strategies = only.map { Set($0.split(separator: ",").map(String.init)) }
    benchmark.daemonExecutable = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
    let report = try benchmark.run(progress: Progress("bench restore"))
    print(output.json ? try JSONOutput.string(report) : RestoreBenchmark.table(report))
  }
}
