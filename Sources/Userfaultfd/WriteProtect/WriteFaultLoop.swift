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
    /// A write to the protected page at this address (rounded down to the base page). Returns
    /// false when the page could not be released yet (EAGAIN: a remove event this loop has not
    /// read yet is changing the mappings): the loop reads on and calls again for it shortly.
    let writeFault: @Sendable (UInt) -> Bool
    /// `MADV_DONTNEED` / `MADV_REMOVE` of `[start, end)`: the pages are gone, and without
    /// `UFFD_FEATURE_WP_UNPOPULATED` their next write does not fault.
    let removed: @Sendable (UInt, UInt) -> Void
  }

  private let uffd: Userfaultfd
  private let stopping = StopFlag()
  private let progress = BatchProgress()
  private let thread: DedicatedThread

  /// How long one poll waits before looking at the stop flag again.
  static let pollMilliseconds: Int32 = 20

  /// Starts the thread. `uffd` must be non-blocking.
  init(uffd: Userfaultfd, callbacks: Callbacks) throws(UserfaultfdError) {
    guard uffd.isNonBlocking else { throw .invalidArgument(.readEvents, .handleIsBlocking) }
    self.uffd = uffd
    let stopping = self.stopping, progress = self.progress
    thread = try DedicatedThread { [uffd] in
      Self.run(uffd: uffd, callbacks: callbacks, stopping: stopping, progress: progress)
    }
  }

  /// Waits until every event this loop had read when the call began has been handled: a thread
  /// whose `madvise(MADV_DONTNEED)` returned has had its remove event read (the kernel waits for
  /// that), and after this call the owner has seen it. At most `seconds`; false on time-out.
  func waitUntilReadEventsAreHandled(seconds: Double = 5) -> Bool {
    let started = progress.started.load(ordering: .acquiring)
    let deadline = monotonicSeconds() + seconds
    while progress.finished.load(ordering: .acquiring) < started {
      if monotonicSeconds() > deadline { return false }
      sched_yield()
    }
    return true
  }

  /// Stops the thread and waits for it (at most one poll interval plus the callback under way).
  func stop() {
    stopping.value.store(true, ordering: .releasing)
    thread.join()
  }

  /// Faults whose release must be tried again, at most this many at once (beyond it the loop
  /// stops reading until some are released).
  static let maxDeferred = 1024

  private static func run(uffd: Userfaultfd, callbacks: Callbacks, stopping: StopFlag, progress: BatchProgress) {
    let capacity = Userfaultfd.maxEventsPerRead * Userfaultfd.eventSize
    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: capacity, alignment: 8)
    let deferred = UnsafeMutableBufferPointer<UInt>.allocate(capacity: maxDeferred)
    defer {
      buffer.deallocate()
      deferred.deallocate()
    }
    var deferredCount = 0
    let threadIDs = uffd.features.contains(.threadID)
    while !stopping.value.load(ordering: .acquiring) {
      // Releases that met EAGAIN: the remove event behind it has been read by now, or soon.
      var kept = 0
      for index in 0..<deferredCount where !callbacks.writeFault(deferred[index]) {
        deferred[kept] = deferred[index]
        kept += 1
      }
      deferredCount = kept
      if deferredCount == maxDeferred {
        sched_yield()
        continue
      }
      var descriptor = pollfd(fd: uffd.descriptorOrNegative, events: Int16(POLLIN), revents: 0)
      guard descriptor.fd >= 0 else { return }
      let ready = poll(&descriptor, 1, deferredCount > 0 ? 1 : pollMilliseconds)
      if ready <= 0 { continue }  // timeout or EINTR: look at the stop flag again
      // Read no more faults than can be deferred.
      let room = min(Userfaultfd.maxEventsPerRead, maxDeferred - deferredCount) * Userfaultfd.eventSize
      let batch = progress.started.wrappingAdd(1, ordering: .acquiringAndReleasing).newValue
      defer { progress.finished.store(batch, ordering: .releasing) }
      guard let count = try? uffd.readRecords(into: UnsafeMutableRawBufferPointer(rebasing: buffer[0..<room])) else { return }
      for index in 0..<count {
        let record = uffd.record(index, in: UnsafeRawBufferPointer(buffer))
        switch Userfaultfd.decodeRecord(record, threadIDs: threadIDs) {
        case .event(.pageFault(let fault)) where fault.flags.contains(.writeProtect):
          let page = fault.address.rawValue & ~PageSize.mask
          if !callbacks.writeFault(page) {
            deferred[deferredCount] = page
            deferredCount += 1
          }
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

/// Batches of events a loop started reading and finished handling (monotonic counters).
final class BatchProgress: Sendable {
  let started = Atomic<Int>(0)
  let finished = Atomic<Int>(0)
}

/// CLOCK_MONOTONIC in seconds.
func monotonicSeconds() -> Double {
  var now = timespec()
  clock_gettime(CLOCK_MONOTONIC, &now)
  return Double(now.tv_sec) + Double(now.tv_nsec) / 1e9
}
