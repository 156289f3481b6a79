import Userfaultfd
import Glibc
import SystemPackage

/// A snapshot file mapped read-only: where a page server copies each page's content from. The
/// page cache backs it, so a page copied twice is read from memory.
public final class SnapshotFile: Sendable {
  /// The file's length in bytes.
  public let length: Int
  /// The file's path.
  public let path: String
  private let base: UInt  // The mapping (0 for an empty file); read-only, unmapped in deinit.
  private let descriptor: Int32  // Open for read(2) installs; closed in deinit.
  /// The chunked (remote) snapshot this stands for, when it is not a local memory file: the
  /// server reads its pages through the chunk cache instead of a mapping.
  package let chunked: ChunkedSnapshot?

  /// Maps the file at `path` read-only; with `populate`, maps every page of it now
  /// (`MAP_POPULATE`), so that no fault served later takes a minor fault on the mapping (a pager
  /// does this when a snapshot is configured, before any client connects).
  ///
  /// - Throws: `UserfaultfdError.systemCallFailed` when it cannot be opened or mapped.
  public init(path: String, populate: Bool = false) throws(UserfaultfdError) {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { throw .systemCallFailed("open(\(path))", .current) }
    var info = stat()
    guard fstat(fd, &info) == 0 else {
      let error = Errno.current
      _ = close(fd)
      throw .systemCallFailed("fstat(\(path))", error)
    }
    guard info.st_size >= 0, info.st_size <= Int64(AnonymousMemory.maxLength) else {
      _ = close(fd)
      throw .invalidArgument(.serve, .lengthTooLarge(Int(truncatingIfNeeded: info.st_size), max: AnonymousMemory.maxLength))
    }
    self.path = path
    length = Int(info.st_size)
    descriptor = fd
    chunked = nil
    guard length > 0 else {
      base = 0
      return
    }
    guard let mapped = mmap(nil, length, PROT_READ, MAP_PRIVATE | (populate ? MAP_POPULATE : 0), fd, 0), mapped != MAP_FAILED else {
      let error = Errno.current
      _ = close(fd)
      throw .systemCallFailed("mmap(\(path))", error)
    }
    base = UInt(bitPattern: mapped)
  }

  /// A chunked snapshot in place of a file (no mapping, no descriptor).
  package init(chunked: ChunkedSnapshot) {
    path = chunked.address
    length = chunked.length
    base = 0
    descriptor = -1
    self.chunked = chunked
  }

  deinit {
    if base != 0, let pointer = UnsafeMutableRawPointer(bitPattern: base) { _ = munmap(pointer, length) }
    if descriptor >= 0 { _ = close(descriptor) }
  }

  /// read(2)s `count` bytes from `offset` into `buffer` (a handler producing content itself);
  /// false when the file ends first or a read fails.
  func read(_ count: Int, at offset: Int, into buffer: UnsafeMutableRawPointer) -> Bool {
    var done = 0
    while done < count {
      let got = pread(descriptor, buffer + done, count - done, off_t(offset + done))
      if got > 0 {
        done += got
      } else if got < 0 && errno == EINTR {
        continue
      } else {
        return false
      }
    }
    return true
  }

  /// The address of byte `offset` of the file in this process (the source of a copy).
  public func address(at offset: Int) -> Address { Address(rawValue: base &+ UInt(offset)) }

  /// The file's bytes.
  public var bytes: UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: UnsafeRawPointer(bitPattern: base), count: base == 0 ? 0 : length) }
}
