import Glibc

/// Why a working-set file was refused. Every case says what was wrong; a pager that meets one logs
/// it and serves the session on demand.
public enum WorkingSetError: Error, Sendable, Hashable, CustomStringConvertible {
  /// The file (or the snapshot) could not be opened, read or written.
  case unreadable(path: String, errno: Int32)
  /// Shorter or longer than its header says (a truncated or appended file).
  case truncated(expected: Int, found: Int)
  /// Not a working-set file at all.
  case badMagic
  /// A format version this build does not read.
  case unsupportedVersion(UInt32)
  /// Its content does not match its checksum.
  case checksumMismatch(stored: UInt32, computed: UInt32)
  /// Recorded for another snapshot (or another generation of this one).
  case otherSnapshot(recorded: SnapshotIdentity, current: SnapshotIdentity)
  /// A page past the snapshot's end, misaligned, or listed twice (a hostile or corrupt file).
  case badPage(index: Int, offset: UInt64, why: String)
  /// Bigger than any working set this pager accepts.
  case tooLarge(bytes: Int, max: Int)
  /// Working sets that cannot be merged (other snapshots, other granules), or nothing to merge.
  case notMergeable(String)
  /// A header field out of range.
  case badHeader(String)

  /// What happened, for a log line.
  public var description: String {
    switch self {
    case .unreadable(let path, let errno): "cannot read \(path): \(String(cString: strerror(errno)))"
    case .truncated(let expected, let found): "truncated or padded: \(found) bytes where the header says \(expected)"
    case .badMagic: "not a working-set file (bad magic)"
    case .unsupportedVersion(let version):
      "format version \(version) is not read by this build (it reads \(WorkingSet.formatVersion))"
    case .checksumMismatch(let stored, let computed):
      "checksum mismatch (stored 0x\(String(stored, radix: 16)), computed 0x\(String(computed, radix: 16))): corrupt"
    case .otherSnapshot(let recorded, let current):
      "recorded for another snapshot or generation (recorded \(recorded); the snapshot now: \(current)): stale"
    case .badPage(let index, let offset, let why): "page entry \(index) (offset \(offset)): \(why)"
    case .tooLarge(let bytes, let max): "\(bytes) bytes: working-set files are at most \(max) bytes"
    case .notMergeable(let why): "cannot merge: \(why)"
    case .badHeader(let why): "bad header: \(why)"
    }
  }
}
