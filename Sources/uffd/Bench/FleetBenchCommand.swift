import ArgumentParser
import Foundation
import UffdTools

/// `uffd bench fleet`.
struct FleetBenchCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "fleet",
    abstract: "K clones restoring one snapshot at once: one `uffd serve` daemon beside one C handler process per clone.",
    discussion: """
      Each clone reads a random tenth of the snapshot in 64 KiB runs (a different seed per clone) \
      and exits. JSON keys: mib, runs, rows[]: clients, daemon_wall_ms, daemon_gbps, c_wall_ms, \
      c_gbps, fault_p50_us / fault_p99_us / fault_p999_us (the clones' reads that faulted, 2 µs \
      or more, daemon-served) and c_fault_* (C-served), daemon_threads, daemon_rss_bytes (peak, \
      its populated snapshot mapping included), daemon_anon_bytes, c_rss_bytes (summed peaks), \
      live_pages.
      """)

  @Option(parsing: .unconditional, help: "Snapshot size in MiB (4-4096).")
  var mib = 256
  @Option(parsing: .upToNextOption, help: "Clone counts, one row each (1-256).")
  var clients: [Int] = [1, 8, 32, 64]
  @Option(parsing: .unconditional, help: "Runs per row (1-20; interleaved); the table shows medians.")
  var runs = 3
  @OptionGroup var output: OutputOptions

  func validate() throws {
    try check(mib, in: FleetBenchmark.mibRange, "--mib")
    try check(runs, in: 1...20, "--runs")
    guard !clients.isEmpty else { throw ValidationError("--clients needs at least one count") }
    for count in clients { try check(count, in: FleetBenchmark.clientsRange, "--clients") }
  }

  func run() throws {
    // The daemon is this very executable's `serve`.
    let executable = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
    let report = try FleetBenchmark(mib: mib, clients: clients, runs: runs, daemonExecutable: executable)
      .run(progress: Progress("bench fleet"))
    print(output.json ? try JSONOutput.string(report) : FleetBenchmark.table(report))
  }
}
