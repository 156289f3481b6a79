import ArgumentParser
import Foundation
import Userfaultfd

/// `uffd stress`.
struct StressCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "stress",
    abstract: "Check UFFDIO_MOVE's guarantees: writers, a mover and a fault handler on the same pages.",
    discussion: "Exits non-zero if any update or page was lost, duplicated or corrupted.")

  @Option(parsing: .unconditional, help: "How long to run, in seconds (at most one day).")
  var seconds: Double = 10

  @Option(parsing: .unconditional, help: "Writer threads (1-\(MoveStress.maxWriters)).")
  var threads = 2

  @Option(parsing: .unconditional, help: "Pages moved back and forth (\(MoveStress.minPages)-\(MoveStress.maxPages)).")
  var pages = 256

  @Option(help: "How the mover relocates pages: move, logical-copy (the atomic copy fallback), or naive-copy (COPY then MADV_DONTNEED: a control that loses writes).")
  var mover: String = MoveStress.Mover.move.rawValue

  @Option(parsing: .unconditional, help: "Mover threads racing for the same pages (1-\(MoveStress.maxMovers)): destination pages get filled by another mover or the handler while a move or copy fallback runs.")
  var movers = 1

  @OptionGroup var output: OutputOptions

  func validate() throws {
    guard (1...MoveStress.maxWriters).contains(threads) else {
      throw ValidationError("--threads must be 1 to \(MoveStress.maxWriters), got \(threads)")
    }
    guard (MoveStress.minPages...MoveStress.maxPages).contains(pages) else {
      throw ValidationError("--pages must be \(MoveStress.minPages) to \(MoveStress.maxPages), got \(pages)")
    }
    guard seconds.isFinite, seconds > 0, seconds <= MoveStress.maxSeconds else {
      throw ValidationError("--seconds must be more than 0 and at most \(Int(MoveStress.maxSeconds)), got \(seconds)")
    }
    guard (1...MoveStress.maxMovers).contains(movers) else {
      throw ValidationError("--movers must be 1 to \(MoveStress.maxMovers), got \(movers)")
    }
    guard MoveStress.Mover(rawValue: mover) != nil else {
      throw ValidationError("unknown --mover '\(mover)': use \(MoveStress.Mover.allCases.map(\.rawValue).joined(separator: ", "))")
    }
  }

  func run() throws {
    let stress = try MoveStress(.init(
      seconds: seconds, writers: threads, pages: pages, mover: MoveStress.Mover(rawValue: mover) ?? .move,
      movers: movers))
    let result = stress.run { message in
      FileHandle.standardError.write(Data("stress \(message)\n".utf8))
    }
    if output.json {
      let encoder = JSONEncoder()
      encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
      print(String(decoding: try encoder.encode(result), as: UTF8.self))
    } else {
      print("""
        UFFDIO_MOVE stress (\(result.mover) mover x \(result.movers)): \(result.threads) writers, \(result.pages) pages, \(result.seconds) s
        writes            \(result.writes)
        moves             \(result.moves)
        faults            \(result.faults)
        lost_updates      \(result.lost_updates)
        lost_pages        \(result.lost_pages)
        duplicated_pages  \(result.duplicated_pages)
        corrupted_pages   \(result.corrupted_pages)
        verified          \(result.verified ? "yes" : "NO")
        """)
      for error in result.errors { print("error: \(error)") }
    }
    if !result.verified { throw ExitCode(1) }
  }
}
