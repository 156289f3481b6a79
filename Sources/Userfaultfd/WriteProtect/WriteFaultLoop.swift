import CUserfaultfd
import Glibc
import Synchronization

/// A handler thread for synchronous write-protect faults: reads a non-blocking userfaultfd (polled
/// with a short timeout, so ``stop()`` is prompt), and hands each write-protect fault's page and
/// each remove event (`MADV_DONTNEED`) to its owner. The thread is a ``DedicatedThread``: the
/// writers it releases are never the ones it waits on.
final class WriteFaultLoop: Sendable {
  /// What the loop calls. Runs on the loop's thread; the fault stays pending (its writer waits)
  /// until the callback un-protects the page.
  struct Callbacks: Sendable {
    /// A write to the protected page at this address (rounded down to the base page).
    let writeFault: @Sendable (UInt) -> Void
    /// `MADV_DONTNEED` / `MADV_REMOVE` of `[start, end)`: the pages are gone, and without
    /// `UFFD_FEATURE_WP_UNPOPULATED` their next write does not fault.
    let removed: @Sendable (UInt, UInt) -> Void
  }

  private let uffd: Userfaultfd
  private let stopping = StopFlag()
  private let thread: DedicatedThread

  /// How long one poll waits before looking at the stop flag again.
  static let pollMilliseconds: Int32 = 20

  /// Starts the thread. `uffd` must be non-blocking.
  init(uffd: Userfaultfd, callbacks: Callbacks) throws(UserfaultfdError) {
    guard uffd.isNonBlocking else { throw .invalidArgument(.readEvents, .handleIsBlocking) }
    self.uffd = uffd
    let stopping = self.stopping
    thread = try DedicatedThread { [uffd] in
      Self.run(uffd: uffd, callbacks: callbacks, stopping: stopping)
    }
  }

  /// Stops the thread and waits for it (at most one poll interval plus the callback under way).
  func stop() {
    stopping.value.store(true, ordering: .releasing)
    thread.join()
  }

  private static func run(uffd: Userfaultfd, callbacks: Callbacks, stopping: StopFlag) {
    let capacity = Userfaultfd.maxEventsPerRead * Userfaultfd.eventSize
    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: capacity, alignment: 8)
    defer { buffer.deallocate() }
    let threadIDs = uffd.features.contains(.threadID)
    while !stopping.value.load(ordering: .acquiring) {
      var descriptor = pollfd(fd: uffd.descriptorOrNegative, events: Int16(POLLIN), revents: 0)
      guard descriptor.fd >= 0 else { return }
      let ready = poll(&descriptor, 1, pollMilliseconds)
      if ready <= 0 { continue }  // timeout or EINTR: look at the stop flag again
      guard let count = try? uffd.readRecords(into: buffer) else { return }
      for index in 0..<count {
        let record = uffd.record(index, in: UnsafeRawBufferPointer(buffer))
        switch Userfaultfd.decodeRecord(record, threadIDs: threadIDs) {
        case .event(.pageFault(let fault)) where fault.flags.contains(.writeProtect):
          callbacks.writeFault(fault.address.rawValue & ~PageSize.mask)
        case .event(.remove(let start, let end)):
          callbacks.removed(start.rawValue, end.rawValue)
        case .fork(let descriptor):
          _ = close(descriptor)  // never requested; closed rather than leaked
        default:
          break
        }
      }
    }
  }
}

/// A flag a thread's body and its owner share (an `Atomic` cannot be captured by a closure).
final class StopFlag: Sendable {
  let value = Atomic<Bool>(false)
}
