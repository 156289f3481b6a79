import ArgumentParser
import Foundation
import Userfaultfd

/// `uffd bench faults`.
struct FaultsBenchCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "faults",
    abstract: "Missing-fault round-trip latency: handler thread, busy-poll, SIGBUS; COPY and MOVE; Swift beside C.")

  @OptionGroup var options: BenchOptions
  @OptionGroup var output: OutputOptions

  func run() throws {
    let rows = try Self.measure(options: options)
    if output.json {
      try printJSON(["rows": rows])
    } else {
      Self.printTable(rows, reps: options.reps)
    }
  }

  static func measure(options: BenchOptions) throws -> [FaultsBenchmark.Row] {
    try FaultsBenchmark(reps: options.reps).run(filter: options.rows) { message in
      FileHandle.standardError.write(Data("bench faults \(message)\n".utf8))
    }
  }

  static func printTable(_ rows: [FaultsBenchmark.Row], reps: Int) {
    print("Missing-fault round trip, µs (HdrHistogram over \(reps) x 2000 faults; Swift library vs C reference)")
    print(formatTable(
      ["mode", "resolve", "swift p50", "swift p99", "swift p99.9", "c p50", "c p99", "swift/c p50"],
      rows.map {
        [$0.mode, $0.resolve, String(format: "%.1f", $0.swift_p50_us), String(format: "%.1f", $0.swift_p99_us),
         String(format: "%.1f", $0.swift_p999_us), String(format: "%.1f", $0.c_p50_us),
         String(format: "%.1f", $0.c_p99_us), String(format: "%.3f", $0.ratio_p50)]
      }))
  }
}

/// Prints `value` as pretty, key-sorted JSON.
func printJSON<T: Encodable>(_ value: T) throws {
  let encoder = JSONEncoder()
  encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
  print(String(decoding: try encoder.encode(value), as: UTF8.self))
}
