import Glibc
import CUserfaultfd
import SystemPackage

extension Userfaultfd {
  /// The size of one event record (`sizeof(struct uffd_msg)`).
  public static let eventSize = Int(CUFFD_MSG_SIZE)

  /// The most events one ``readEvents(maxCount:)`` call reads: its buffer lives on the stack.
  public static let maxEventsPerRead = 32

  /// Reads up to `maxCount` events (at most ``maxEventsPerRead``) in one `read(2)`.
  ///
  /// On a blocking handle this waits for at least one event. On a non-blocking handle it returns
  /// an empty array when none is pending: that is not an error. Interrupted reads are retried.
  ///
  /// Nothing is allocated before the read: the records land in a stack buffer, and the array is
  /// built after `read(2)` returned. With ``Features/eventFork`` that is not enough for a loop: a
  /// thread inside `fork()` holds glibc's malloc locks until its fork event is read, and freeing
  /// the previous batch (or a forked child's handle) may meet the next fork and wait for it
  /// forever. Loops under EVENT_FORK read with ``readEvents(into:)`` and take fork descriptors
  /// with ``EventBuffer/forkedDescriptor(at:)``, or use a ``FaultServer``, which does.
  ///
  /// - Parameter maxCount: 1 or more; values above ``maxEventsPerRead`` read that many.
  public func readEvents(maxCount: Int = Userfaultfd.maxEventsPerRead) throws(UserfaultfdError) -> [Event] {
    guard maxCount > 0 else {
      throw .invalidArgument(.readEvents, .outOfRange(parameter: "maxCount", value: maxCount, valid: 1...Int.max))
    }
    let count = min(maxCount, Self.maxEventsPerRead)
    // 32 records x 32 bytes = 1 KiB: within the size Swift places on the stack.
    return try withUnsafeTemporaryAllocation(byteCount: Self.maxEventsPerRead * Self.eventSize, alignment: 8) {
      (buffer) throws(UserfaultfdError) -> [Event] in
      let window = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<(count * Self.eventSize)])
      let read = try readRecords(into: window)
      guard read > 0 else { return [] }
      var events: [Event] = []
      events.reserveCapacity(read)
      for index in 0..<read { events.append(decodeEvent(record(index, in: UnsafeRawBufferPointer(window)))) }
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
    case .failure(let error):
      // Compared by raw value, never as the pattern `.failure(.resourceTemporarilyUnavailable)`:
      // that resolves to swift-system's `Errno.~=(Errno, any Error)`, which boxes the errno in an
      // existential (swift_allocError: malloc, then free) on every read that finds nothing. With
      // EVENT_FORK that read can meet a fork holding malloc's locks whose event is not queued yet
      // (the kernel queues it only after copying the address space), and the fork then waits for
      // a reader blocked in malloc: the hang seen on Linux 5.10 under load.
      if error.rawValue == EAGAIN { return 0 }
      throw .systemCallFailed("read(userfaultfd)", error)
    }
  }

  /// The `index`th 32-byte record in `buffer`.
  func record(_ index: Int, in buffer: UnsafeRawBufferPointer) -> UnsafeRawBufferPointer {
    UnsafeRawBufferPointer(rebasing: buffer[(index * Self.eventSize)..<((index + 1) * Self.eventSize)])
  }

  /// Decodes one 32-byte `uffd_msg` read from this handle.
  func decodeEvent(_ record: UnsafeRawBufferPointer) -> Event {
    switch Self.decodeRecord(record, threadIDs: features.contains(.threadID)) {
    case .event(let event): return event
    case .fork(let descriptor): return .fork(child: Userfaultfd(forkedDescriptor: descriptor, parent: self))
    }
  }

  /// A decoded record: an event, or a fork event's new descriptor (which only a handle can adopt).
  enum DecodedRecord {
    case event(Event)
    case fork(descriptor: Int32)
  }

  /// Decodes one 32-byte `uffd_msg`: event code at 0, the union at 8. Pure: no handle, no kernel.
  /// `threadIDs`: the handle negotiated ``Features/threadID`` (the faulting thread's id at 24).
  static func decodeRecord(_ record: UnsafeRawBufferPointer, threadIDs: Bool) -> DecodedRecord {
    let code = record.load(fromByteOffset: Int(CUFFD_MSG_OFFSET_EVENT), as: UInt8.self)
    let arg = Int(CUFFD_MSG_OFFSET_ARG)
    func u64(_ offset: Int) -> UInt64 { record.loadUnaligned(fromByteOffset: arg + offset, as: UInt64.self) }
    switch Int32(code) {
    case CUFFD_EVENT_PAGEFAULT:
      let threadID = threadIDs ? record.loadUnaligned(fromByteOffset: arg + 16, as: Int32.self) : nil
      return .event(.pageFault(PageFault(
        address: Address(rawValue: UInt(u64(8))), flags: PageFault.Flags(rawValue: u64(0)), threadID: threadID)))
    case CUFFD_EVENT_FORK:
      return .fork(descriptor: record.loadUnaligned(fromByteOffset: arg, as: Int32.self))
    case CUFFD_EVENT_REMAP:
      return .event(.remap(from: Address(rawValue: UInt(u64(0))), to: Address(rawValue: UInt(u64(8))), length: Int(truncatingIfNeeded: u64(16))))
    case CUFFD_EVENT_REMOVE:
      return .event(.remove(start: Address(rawValue: UInt(u64(0))), end: Address(rawValue: UInt(u64(8)))))
    case CUFFD_EVENT_UNMAP:
      return .event(.unmap(start: Address(rawValue: UInt(u64(0))), end: Address(rawValue: UInt(u64(8)))))
    default:
      return .event(.unrecognized(code: code))
    }
  }
}
