import Foundation
import Glibc
import SnapshotPager
import Userfaultfd

/// `uffd serve`: a snapshot page server for one client that speaks Firecracker's snapshot-resume
/// handshake. Listens at a socket path, accepts one client, receives its userfaultfd and regions,
/// serves them from the snapshot file until the client goes away, and reports.
package struct ServeJob: Sendable {
  package var socketPath: String
  package var snapshotPath: String
  package var configuration = SnapshotServer.Configuration()
  /// How long to wait for the client; nil: as long as it takes.
  package var acceptTimeout: Duration?

  package init(socketPath: String, snapshotPath: String) {
    self.socketPath = socketPath
    self.snapshotPath = snapshotPath
  }

  /// Serves one client and returns the summary (the socket file is removed again).
  package func run(progress: Progress) throws -> ServeReport {
    let snapshot = try SnapshotFile(path: snapshotPath)
    // A socket file a killed server left behind is reclaimed; one something listens on is refused.
    let listener = try ListeningSocket.bind(socketPath, access: .init(mode: 0o600), backlog: 1)
    defer {
      listener.close()
      unlink(socketPath)
    }
    progress("listening at \(socketPath) for a client (snapshot \(snapshotPath), \(snapshot.length >> 20) MiB)")
    guard let (server, client) = try SnapshotServer.accept(
      on: listener, snapshot: snapshot, configuration: configuration, timeout: acceptTimeout)
    else {
      throw ToolError("no client connected to \(socketPath) within the accept timeout")
    }
    let regions = server.regions
    let pid = client.peerProcessID.map { "process \($0)" } ?? "a client"
    progress("serving \(pid): \(regions.count) region(s), \(regions.reduce(0) { $0 + Int($1.size) } >> 20) MiB")
    let statistics = server.run(client: client) { s in
      progress("\(s.pagesByFault) pages by fault, \(s.pagesByPrefetch) by prefetch, \(s.zeroPages) zero; \(s.faults) faults")
    }
    progress("done: \(statistics.endReason.rawValue)")
    return ServeReport(statistics, regions: regions)
  }
}

/// What `uffd serve` prints at the end (JSON with `--json`).
package struct ServeReport: Encodable, Sendable {
  package var endReason: String
  package var regions: Int
  package var faults: Int
  package var pagesByFault: Int
  package var pagesByPrefetch: Int
  package var zeroPages: Int
  package var releasedPages: Int
  package var wakes: Int
  package var eagainRetries: Int
  package var failedFaults: Int
  package var untouchedPages: Int
  package var bytesServed: Int
  package var firstFaultUs: Double?
  package var fullResidencyMs: Double?
  package var faultP50Us: Double
  package var faultP99Us: Double
  package var elapsedMs: Double

  package init(_ s: SnapshotServer.Statistics, regions: [GuestRegion]) {
    endReason = s.endReason.rawValue
    self.regions = regions.count
    faults = s.faults
    pagesByFault = s.pagesByFault
    pagesByPrefetch = s.pagesByPrefetch
    zeroPages = s.zeroPages
    releasedPages = s.releasedPages
    wakes = s.wakes
    eagainRetries = s.eagainRetries
    failedFaults = s.failedFaults
    untouchedPages = s.untouchedPages
    bytesServed = s.bytesServed
    firstFaultUs = s.firstFault.map { $0.microseconds }
    fullResidencyMs = s.fullResidency.map { $0.microseconds / 1000 }
    faultP50Us = s.faultLatencyP50.microseconds
    faultP99Us = s.faultLatencyP99.microseconds
    elapsedMs = s.elapsed.microseconds / 1000
  }

  /// Whether the session went as it should: it ended with its client (hung up, or the process
  /// gone) and every fault was served. `uffd serve --once` exits non-zero otherwise.
  package var succeeded: Bool {
    (endReason == SnapshotServer.Statistics.EndReason.clientHungUp.rawValue
      || endReason == SnapshotServer.Statistics.EndReason.processGone.rawValue) && failedFaults == 0
  }

  /// The summary as the tool prints it.
  package var table: String {
    func value(_ v: Double?, _ unit: String) -> String { v.map { String(format: "%.1f %@", $0, unit) } ?? "-" }
    let rows: [(String, String)] = [
      ("ended", endReason),
      ("faults", "\(faults) (\(wakes) only needed a wake, \(eagainRetries) retried after events, \(failedFaults) failed)"),
      ("pages by fault", "\(pagesByFault)"),
      ("pages by prefetch", "\(pagesByPrefetch)"),
      ("zero pages (released)", "\(zeroPages) (\(releasedPages) released)"),
      ("never touched", "\(untouchedPages)"),
      ("bytes served", "\(bytesServed)"),
      ("first fault after", value(firstFaultUs, "µs")),
      ("full residency after", value(fullResidencyMs, "ms")),
      ("fault service p50 / p99", "\(value(faultP50Us, "µs")) / \(value(faultP99Us, "µs"))"),
      ("served for", value(elapsedMs, "ms")),
    ]
    let width = rows.map(\.0.count).max() ?? 0
    return rows.map { $0.0.padding(toLength: width, withPad: " ", startingAt: 0) + "  " + $0.1 }.joined(separator: "\n")
  }
}

extension Duration {
  /// The duration in microseconds.
  package var microseconds: Double {
    let (seconds, attoseconds) = components
    return Double(seconds) * 1e6 + Double(attoseconds) / 1e12
  }
}
