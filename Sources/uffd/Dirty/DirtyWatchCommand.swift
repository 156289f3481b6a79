import ArgumentParser
import UffdTools
import Userfaultfd

/// `uffd dirty watch`: the write rate of a cooperating process's range; only parses and calls.
struct DirtyWatchCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "watch",
    abstract: "Show how fast, and where, a process writes a range of its memory, one line per interval.",
    discussion: "The process must cooperate: it offers the range (memfd memory) with the library's MemoryOffer"
      + " (purpose dirty-tracking), handing this tool its userfaultfd and memfd over --socket. Tracking is wp-async"
      + " (Linux 6.7+, reading /proc/PID/pagemap) or uffd-wp faults resolved here. Each line: time, pages written in"
      + " the interval, the rate, and a heat line of the range (64 cells, ' ' none to '@' every page).")

  @OptionGroup var offer: OfferOptions
  @Option(help: "Milliseconds per line (10-60000).")
  var intervalMs = 1000
  @Option(help: "Lines to print before stopping (1-1000000); it also stops when the process hangs up.")
  var count = 10
  @OptionGroup var output: OutputOptions

  func validate() throws {
    try check(intervalMs, in: 10...60000, "--interval-ms")
    try check(count, in: 1...1_000_000, "--count")
  }

  func run() throws {
    let job = DirtyWatchJob(target: offer.target, intervalMilliseconds: intervalMs, count: count)
    try job.run { sample in
      print(output.json ? ((try? JSONOutput.string(sample, pretty: false)) ?? "{}") : DirtyWatchJob.line(sample))
    }
  }
}
