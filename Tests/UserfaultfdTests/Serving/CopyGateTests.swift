import Synchronization
import Testing
@testable import SnapshotPager
@testable import Userfaultfd

/// The gate that orders prefetch copies (outside the session lock) against event reads: a reader
/// never runs beside a copy, and copies back off while a reader waits. No kernel needed; every
/// wait is bounded.
@Suite("Copy gate")
struct CopyGateTests {
  /// A flag the reader thread sets (a class: an atomic cannot be captured by an escaping closure).
  final class Flag: Sendable {
    private let value = Atomic<Bool>(false)
    func set() { value.store(true, ordering: .releasing) }
    var isSet: Bool { value.load(ordering: .acquiring) }
  }

  @Test func aReaderWaitsForTheCopyInFlightAndNewCopiesBackOffMeanwhile() throws {
    let gate = CopyGate()
    #expect(gate.enter(), "an open gate lets a copy in")
    let readerDone = Flag()
    let reader = try DedicatedThread { gate.exclusive { readerDone.set() } }
    // Once the reader waits, a new copy backs off (and the reader cannot run: one is in flight).
    let waiting = eventually(seconds: 10) {
      guard gate.enter() else { return true }
      gate.leave()
      return false
    }
    #expect(waiting, "a copy backs off while a reader waits")
    #expect(!readerDone.isSet, "the reader does not run beside the copy in flight")
    gate.leave()
    #expect(eventually(seconds: 10) { readerDone.isSet }, "the reader runs once the copy is over")
    reader.join()
    #expect(gate.enter(), "the gate opens again after the reader")
    gate.leave()
  }

  @Test func twoCopiesRunTogetherAndTheReaderWaitsForBoth() throws {
    let gate = CopyGate()
    #expect(gate.enter() && gate.enter(), "copies do not exclude each other")
    let readerDone = Flag()
    let reader = try DedicatedThread { gate.exclusive { readerDone.set() } }
    gate.leave()
    #expect(eventually(seconds: 10) {
      guard gate.enter() else { return true }
      gate.leave()
      return false
    })
    #expect(!readerDone.isSet, "one copy is still in flight")
    gate.leave()
    #expect(eventually(seconds: 10) { readerDone.isSet })
    reader.join()
  }
}
