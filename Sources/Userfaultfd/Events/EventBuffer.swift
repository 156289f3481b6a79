import SystemPackage
/// A reusable buffer for reading events without allocating: for a handler loop that must keep
/// working while other threads fork (with ``Features/eventFork`` a forking thread holds glibc's
/// malloc locks until its fork event is read, so a loop that calls malloc before reading, or frees
/// a previous batch, waits for it forever).
///
/// ```swift
/// let buffer = try EventBuffer(capacity: 64)
/// while running {
///   let count = try uffd.readEvents(into: buffer)
///   for index in 0..<count { handle(buffer.event(at: index, of: uffd)) }
/// }
/// ```
/// Decoding a page fault, remap, remove or unmap event allocates nothing; decoding a fork event
/// creates the child's handle (an allocation), which is safe once the event has been read.
public final class EventBuffer: @unchecked Sendable {
  // @unchecked: the records are plain bytes; a buffer is used by one reading thread at a time,
  // as documented, like any scratch memory.

  /// How many events one read can return.
  public let capacity: Int
  let records: UnsafeMutableRawBufferPointer

  /// The largest capacity.
  public static let maxCapacity = 4096

  /// Allocates room for `capacity` events (1 to ``maxCapacity``), once.
  public init(capacity: Int = 64) throws(UserfaultfdError) {
    guard (1...Self.maxCapacity).contains(capacity) else {
      throw .invalidArgument(.readEvents, .outOfRange(parameter: "capacity", value: capacity, valid: 1...Self.maxCapacity))
    }
    self.capacity = capacity
    self.records = .allocate(byteCount: capacity * Userfaultfd.eventSize, alignment: 8)
    records.initializeMemory(as: UInt8.self, repeating: 0)
  }

  deinit { records.deallocate() }

  /// The `index`th event of the last read, decoded for `uffd` (the handle it was read from).
  public func event(at index: Int, of uffd: Userfaultfd) -> Event {
    guard index >= 0, index < capacity else { return .unrecognized(code: 0) }
    return uffd.decodeEvent(uffd.record(index, in: UnsafeRawBufferPointer(records)))
  }

  /// The child's descriptor when the `index`th event of the last read is a fork, without creating
  /// a handle for it (which allocates): for readers that must never allocate under EVENT_FORK,
  /// where the next fork may hold malloc's locks at any moment. The descriptor is the caller's to
  /// close or adopt. Nil for other events.
  public func forkedDescriptor(at index: Int) -> FileDescriptor? {
    guard index >= 0, index < capacity else { return nil }
    let record = UnsafeRawBufferPointer(start: records.baseAddress.map { UnsafeRawPointer($0) + index * Userfaultfd.eventSize },
                                        count: Userfaultfd.eventSize)
    guard case .fork(let descriptor) = Userfaultfd.decodeRecord(record, threadIDs: false) else { return nil }
    return FileDescriptor(rawValue: descriptor)
  }
}

extension Userfaultfd {
  /// Reads as many events as `buffer` holds with one `read(2)`, allocating nothing. Returns how
  /// many were read: 0 when none is pending on a non-blocking handle.
  public func readEvents(into buffer: EventBuffer) throws(UserfaultfdError) -> Int {
    try readRecords(into: buffer.records)
  }
}
