import Glibc

/// One chunk's bytes in memory, page-aligned (the source of `UFFDIO_COPY`s). Freed when the last
/// reference goes: a chunk evicted from the cache while a copy from it runs stays valid until the
/// copy's reference ends.
///
/// The memory is its own anonymous mapping, populated when made (`MAP_POPULATE`): the kernel
/// supplies every page in one call instead of a page fault per 4 KiB as the chunk is first written
/// (512 faults for a 2 MiB chunk, a fifth of a cold restore's CPU before this was done).
public final class ChunkBuffer: Sendable {
  /// The chunk's length in bytes.
  public let count: Int
  private let address: UInt  // mmap'd; written only before the buffer is published, unmapped in deinit.
  private let mapped: Int  // The mapping's length (count rounded up to whole pages, at least one).

  /// `capacity` bytes, not yet written (nil when memory cannot be had): a chunk received in
  /// pieces (``fill(at:from:count:)``), published only once every byte is in.
  init?(capacity: Int) {
    guard capacity >= 0 else { return nil }
    let page = 4096
    let (rounded, overflow) = max(capacity, 1).addingReportingOverflow(page - 1)
    guard !overflow else { return nil }
    let length = rounded / page * page
    guard let pointer = mmap(nil, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0),
          pointer != MAP_FAILED else { return nil }
    count = capacity
    mapped = length
    address = UInt(bitPattern: pointer)
  }

  /// A copy of `bytes` (nil when memory cannot be had).
  convenience init?(_ bytes: [UInt8]) {
    self.init(capacity: bytes.count)
    bytes.withUnsafeBytes { source in
      if let base = source.baseAddress { fill(at: 0, from: UInt(bitPattern: base), count: bytes.count) }
    }
  }

  /// `count` zero bytes (nil when memory cannot be had): a huge page assembled from pieces. A
  /// fresh anonymous mapping reads as zeros.
  convenience init?(zeroed count: Int) {
    guard count > 0 else { return nil }
    self.init(capacity: count)
  }

  /// Copies `count` bytes from `source` to byte `offset` (only while no one else reads it).
  func fill(at offset: Int, from source: UInt, count: Int) {
    guard let to = UnsafeMutableRawPointer(bitPattern: address &+ UInt(offset)),
          let from = UnsafeRawPointer(bitPattern: source) else { return }
    memcpy(to, from, count)
  }

  deinit { _ = munmap(UnsafeMutableRawPointer(bitPattern: address), mapped) }

  /// The address of byte `offset`.
  public func address(at offset: Int) -> UInt { address &+ UInt(offset) }

  /// The bytes.
  public var bytes: UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: UnsafeRawPointer(bitPattern: address), count: count) }
}
