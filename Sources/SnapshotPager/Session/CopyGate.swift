import Glibc
import Synchronization

/// Orders a session's prefetch copies, which run on any thread and outside the session lock,
/// against the reading of its events.
///
/// The kernel zaps a released range (a REMOVE: `MADV_DONTNEED`, a balloon) only once its event
/// has been read, and a copy that started before the event was queued is not stopped by it (only
/// copies that start while it is pending fail with EAGAIN). A copy still running when the event is
/// read could land after the zap: snapshot bytes where the client must read zeros. So events are
/// read with no copy in flight: the reader closes the gate (copies that have not started back
/// off), waits for the copies in flight, which are single ioctls of at most
/// ``SnapshotServer/prefetchIoctlBytes``, reads and applies the events, and opens it again. A
/// fault therefore waits behind at most one prefetch ioctl per copier, never behind a prefetch.
///
/// A Dekker handshake on two counters: each side announces itself, then looks at the other;
/// sequentially consistent orderings make sure at least one of them sees the other.
final class CopyGate: Sendable {
  private let copies = Atomic<Int>(0)
  private let readers = Atomic<Int>(0)

  /// A copier's entry; false when a reader holds or wants the gate (the copier backs off and
  /// tries again later). Each true is paired with ``leave()``.
  func enter() -> Bool {
    guard readers.load(ordering: .sequentiallyConsistent) == 0 else { return false }
    copies.add(1, ordering: .sequentiallyConsistent)
    guard readers.load(ordering: .sequentiallyConsistent) == 0 else {
      copies.subtract(1, ordering: .sequentiallyConsistent)
      return false
    }
    return true
  }

  /// A copier's exit, after its copy and the page states that go with it.
  func leave() {
    copies.subtract(1, ordering: .sequentiallyConsistent)
  }

  /// Runs `body` with no copy in flight and none starting: the reader's side.
  func exclusive<T, E: Error>(_ body: () throws(E) -> T) throws(E) -> T {
    readers.add(1, ordering: .sequentiallyConsistent)
    defer { readers.subtract(1, ordering: .sequentiallyConsistent) }
    var spins = 0
    while copies.load(ordering: .sequentiallyConsistent) != 0 {
      // A copy is one ioctl (tens to hundreds of microseconds): spin briefly, then sleep, which
      // leaves the CPU to a copier that a 2-CPU machine may have preempted.
      spins += 1
      if spins < 64 { sched_yield() } else { usleep(20) }
    }
    return try body()
  }
}
