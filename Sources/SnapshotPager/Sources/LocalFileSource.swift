import Glibc

/// Snapshot objects in a local folder (a packed snapshot's `--out` folder, or a mounted share).
/// Identity is the file's size and modification time.
public struct LocalFileSource: SnapshotSource {
  /// The folder objects are relative to.
  public let directory: String

  /// A source reading under `directory`.
  public init(directory: String) { self.directory = directory }

  /// The folder.
  public var location: String { directory }

  /// The path of object `path` (absolute paths are taken as they are).
  public func filePath(_ path: String) -> String { path.hasPrefix("/") ? path : directory + "/" + path }

  /// The file's size and identity (size and mtime in nanoseconds).
  public func info(_ path: String, timeout: Duration) async throws(SnapshotSourceError) -> SnapshotObjectInfo {
    let file = filePath(path)
    var status = stat()
    guard stat(file, &status) == 0 else {
      throw errno == ENOENT ? .notFound(file) : .transport("stat(\(file)): errno \(errno)")
    }
    let stamp = "\(status.st_mtim.tv_sec).\(status.st_mtim.tv_nsec)-\(status.st_size)"
    return SnapshotObjectInfo(size: Int(status.st_size), identity: SnapshotObjectIdentity(etag: nil, lastModified: stamp))
  }

  /// pread(2)s the range (the whole file when nil).
  public func read(_ path: String, range: Range<Int>?, expecting: SnapshotObjectIdentity?,
                   timeout: Duration) async throws(SnapshotSourceError) -> [UInt8] {
    let file = filePath(path)
    if let expecting {
      let now = try await info(path, timeout: timeout)
      guard !now.identity.differs(from: expecting) else { throw .objectChanged(file) }
    }
    let fd = open(file, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { throw errno == ENOENT ? .notFound(file) : .transport("open(\(file)): errno \(errno)") }
    defer { _ = close(fd) }
    let wanted: Range<Int>
    if let range {
      wanted = range
    } else {
      var status = stat()
      guard fstat(fd, &status) == 0 else { throw .transport("fstat(\(file)): errno \(errno)") }
      wanted = 0..<Int(status.st_size)
    }
    var bytes = [UInt8](repeating: 0, count: wanted.count)
    var done = 0
    while done < wanted.count {
      let got = bytes.withUnsafeMutableBytes { buffer in
        pread(fd, buffer.baseAddress.map { $0 + done }, wanted.count - done, off_t(wanted.lowerBound + done))
      }
      if got > 0 {
        done += got
      } else if got < 0 && errno == EINTR {
        continue
      } else if got == 0 {
        throw .badResponse("\(file) ends before byte \(wanted.upperBound)")
      } else {
        throw .transport("pread(\(file)): errno \(errno)")
      }
    }
    return bytes
  }

  /// Writes the file (creating its folders), through a temporary name renamed into place so a
  /// reader never sees half an object.
  public func write(_ path: String, bytes: [UInt8], timeout: Duration) async throws(SnapshotSourceError) {
    let file = filePath(path)
    try LocalFileSource.makeDirectories(forFile: file)
    let temporary = "\(file).tmp-\(getpid())"
    let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
    guard fd >= 0 else { throw .transport("open(\(temporary)): errno \(errno)") }
    var done = 0
    while done < bytes.count {
      let wrote = bytes.withUnsafeBytes { buffer in Glibc.write(fd, buffer.baseAddress.map { $0 + done }, bytes.count - done) }
      if wrote > 0 {
        done += wrote
      } else if wrote < 0 && errno == EINTR {
        continue
      } else {
        let error = errno
        _ = close(fd)
        _ = unlink(temporary)
        throw .transport("write(\(temporary)): errno \(error)")
      }
    }
    guard close(fd) == 0, rename(temporary, file) == 0 else {
      let error = errno
      _ = unlink(temporary)
      throw .transport("rename(\(temporary), \(file)): errno \(error)")
    }
  }

  /// Creates the folders above `file` (mkdir -p).
  static func makeDirectories(forFile file: String) throws(SnapshotSourceError) {
    var parts = file.split(separator: "/", omittingEmptySubsequences: false).map(String.init)
    parts.removeLast()
    var path = ""
    for (index, part) in parts.enumerated() {
      path += (index == 0 ? "" : "/") + part
      guard !path.isEmpty, !part.isEmpty, part != "." else { continue }
      if mkdir(path, 0o755) != 0 && errno != EEXIST { throw .transport("mkdir(\(path)): errno \(errno)") }
    }
  }
}
