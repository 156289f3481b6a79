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

  @Option(help: "The process offering its memory.")
  var pid: Int32
  @Option(help: "The Unix socket the process offers its memory on.")
  var socket: String
  @Option(help: "Part of the offered range to watch, START-END in the process's addresses; default: all.")
  var range: String?
  @Option(help: "Milliseconds per line (10-60000).")
  var intervalMs = 1000
  @Option(help: "Lines to print before stopping (1-1000000); it also stops when the process hangs up.")
  var count = 10
  @Option(help: "Seconds to wait for the handshake (1-3600).")
  var timeoutSeconds = 60
  @OptionGroup var output: OutputOptions

  func validate() throws {
    guard pid > 0 else { throw ValidationError("--pid must be a process id, got \(pid)") }
    try check(intervalMs, in: 10...60000, "--interval-ms")
    try check(count, in: 1...1_000_000, "--count")
    try check(timeoutSeconds, in: 1...3600, "--timeout-seconds")
    if let range, parseAddressRange(range) == nil {
      throw ValidationError("--range must be START-END with START < END, got \(range)")
    }
  }

  func run() throws {
    let job = DirtyWatchJob(socketPath: socket, processID: pid, range: range.flatMap(parseAddressRange),
                            intervalMilliseconds: intervalMs, count: count, timeoutSeconds: Double(timeoutSeconds))
    try job.run { sample in
      print(output.json ? ((try? JSONOutput.string(sample, pretty: false)) ?? "{}") : DirtyWatchJob.line(sample))
    }
  }
}
