import ArgumentParser
import UffdTools
import Userfaultfd

/// `uffd snapshot live`: a live snapshot of a cooperating process's memory; only parses and calls.
struct SnapshotLiveCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "live",
    abstract: "Copy a range of a running process's memory to a file, point in time, while it keeps writing.",
    discussion: "The process must cooperate: it offers the range (memfd memory) with the library's MemoryOffer, which"
      + " hands this tool its userfaultfd and the memfd over the Unix socket --socket. The tool write-protects the"
      + " range (the cut), tells the process `cut`, copies each page before its first write (a handler thread here)"
      + " and the rest in the background, and tells it `done`. Trust: the process lets this tool stall its writes to"
      + " the range and read them; the socket is owner-only and the process accepts only its own user or root.")

  @Option(help: "The process offering its memory.")
  var pid: Int32
  @Option(help: "The Unix socket the process offers its memory on.")
  var socket: String
  @Option(help: "Part of the offered range to copy, START-END in the process's addresses (hex with 0x); default: all.")
  var range: String?
  @Option(help: "The snapshot file (created or truncated).")
  var out: String
  @Option(help: "Seconds to wait for the handshake and for the copy (1-3600).")
  var timeoutSeconds = 60
  @OptionGroup var output: OutputOptions

  func validate() throws {
    guard pid > 0 else { throw ValidationError("--pid must be a process id, got \(pid)") }
    try check(timeoutSeconds, in: 1...3600, "--timeout-seconds")
    if let range, parseAddressRange(range) == nil {
      throw ValidationError("--range must be START-END with START < END (e.g. 0x7f0000000000-0x7f0000100000), got \(range)")
    }
  }

  func run() throws {
    let job = LiveSnapshotJob(socketPath: socket, processID: pid, range: range.flatMap(parseAddressRange), outputPath: out,
                              timeoutSeconds: Double(timeoutSeconds))
    let result = try job.run()
    if output.json {
      print(try JSONOutput.string(result))
    } else {
      print("live snapshot of process \(result.processID), \(result.bytes) bytes at \(result.start) -> \(result.output):"
        + " cut \(String(format: "%.2f", result.cutMs)) ms, copy \(String(format: "%.1f", result.copyMs)) ms,"
        + " \(result.copiedBeforeWrites) pages copied before a write (\(result.faultsThatWroteTheFile) by the fault itself),"
        + " \(result.copiedInBackground) in the background")
    }
  }
}
