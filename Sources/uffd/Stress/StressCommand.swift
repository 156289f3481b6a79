import ArgumentParser
import UffdTools

/// `uffd stress` (``MoveStress``); this only parses and calls.
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
  var mover = MoveStress.Mover.move

  @Option(parsing: .unconditional, help: "Mover threads racing for the same pages (1-\(MoveStress.maxMovers)): destination pages get filled by another mover or the handler while a move or copy fallback runs.")
  var movers = 1

  @OptionGroup var output: OutputOptions

  func validate() throws {
    try check(threads, in: 1...MoveStress.maxWriters, "--threads")
    try check(pages, in: MoveStress.minPages...MoveStress.maxPages, "--pages")
    try check(movers, in: 1...MoveStress.maxMovers, "--movers")
    guard seconds.isFinite, seconds > 0, seconds <= MoveStress.maxSeconds else {
      throw ValidationError("--seconds must be more than 0 and at most \(Int(MoveStress.maxSeconds)), got \(seconds)")
    }
  }

  func run() throws {
    let stress = try MoveStress(.init(seconds: seconds, writers: threads, pages: pages, mover: mover, movers: movers))
    let result = stress.run(progress: Progress("stress").callAsFunction)
    print(output.json ? try JSONOutput.string(result) : result.table)
    if !result.verified { throw ExitCode(1) }
  }
}
