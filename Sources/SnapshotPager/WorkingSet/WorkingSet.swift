import Glibc

/// The pages a restore touched, in the order it first touched them, bound to the snapshot they
/// were recorded from: what a pager replays ahead of demand for the next clone of that snapshot.
///
/// Pages are snapshot file offsets in units of ``granule`` (4 KiB): a 2 MiB hugetlbfs page is the
/// entry of its first 4 KiB. The file (``encode()``, ``decode(_:expecting:)``) is little-endian:
///
/// | offset | size | field |
/// |---|---|---|
/// | 0 | 8 | magic `UFFDWSET` |
/// | 8 | 4 | format version (1) |
/// | 12 | 4 | header length (80) |
/// | 16 | 32 | the snapshot's identity: size, device, inode, mtime in ns (``SnapshotIdentity``) |
/// | 48 | 4 | granule in bytes (4096) |
/// | 52 | 4 | traces merged into it (1 for one session's recording) |
/// | 56 | 4 | flags: bit 0 set when every trace settled (rather than ending with its session) |
/// | 60 | 4 | reserved, 0 |
/// | 64 | 8 | recording time in ms (the longest trace's) |
/// | 72 | 8 | page count *n* |
/// | 80 | 8 *n* | page indices, first touched first |
/// | 80 + 8 *n* | 4 | CRC-32C of every byte before it |
///
/// A file is refused whole (``WorkingSetError``) when it is truncated, fails its checksum, has
/// another version, was recorded for another snapshot identity, or lists a page past the
/// snapshot's end or twice: a pager never replays a page it cannot vouch for.
public struct WorkingSet: Sendable, Hashable {
  /// The snapshot it was recorded from.
  public var snapshot: SnapshotIdentity
  /// The unit of ``pages``, in bytes.
  public var granule: Int
  /// Snapshot offsets divided by ``granule``, in first-touch order (merged: by median rank).
  public var pages: [UInt64]
  /// How many sessions' traces it holds.
  public var traces: Int
  /// Whether every trace stopped because the fault rate settled (false: one ended with its session).
  public var settled: Bool
  /// How long the (longest) recording ran.
  public var recordingMilliseconds: UInt64

  /// The format version this build writes and reads.
  public static let formatVersion: UInt32 = 1
  /// The unit of pages this build records.
  public static let defaultGranule = 4096
  /// The most pages a working set holds (2^26: 256 GiB of 4 KiB pages).
  public static let maxPages = 1 << 26
  static let magic: [UInt8] = Array("UFFDWSET".utf8)
  static let headerLength = 80

  /// A working set as given.
  public init(snapshot: SnapshotIdentity, pages: [UInt64], granule: Int = WorkingSet.defaultGranule,
              traces: Int = 1, settled: Bool = true, recordingMilliseconds: UInt64 = 0) {
    self.snapshot = snapshot
    self.pages = pages
    self.granule = granule
    self.traces = traces
    self.settled = settled
    self.recordingMilliseconds = recordingMilliseconds
  }

  /// Bytes of the snapshot the working set covers.
  public var bytes: Int { pages.count &* granule }

  /// The most bytes a working-set file may have.
  public static var maxFileBytes: Int { headerLength + 8 * maxPages + 4 }

  // MARK: Encoding

  /// The file's bytes.
  public func encode() -> [UInt8] {
    var out: [UInt8] = []
    out.reserveCapacity(Self.headerLength + 8 * pages.count + 4)
    out += Self.magic
    out.appendLittleEndian(Self.formatVersion)
    out.appendLittleEndian(UInt32(Self.headerLength))
    out.appendLittleEndian(snapshot.size)
    out.appendLittleEndian(snapshot.device)
    out.appendLittleEndian(snapshot.inode)
    out.appendLittleEndian(snapshot.modifiedNanoseconds)
    out.appendLittleEndian(UInt32(clamping: granule))
    out.appendLittleEndian(UInt32(clamping: traces))
    out.appendLittleEndian(UInt32(settled ? 1 : 0))
    out.appendLittleEndian(UInt32(0))
    out.appendLittleEndian(recordingMilliseconds)
    out.appendLittleEndian(UInt64(pages.count))
    for page in pages { out.appendLittleEndian(page) }
    out.appendLittleEndian(CRC32C.checksum(out))
    return out
  }

