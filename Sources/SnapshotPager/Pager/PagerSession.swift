import Logging
import Synchronization
import Userfaultfd

/// One client of the pager: its connection, the server for its userfaultfd and regions, and who it
/// is (for the logs, `list` and `stats`). Owned by one serving loop from the handshake until it
/// ends; the registry keeps a reference for the control requests.
package final class PagerSession: Sendable {
  /// The session's id (`s-<n>`), unique for the pager's life.
  package let id: String
  let number: UInt64
  /// The client's process id (SO_PEERCRED), when known.
  package let clientPID: Int32?
  /// The snapshot file's path.
  package let snapshotPath: String
  /// When the handshake completed.
  package let started: ContinuousClock.Instant
  let server: SnapshotServer
  let client: UnixSocket
  let logger: Logger
  /// The counters the metrics last saw (the loop's turns add the difference).
  let reported = Mutex(SnapshotServer.Statistics())
  /// Whether the prefetcher still has pages to copy (the loop's own flag).
  let prefetching: Atomic<Bool>

  /// `clientPID` names the client when `client` cannot (a pidfd standing for a re-adopted
  /// session's connection); otherwise it comes from the connection (SO_PEERCRED).
  init(number: UInt64, server: SnapshotServer, client: UnixSocket, snapshotPath: String, logger: Logger,
       clientPID: Int32? = nil) {
    self.number = number
    id = "s-\(number)"
    self.server = server
    self.client = client
    self.clientPID = clientPID ?? client.peerProcessID
    self.snapshotPath = snapshotPath
    started = .now
    var logger = logger
    logger[metadataKey: "session"] = "\(id)"
    logger[metadataKey: "client_pid"] = "\(self.clientPID.map(String.init) ?? "unknown")"
    logger[metadataKey: "snapshot"] = "\(snapshotPath)"
    self.logger = logger
    prefetching = Atomic(server.configuration.prefetch || server.isReplaying)
  }

  /// The counters now.
  package var statistics: SnapshotServer.Statistics { server.statistics }
}
