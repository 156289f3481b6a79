import Synchronization
import Userfaultfd

/// One read-only mapping per snapshot file, shared by every session serving it (clones of one
/// snapshot must not multiply its mappings), populated when the snapshot is first configured so no
/// client's first fault waits for the mapping to be built.
package final class SnapshotCatalog: Sendable {
  /// The most snapshot files a pager keeps mapped.
  package static let maxSnapshots = 256

  private let files = Mutex<[String: SnapshotFile]>([:])
  private let populate: Bool
  /// Chunked snapshots (manifests, local or remote), when the pager serves them.
  package let remote: RemoteSnapshots?

  /// A catalog; `populate` maps each file's every page when it is first opened; `remote` opens
  /// manifests (``RemoteSnapshots/isManifest(_:)``).
  package init(populate: Bool, remote: RemoteSnapshots? = nil) {
    self.populate = populate
    self.remote = remote
  }

  /// The mapping of `path`, opened (and populated) on first use.
  package func snapshot(at path: String) throws(UserfaultfdError) -> SnapshotFile {
    if let known = files.withLock({ $0[path] }) { return known }
    // Opened outside the lock: populating a large file takes a while and must not hold up the
    // sessions of other snapshots.
    let opened = if let remote, RemoteSnapshots.isManifest(path) {
      SnapshotFile(chunked: try remote.snapshot(at: path))
    } else {
      try SnapshotFile(path: path, populate: populate)
    }
    return try files.withLock { (files) throws(UserfaultfdError) -> SnapshotFile in
      if let raced = files[path] { return raced }
      guard files.count < Self.maxSnapshots else {
        throw .invalidArgument(.serve, .outOfRange(parameter: "snapshot files", value: files.count + 1, valid: 1...Self.maxSnapshots))
      }
      files[path] = opened
      return opened
    }
  }

  /// The files mapped now.
  package var count: Int { files.withLock { $0.count } }
}
