import ArgumentParser
import Foundation
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
    if output.json {
      try printJSON(["rows": rows])
    } else {
      Self.printTable(rows, reps: options.reps)
    }
  }

  static func measure(options: BenchOptions) throws -> [MovesBenchmark.Row] {
    let uffd = try Userfaultfd()
    let benchmark = MovesBenchmark(uffd: uffd, reps: options.reps, moveUsable: PageMover.moveVerdict.isUsable)
    if !benchmark.moveUsable {
      FileHandle.standardError.write(Data(
        "bench moves: UFFDIO_MOVE rows unavailable here (\(PageMover.moveVerdict)); running the COPY rows\n".utf8))
    }
    let rows = try benchmark.run(filter: options.rows) { message in
      FileHandle.standardError.write(Data("bench moves \(message)\n".utf8))
    }
    return rows
  }

  static func printTable(_ rows: [MovesBenchmark.Row], reps: Int) {
    print("UFFDIO_MOVE vs COPY+MADV_DONTNEED, ns per 4 KiB page, median of \(reps) (Swift library vs C reference)")
    print(formatTable(
      ["row", "pages/ioctl", "swift ns/page", "c ns/page", "swift/c"],
      rows.map {
        [$0.name, "\($0.pages_per_ioctl)", String(format: "%.1f", $0.swift_ns_per_page),
         String(format: "%.1f", $0.c_ns_per_page), String(format: "%.3f", $0.ratio)]
      }))
  }
}
