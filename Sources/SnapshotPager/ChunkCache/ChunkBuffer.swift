import Glibc

/// One chunk's bytes in memory, page-aligned (the source of `UFFDIO_COPY`s). Freed when the last
/// reference goes: a chunk evicted from the cache while a copy from it runs stays valid until the
/// copy's reference ends.
public final class ChunkBuffer: Sendable {
  /// The chunk's length in bytes.
  public let count: Int
  private let address: UInt  // posix_memalign'd; only read after init, freed in deinit.

  /// A copy of `bytes` (nil when memory cannot be had).
  init?(_ bytes: [UInt8]) {
    var pointer: UnsafeMutableRawPointer?
    guard posix_memalign(&pointer, 4096, max(bytes.count, 1)) == 0, let pointer else { return nil }
    bytes.withUnsafeBytes { source in
      if let base = source.baseAddress { memcpy(pointer, base, bytes.count) }
    }
    count = bytes.count
    address = UInt(bitPattern: pointer)
  }

  /// `capacity` bytes, not yet written (nil when memory cannot be had): a chunk received in
  /// pieces (``fill(at:from:count:)``), published only once every byte is in.
  init?(capacity: Int) {
    var pointer: UnsafeMutableRawPointer?
    guard capacity >= 0, posix_memalign(&pointer, 4096, max(capacity, 1)) == 0, let pointer else { return nil }
    count = capacity
    address = UInt(bitPattern: pointer)
  }

  /// `count` zero bytes (nil when memory cannot be had): a huge page assembled from pieces.
  init?(zeroed count: Int) {
    var pointer: UnsafeMutableRawPointer?
    guard count > 0, posix_memalign(&pointer, 4096, count) == 0, let pointer else { return nil }
    memset(pointer, 0, count)
    self.count = count
    address = UInt(bitPattern: pointer)
  }

  /// Copies `count` bytes from `source` to byte `offset` (only while no one else reads it).
  func fill(at offset: Int, from source: UInt, count: Int) {
    guard let to = UnsafeMutableRawPointer(bitPattern: address &+ UInt(offset)),
          let from = UnsafeRawPointer(bitPattern: source) else { return }
    memcpy(to, from, count)
  }

  deinit { free(UnsafeMutableRawPointer(bitPattern: address)) }

  /// The address of byte `offset`.
  public func address(at offset: Int) -> UInt { address &+ UInt(offset) }

  /// The bytes.
  public var bytes: UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: UnsafeRawPointer(bitPattern: address), count: count) }
}
