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

  /// Maps the file at `path` read-only.
  ///
  /// - Throws: ``UserfaultfdError/systemCallFailed(_:_:)`` when it cannot be opened or mapped.
  public init(path: String) throws(UserfaultfdError) {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { throw .systemCallFailed("open(\(path))", .current) }
    defer { _ = close(fd) }
    var info = stat()
    guard fstat(fd, &info) == 0 else { throw .systemCallFailed("fstat(\(path))", .current) }
    guard info.st_size >= 0, info.st_size <= Int64(AnonymousMemory.maxLength) else {
      throw .invalidArgument(.serve, .lengthTooLarge(Int(truncatingIfNeeded: info.st_size), max: AnonymousMemory.maxLength))
    }
    self.path = path
    length = Int(info.st_size)
    guard length > 0 else {
      base = 0
      return
    }
    guard let mapped = mmap(nil, length, PROT_READ, MAP_PRIVATE, fd, 0), mapped != MAP_FAILED else {
      throw .systemCallFailed("mmap(\(path))", .current)
    }
    base = UInt(bitPattern: mapped)
  }

  deinit {
    if base != 0, let pointer = UnsafeMutableRawPointer(bitPattern: base) { _ = munmap(pointer, length) }
  }

  /// The address of byte `offset` of the file in this process (the source of a copy).
  public func address(at offset: Int) -> Address { Address(rawValue: base &+ UInt(offset)) }

  /// The file's bytes.
  public var bytes: UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: UnsafeRawPointer(bitPattern: base), count: length) }
}
