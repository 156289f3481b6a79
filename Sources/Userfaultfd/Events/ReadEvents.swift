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
    let fd = try fd(for: .readEvents)
    let capacity = maxCount * Self.eventSize
    return try withUnsafeTemporaryAllocation(byteCount: capacity, alignment: 8) {
      (buffer) throws(UserfaultfdError) -> [Event] in
      let result = valueOrErrno(retryOnInterrupt: true) {
        Glibc.read(fd, buffer.baseAddress, capacity)
      }
      let count: Int
      switch result {
      case .success(let bytes): count = bytes / Self.eventSize
      case .failure(.resourceTemporarilyUnavailable): return []
      case .failure(let error): throw .systemCallFailed("read(userfaultfd)", error)
      }
      var events: [Event] = []
      events.reserveCapacity(count)
      for index in 0..<count {
        let record = UnsafeRawBufferPointer(rebasing: buffer[(index * Self.eventSize)...].prefix(Self.eventSize))
        events.append(decodeEvent(record))
      }
      return events
    }
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
