#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import CUserfaultfd
import SystemPackage

extension Userfaultfd {
  /// The size of one event record (`sizeof(struct uffd_msg)`).
  public static let eventSize = Int(CUFFD_MSG_SIZE)

  /// Reads up to `maxCount` events in one `read(2)`.
  ///
  /// On a blocking handle this waits for at least one event. On a non-blocking handle it returns
  /// an empty array when none is pending: that is not an error. Interrupted reads are retried.
  public func readEvents(maxCount: Int = 64) throws(UserfaultfdError) -> [Event] {
    guard maxCount > 0 else {
      throw .invalidArgument(.readEvents, "maxCount must be positive, got \(maxCount)")
    }
    return try withUnsafeTemporaryAllocation(byteCount: maxCount * Self.eventSize, alignment: 8) {
      (buffer) throws(UserfaultfdError) -> [Event] in
      let count = try readRecords(into: buffer)
      var events: [Event] = []
      events.reserveCapacity(count)
      for index in 0..<count { events.append(decodeEvent(record(index, in: UnsafeRawBufferPointer(buffer)))) }
      return events
    }
  }

  /// Reads as many whole records as fit into `buffer` with one read(2), without allocating (a
  /// fault server must not touch malloc: a thread inside fork() holds glibc's malloc locks until
  /// the fork event is read). Returns how many were read; 0 when none is pending on a
  /// non-blocking handle.
  func readRecords(into buffer: UnsafeMutableRawBufferPointer) throws(UserfaultfdError) -> Int {
    let fd = try fd(for: .readEvents)
    let capacity = buffer.count - buffer.count % Self.eventSize
    switch valueOrErrno(retryOnInterrupt: true, { Glibc.read(fd, buffer.baseAddress, capacity) }) {
    case .success(let bytes): return bytes / Self.eventSize
    case .failure(.resourceTemporarilyUnavailable): return 0
    case .failure(let error): throw .systemCallFailed("read(userfaultfd)", error)
    }
  }

  /// The `index`th 32-byte record in `buffer`.
  func record(_ index: Int, in buffer: UnsafeRawBufferPointer) -> UnsafeRawBufferPointer {
    UnsafeRawBufferPointer(rebasing: buffer[(index * Self.eventSize)..<((index + 1) * Self.eventSize)])
  }

  /// Decodes one 32-byte `uffd_msg`: event code at 0, the union at 8.
  func decodeEvent(_ record: UnsafeRawBufferPointer) -> Event {
    let code = record.load(fromByteOffset: Int(CUFFD_MSG_OFFSET_EVENT), as: UInt8.self)
    let arg = Int(CUFFD_MSG_OFFSET_ARG)
    func u64(_ offset: Int) -> UInt64 { record.loadUnaligned(fromByteOffset: arg + offset, as: UInt64.self) }
    switch Int32(code) {
    case CUFFD_EVENT_PAGEFAULT:
      let threadID = features.contains(.threadID)
        ? record.loadUnaligned(fromByteOffset: arg + 16, as: Int32.self) : nil
      return .pageFault(PageFault(
        address: UInt(u64(8)), flags: PageFault.Flags(rawValue: u64(0)), threadID: threadID))
    case CUFFD_EVENT_FORK:
      let fd = record.loadUnaligned(fromByteOffset: arg, as: Int32.self)
      return .fork(child: Userfaultfd(forkedDescriptor: fd, parent: self))
    case CUFFD_EVENT_REMAP:
      return .remap(from: UInt(u64(0)), to: UInt(u64(8)), length: Int(u64(16)))
    case CUFFD_EVENT_REMOVE:
      return .remove(start: UInt(u64(0)), end: UInt(u64(8)))
    case CUFFD_EVENT_UNMAP:
      return .unmap(start: UInt(u64(0)), end: UInt(u64(8)))
    default:
      return .unrecognized(code: code)
    }
  }
}
