import ArgumentParser
import UffdTools
import SnapshotPager
import Userfaultfd

/// `uffd serve` (``ServeJob``); this only parses and calls.
struct ServeCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "serve",
    abstract: "Serve a snapshot to a restoring process over a Unix socket (Firecracker's handshake).",
    discussion: """
      Listens at --socket, accepts one client (a VMM resuming a snapshot, or any process that \
      sends the JSON array of its guest memory regions with its userfaultfd attached), serves its \
      page faults from --snapshot, and exits 0 with a summary when the client goes away. Released \
      pages (a balloon's MADV_DONTNEED) are served as zeros afterwards. Progress goes to standard \
      error; the summary (or JSON) to standard output.
      """)

  @Option(help: "Path of the Unix socket to listen at (must not exist yet; removed at the end).")
  var socket: String
  @Option(help: "The snapshot file the client's regions are served from.")
  var snapshot: String
  @Option(parsing: .unconditional, help: "The most pages one fault brings in (1-4096; 1: demand faults only); the window grows on sequential faults.")
  var faultAround = 16
  @Flag(help: "Stream every untouched page in the background while faults keep priority.")
  var prefetch = false
  @Option(parsing: .unconditional, help: "Pages per prefetch copy (1-4096).")
  var prefetchPages = 64
  @Option(parsing: .unconditional, help: "Seconds to wait for the client (default: as long as it takes).")
  var acceptTimeout: Double?
  @OptionGroup var output: OutputOptions

  func validate() throws {
    try check(faultAround, in: SnapshotServer.Configuration.faultAroundRange, "--fault-around")
    try check(prefetchPages, in: SnapshotServer.Configuration.prefetchRange, "--prefetch-pages")
    if let acceptTimeout, !(acceptTimeout.isFinite && acceptTimeout > 0 && acceptTimeout <= 86_400) {
      throw ValidationError("--accept-timeout must be more than 0 and at most 86400 seconds, got \(acceptTimeout)")
    }
  }

  func run() throws {
    var job = ServeJob(socketPath: socket, snapshotPath: snapshot)
    job.configuration = .init(faultAroundPages: faultAround, prefetch: prefetch, prefetchPages: prefetchPages)
    job.acceptTimeout = acceptTimeout.map { .milliseconds(Int64($0 * 1000)) }
    let report = try job.run(progress: Progress("serve"))
    print(output.json ? try JSONOutput.string(report) : report.table)
  }
}