  /// Parses and checks a file's bytes: structure, version, checksum, every page inside the
  /// snapshot and listed once, and, when `expecting` is given, the snapshot identity.
  ///
  /// - Throws: ``WorkingSetError`` naming the first thing wrong.
  public static func decode(_ bytes: [UInt8], expecting identity: SnapshotIdentity? = nil) throws(WorkingSetError) -> WorkingSet {
    guard bytes.count <= maxFileBytes else { throw .tooLarge(bytes: bytes.count, max: maxFileBytes) }
    guard bytes.count >= 12 else { throw .truncated(expected: headerLength + 4, found: bytes.count) }
    guard Array(bytes[0..<8]) == magic else { throw .badMagic }
    let version: UInt32 = bytes.littleEndian(at: 8)
    guard version == formatVersion else { throw .unsupportedVersion(version) }
    guard bytes.count >= headerLength + 4 else { throw .truncated(expected: headerLength + 4, found: bytes.count) }
    let header: UInt32 = bytes.littleEndian(at: 12)
    guard header == UInt32(headerLength) else { throw .badHeader("header length \(header), version 1 has \(headerLength)") }
    let count: UInt64 = bytes.littleEndian(at: 72)
    guard count <= UInt64(maxPages) else { throw .badHeader("\(count) pages, at most \(maxPages)") }
    let expected = headerLength + 8 * Int(count) + 4
    guard bytes.count == expected else { throw .truncated(expected: expected, found: bytes.count) }
    let stored: UInt32 = bytes.littleEndian(at: expected - 4)
    let computed = bytes.withUnsafeBytes { CRC32C.checksum(UnsafeRawBufferPointer(rebasing: $0[0..<(expected - 4)])) }
    guard stored == computed else { throw .checksumMismatch(stored: stored, computed: computed) }
    let recorded = SnapshotIdentity(
      size: bytes.littleEndian(at: 16), device: bytes.littleEndian(at: 24), inode: bytes.littleEndian(at: 32),
      modifiedNanoseconds: bytes.littleEndian(at: 40))
    if let identity, identity != recorded { throw .otherSnapshot(recorded: recorded, current: identity) }
    let granule: UInt32 = bytes.littleEndian(at: 48)
    guard granule >= 4096, granule <= 1 << 30, granule & (granule - 1) == 0 else {
      throw .badHeader("granule \(granule) is not a power of two from 4096 to 1 GiB")
    }
    let traces: UInt32 = bytes.littleEndian(at: 52)
    guard traces >= 1 else { throw .badHeader("no trace") }
    let flags: UInt32 = bytes.littleEndian(at: 56)
    guard flags & ~1 == 0 else { throw .badHeader("unknown flags 0x\(String(flags, radix: 16))") }
    let limit = recorded.size / UInt64(granule)
    var pages = [UInt64]()
    pages.reserveCapacity(Int(count))
    var seen = Set<UInt64>(minimumCapacity: Int(count))
    for index in 0..<Int(count) {
      let page: UInt64 = bytes.littleEndian(at: headerLength + 8 * index)
      guard page < limit else {
        throw .badPage(index: index, offset: page &* UInt64(granule), why: "past the end of the \(recorded.size)-byte snapshot")
      }
      guard seen.insert(page).inserted else {
        throw .badPage(index: index, offset: page * UInt64(granule), why: "listed twice")
      }
      pages.append(page)
    }
    return WorkingSet(
      snapshot: recorded, pages: pages, granule: Int(granule), traces: Int(traces), settled: flags & 1 == 1,
      recordingMilliseconds: bytes.littleEndian(at: 64))
  }

  // MARK: Files

  /// Reads and checks the file at `path` (see ``decode(_:expecting:)``).
  public static func read(from path: String, expecting identity: SnapshotIdentity? = nil) throws(WorkingSetError) -> WorkingSet {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { throw .unreadable(path: path, errno: errno) }
    defer { close(fd) }
    var info = stat()
    guard fstat(fd, &info) == 0 else { throw .unreadable(path: path, errno: errno) }
    guard info.st_size <= Int64(maxFileBytes) else { throw .tooLarge(bytes: Int(clamping: info.st_size), max: maxFileBytes) }
    let length = Int(info.st_size)
    var bytes = [UInt8](repeating: 0, count: length)
    var done = 0
    while done < length {
      let got = bytes.withUnsafeMutableBytes { buffer -> Int in
        guard let base = buffer.baseAddress else { return 0 }
        return pread(fd, base + done, length - done, off_t(done))
      }
      if got < 0 && errno == EINTR { continue }
      guard got > 0 else { break }
      done += got
    }
    guard done == length else { throw .truncated(expected: length, found: done) }
    return try decode(bytes, expecting: identity)
  }

  /// Writes the file at `path` atomically: a temporary file in the same folder, renamed over it,
  /// so a reader (or a pager restarted meanwhile) sees the old file or the new one, never half.
  /// `beforeRename` hears the written file's identity just before it takes the path (a cache can
  /// know the new file before any reader finds it).
  public func write(to path: String, beforeRename: (SnapshotIdentity) -> Void = { _ in }) throws(WorkingSetError) {
    let temporary = "\(path).tmp-\(getpid())"
    let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
    guard fd >= 0 else { throw .unreadable(path: temporary, errno: errno) }
    let bytes = encode()
    var done = 0
    while done < bytes.count {
      let wrote = bytes.withUnsafeBytes { buffer -> Int in
        guard let base = buffer.baseAddress else { return 0 }
        return Glibc.write(fd, base + done, bytes.count - done)
      }
      if wrote < 0 && errno == EINTR { continue }
      guard wrote > 0 else {
        let error = errno
        close(fd)
        unlink(temporary)
        throw .unreadable(path: temporary, errno: error)
      }
      done += wrote
    }
    if let written = SnapshotIdentity(descriptor: fd) { beforeRename(written) }
    close(fd)
    guard rename(temporary, path) == 0 else {
      let error = errno
      unlink(temporary)
      throw .unreadable(path: path, errno: error)
    }
  }
}

extension Array where Element == UInt8 {
  fileprivate mutating func appendLittleEndian<T: FixedWidthInteger>(_ value: T) {
    Swift.withUnsafeBytes(of: value.littleEndian) { append(contentsOf: $0) }
  }

  fileprivate func littleEndian<T: FixedWidthInteger>(at offset: Int) -> T {
    var value: T = 0
    for index in 0..<MemoryLayout<T>.size { value |= T(self[offset + index]) << (8 * index) }
    return value
  }
}
