import Glibc

/// What a working set is bound to: the snapshot file's size, device, inode and modification time
/// (nanoseconds). Reading them is one `stat(2)`, where a content digest would read the whole
/// snapshot (gigabytes) at every start. Any rewrite of the file changes its modification time, a
/// new file at the same path has a new inode, so a working set recorded for another snapshot
/// generation is refused rather than replayed into the wrong memory. A snapshot copied to another
/// file or host gets a new identity too: its working set is recorded again.
///
/// A chunked snapshot (served from a manifest) has no file to `stat`: its identity is its content,
/// `init(manifest:)`, so a working set recorded on one host replays on every host serving the
/// same snapshot, and never into another.
public struct SnapshotIdentity: Sendable, Hashable, Codable, CustomStringConvertible {
  /// The file's length in bytes.
  public var size: UInt64
  /// The device holding it (`st_dev`).
  public var device: UInt64
  /// Its inode number (`st_ino`).
  public var inode: UInt64
  /// Its last modification, in nanoseconds since the epoch (`st_mtim`).
  public var modifiedNanoseconds: UInt64

  /// An identity as given.
  public init(size: UInt64, device: UInt64, inode: UInt64, modifiedNanoseconds: UInt64) {
    self.size = size
    self.device = device
    self.inode = inode
    self.modifiedNanoseconds = modifiedNanoseconds
  }

  /// The identity of the file at `path` now.
  ///
  /// - Throws: ``WorkingSetError/unreadable(path:errno:)`` when it cannot be `stat`ed.
  public init(path: String) throws(WorkingSetError) {
    var info = stat()
    guard stat(path, &info) == 0 else { throw .unreadable(path: path, errno: errno) }
    self.init(info)
  }

  /// The identity of a chunked snapshot: its length, device 0 (no file), and the first 16 bytes
  /// of its manifest's content digest (`identity`, the SHA-256 of the whole snapshot) as the
  /// inode and modification fields.
  package init(manifest: SnapshotManifest) {
    let hex = Array(manifest.identity.split(separator: ":").last.map(String.init) ?? manifest.identity).compactMap(\.hexDigitValue)
    func word(_ from: Int) -> UInt64 {
      hex.dropFirst(from).prefix(16).reduce(UInt64(0)) { $0 << 4 | UInt64($1) }
    }
    self.init(size: UInt64(max(0, manifest.length)), device: 0, inode: word(0), modifiedNanoseconds: word(16))
  }

  /// The identity of an open file.
  init?(descriptor: Int32) {
    var info = stat()
    guard fstat(descriptor, &info) == 0 else { return nil }
    self.init(info)
  }

  private init(_ info: stat) {
    size = UInt64(max(0, info.st_size))
    device = UInt64(info.st_dev)
    inode = UInt64(info.st_ino)
    modifiedNanoseconds = UInt64(max(0, info.st_mtim.tv_sec)) &* 1_000_000_000 &+ UInt64(max(0, info.st_mtim.tv_nsec))
  }

  /// `size=…, dev=…, ino=…, mtime_ns=…`.
  public var description: String {
    "size=\(size) dev=\(device) ino=\(inode) mtime_ns=\(modifiedNanoseconds)"
  }
}
