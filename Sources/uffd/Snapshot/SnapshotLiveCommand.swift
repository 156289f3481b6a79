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

  @OptionGroup var offer: OfferOptions
  @Option(help: "The snapshot file (created or truncated).")
  var out: String
  @OptionGroup var output: OutputOptions

  func run() throws {
    let job = LiveSnapshotJob(target: offer.target, outputPath: out)
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
