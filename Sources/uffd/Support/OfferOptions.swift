import ArgumentParser
import UffdTools

/// The options naming a cooperating process's offer (`uffd snapshot live`, `uffd dirty watch`).
struct OfferOptions: ParsableArguments {
  @Option(help: "The process offering its memory.")
  var pid: Int32
  @Option(help: "The Unix socket the process offers its memory on.")
  var socket: String
  @Option(help: "Part of the offered range, START-END in the process's addresses (hex with 0x); default: all.")
  var range: String?
  @Option(help: "Seconds to wait for the handshake and for the work (1-3600).")
  var timeoutSeconds = 60

  func validate() throws {
    guard pid > 0 else { throw ValidationError("--pid must be a process id, got \(pid)") }
    try check(timeoutSeconds, in: 1...3600, "--timeout-seconds")
    if let range, parseAddressRange(range) == nil {
      throw ValidationError("--range must be START-END with START < END (e.g. 0x7f0000000000-0x7f0000100000), got \(range)")
    }
  }

  /// The offer these options name.
  var target: OfferTarget {
    OfferTarget(socketPath: socket, processID: pid, range: range.flatMap(parseAddressRange), timeoutSeconds: Double(timeoutSeconds))
  }
}
