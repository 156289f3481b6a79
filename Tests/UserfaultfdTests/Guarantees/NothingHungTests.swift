import CUserfaultfdTestSupport
import Foundation
import Synchronization
import SystemPackage
import Testing
@testable import Userfaultfd

/// What a server's onFailure handler heard.
final class FailureLog: Sendable {
  private let entries = Mutex<[UnresolvedFault]>([])
  func append(_ failure: UnresolvedFault) { entries.withLock { $0.append(failure) } }
  var count: Int { entries.withLock { $0.count } }
}

/// The second promise: no thread is left waiting forever. A fault that cannot be resolved is
/// failed (poisoned or zero-filled) and reported; stopping or dropping a server releases every
/// waiter; forks under EVENT_FORK never deadlock with the reader; closing a SIGBUS region while
/// threads fault in it kills nobody. Scenarios that end a process run in a child (exit tests).
extension KernelTests {
@Suite("Guarantees: nothing hung")
struct NothingHungTests {
  let page = PageSize.base

  /// A server on a fresh non-blocking handle, its region registered, resolving with `resolver`.
  func serve(
    pages: Int = 4, action: UnresolvableFaultAction = .zeroPage, features: Features = [],
    failures: FailureLog? = nil,
    _ resolver: @escaping FaultServer.Resolver
  ) throws -> (FaultServer, AnonymousMemory) {
    let uffd = try Userfaultfd(features: features, options: .nonBlocking)
    let area = try AnonymousMemory(length: pages * page)
    let server = try FaultServer(
      uffd: uffd, configuration: .init(onUnresolvable: action),
      onFailure: { failure in failures?.append(failure) }, resolver: resolver)
    try server.register(area.baseAddress, length: area.length)
    return (server, area)
  }

  /// Touches the first page on another thread and expects the touch to return (with zeros: the
  /// failed fault was zero-filled) and the server to report one failure with `errno`.
  func expectFailedButReleased(
    _ server: FaultServer, _ area: AnonymousMemory, failures: FailureLog, errno: Errno?,
    sourceLocation: SourceLocation = #_sourceLocation
  ) {
    let target = Address(area.baseAddress)
    let seen = Atomic<UInt64>(1)
    let toucher = TestThread { seen.store(target.mapped.load(as: UInt64.self), ordering: .relaxed) }
    #expect(toucher.join(), "the faulting thread came back", sourceLocation: sourceLocation)
    #expect(seen.load(ordering: .relaxed) == 0, "it read the zero page", sourceLocation: sourceLocation)
    // The thread wakes as the page is filled, a moment before the server counts the failure.
    #expect(eventually { server.statistics.failed == 1 }, sourceLocation: sourceLocation)
    #expect(server.lastFailure?.pageAddress == target, sourceLocation: sourceLocation)
    if let errno { #expect(server.lastFailure?.errno == errno.rawValue, sourceLocation: sourceLocation) }
    #expect(eventually { failures.count == 1 }, "onFailure heard it", sourceLocation: sourceLocation)
    server.stop()
  }

  @Test(.enabled(if: Kernel.hasMove, "needs UFFDIO_MOVE (Linux 6.8)"))
  func moveFromAHoleFailsTheFaultInsteadOfLooping() throws {
    let hole = try AnonymousMemory(length: page)
    let source = Address(hole.baseAddress)
    let failures = FailureLog()
    let (server, area) = try serve(failures: failures) { _ in .move(from: source) }
    expectFailedButReleased(server, area, failures: failures, errno: .noSuchFileOrDirectory)
  }

  @Test func copyFromUnmappedMemoryFailsTheFault() throws {
    // The hole is made after the area is mapped, so the area cannot land in it.
    let source = Atomic<UInt>(0)
    let failures = FailureLog()
    let (server, area) = try serve(failures: failures) { _ in
      .copy(from: Address(rawValue: source.load(ordering: .acquiring)))
    }
    source.store(UInt(bitPattern: try unmappedRange(pages: 1)), ordering: .releasing)
    expectFailedButReleased(server, area, failures: failures, errno: .badAddress)
  }

  @Test(.enabled(if: Kernel.hasMove, "needs UFFDIO_MOVE (Linux 6.8)"))
  func moveFromSharedMemoryFailsTheFault() throws {
    let shared = try AnonymousMemory(length: page, sharing: .shared)
    fill(shared.baseAddress, seed: 9)
    let source = Address(shared.baseAddress)
    let failures = FailureLog()
    let (server, area) = try serve(failures: failures) { _ in .move(from: source) }
    expectFailedButReleased(server, area, failures: failures, errno: .invalidArgument)
  }

  @Test func copyFromAMissingPageOfTheSameHandleFailsInsteadOfDeadlocking() throws {
    let failures = FailureLog()
    let (server, area) = try serve(pages: 2, failures: failures) { fault in
      // The second page of the served area: registered, missing, and only this server fills it.
      .copy(from: fault.pageAddress + PageSize.base)
    }
    expectFailedButReleased(server, area, failures: failures, errno: .deadlock)
  }

  /// A MOVE refused with EBUSY (the source page is shared with a forked child) is done as a copy:
  /// the faulting thread gets the data.
  @Test(.enabled(if: Kernel.hasMove, "needs UFFDIO_MOVE (Linux 6.8)"))
  func moveOfAPageSharedWithAChildIsCopiedInstead() throws {
    let staging = try AnonymousMemory(length: page)
    fill(staging.baseAddress, seed: 77)
    let child = cuffd_test_fork_holder()
    try #require(child > 0)
    defer { _ = cuffd_test_kill_and_wait(child) }
    let source = Address(staging.baseAddress)
    let (server, area) = try serve { _ in .move(from: source) }
    defer { server.stop() }
    let target = Address(area.baseAddress)
    let right = Atomic<Bool>(false)
    let toucher = TestThread { right.store(holds(target.mapped, seed: 77), ordering: .relaxed) }
    #expect(toucher.join())
    let sawTheData = right.load(ordering: .relaxed)
    #expect(sawTheData)
    // The thread wakes as the page lands, a moment before the server counts it.
    #expect(eventually { server.statistics.resolved == 1 })
    #expect(server.statistics.failed == 0)
  }

  /// Default action: the page is poisoned and the access raises SIGBUS, ending the process (no
  /// handler of its own): the truth about the page, not a hang.
  @Test(.enabled(if: Kernel.hasMove && Kernel.hasPoison, "needs UFFDIO_MOVE (Linux 6.8) and UFFDIO_POISON (Linux 6.6)"))
  func unresolvableFaultIsPoisonedByDefault() async throws {
    await #expect(processExitsWith: .signal(SIGBUS)) {
      let uffd = try Userfaultfd(options: .nonBlocking)
      let hole = try AnonymousMemory(length: PageSize.base)
      let area = try AnonymousMemory(length: PageSize.base)
      let source = Address(hole.baseAddress)
      let server = try FaultServer(uffd: uffd) { _ in .move(from: source) }
      try server.register(area.baseAddress, length: area.length)
      #expect(server.failureAction == .poison)
      _ = area.baseAddress.load(as: UInt8.self)
      exit(0)  // not reached: the load raises SIGBUS
    }
  }

  @Test func registerAfterStopIsRefused() throws {
    let (server, area) = try serve { _ in .zeroPage }
    server.stop()
    #expect(throws: UserfaultfdError.invalidArgument(.register, .serverStopped)) {
      try server.register(area.baseAddress, length: area.length)
    }
  }

  /// stop() releases threads waiting on ranges registered on the handle directly, too.
  @Test func stopReleasesWaitersOnRangesRegisteredDirectly() throws {
    let uffd = try Userfaultfd(options: .nonBlocking)
    let area = try AnonymousMemory(length: page)
    let server = try FaultServer(uffd: uffd) { _ in .later }
    try uffd.register(area.baseAddress, length: area.length, mode: .missing)
    let target = Address(area.baseAddress)
    let toucher = TestThread { _ = target.mapped.load(as: UInt8.self) }
    #expect(eventually { server.statistics.retries > 0 }, "the fault is pending")
    server.stop()
    #expect(toucher.join(), "stop released the waiter")
  }

  /// Dropping a server without stop() stops it too, and releases its waiters.
  @Test func droppingAServerStopsIt() throws {
    let uffd = try Userfaultfd(options: .nonBlocking)
    let area = try AnonymousMemory(length: page)
    let target = Address(area.baseAddress)
    var server: FaultServer? = try FaultServer(uffd: uffd) { _ in .later }
    try server?.register(area.baseAddress, length: area.length)
    let toucher = TestThread { _ = target.mapped.load(as: UInt8.self) }
    #expect(eventually { (server?.statistics.retries ?? 1) > 0 })
    server = nil
    #expect(toucher.join(), "the dropped server released the waiter")
  }

  /// A server whose handle is closed refuses to start.
  @Test func serverOnAClosedHandleIsRefused() throws {
    let uffd = try Userfaultfd(options: .nonBlocking)
    uffd.close()
    #expect(throws: UserfaultfdError.closed(.readEvents)) { try FaultServer(uffd: uffd) { _ in .zeroPage } }
  }

  /// Issue: with EVENT_FORK, a thread forking while the server handled faults deadlocked (the
  /// server allocated between reads while the forking thread held malloc's locks).
  /// Waits for a forking thread: 60 s for all its forks, then, told to stop, up to 5 min for the
  /// fork under way. The reader of fork events must keep reading until the forker is out: a fork
  /// waits in the kernel for its event to be read while holding malloc's locks, so stopping the
  /// reader first (as a plain timed-out join followed by the test's clean-up did, under a slow qemu
  /// guest) would leave that fork, and every thread that then allocates, waiting for good.
  static func joinForker(_ forker: TestThread, stop: borrowing Atomic<Bool>) -> Bool {
    if forker.join(seconds: 60) { return true }
    stop.store(true, ordering: .relaxed)
    _ = forker.join(seconds: 300)
    return false
  }

  /// Issue: a fork elsewhere in the process while a server stopped waited for a fork event that no
  /// one would read (the serving thread had stopped before the ranges were unregistered), and
  /// `stop()`'s own unregistering allocated under the forking thread's malloc locks: both waited
  /// for good. Servers are started and stopped over and over while another thread keeps forking;
  /// in a child process with an alarm, so a deadlock ends as SIGALRM instead of hanging the run.
  @Test func stoppingServersWhileAnotherThreadForksNeverDeadlocks() async {
    await #expect(processExitsWith: .success) {
      alarm(120)
      let stopForking = Atomic<Bool>(false)
      let forks = Atomic<Int>(0)
      let forker = Thread {
        while !stopForking.load(ordering: .relaxed) {
          if cuffd_test_fork_and_reap() == 0 { forks.wrappingAdd(1, ordering: .relaxed) }
        }
      }
      forker.start()
      for _ in 0..<300 {
        guard let uffd = try? Userfaultfd(features: [.eventFork], options: .nonBlocking),
              let area = try? AnonymousMemory(length: 4 * PageSize.base),
              let server = try? FaultServer(uffd: uffd, resolver: { _ in .zeroPage }) else { exit(3) }
        guard (try? server.register(area.baseAddress, length: area.length)) != nil else { exit(4) }
        _ = area.baseAddress.load(as: UInt8.self)
        server.stop()
        uffd.close()
      }
      stopForking.store(true, ordering: .relaxed)
      while forks.load(ordering: .relaxed) == 0 { usleep(1000) }
      exit(0)
    }
  }

  /// Issue: registering on a served handle allocated while holding the lock the serving thread
  /// takes for each fault; with a fork waiting for its event (and holding malloc's locks), the
  /// registering thread blocked in malloc, the serving thread on the lock, the fork on the
  /// serving thread. Faults, forks and registrations race here; in a child with an alarm.
  @Test func registeringWhileServingAndForkingNeverDeadlocks() async {
    await #expect(processExitsWith: .success) {
      alarm(120)
      guard let uffd = try? Userfaultfd(features: [.eventFork], options: .nonBlocking),
            let area = try? AnonymousMemory(length: 16 * PageSize.base),
            let spare = try? AnonymousMemory(length: 64 * PageSize.base),
            let server = try? FaultServer(uffd: uffd, resolver: { _ in .zeroPage }),
            (try? server.register(area.baseAddress, length: area.length)) != nil else { exit(3) }
      let stop = Atomic<Bool>(false)
      let base = Address(area.baseAddress)
      let toucher = Thread {
        while !stop.load(ordering: .relaxed) {
          for index in 0..<16 { _ = (base.mapped + index * PageSize.base).load(as: UInt8.self) }
          _ = madvise(base.mapped, 16 * PageSize.base, MADV_DONTNEED)
        }
      }
      let forker = Thread {
        while !stop.load(ordering: .relaxed) { _ = cuffd_test_fork_and_reap() }
      }
      toucher.start()
      forker.start()
      // Registering page by page and unregistering grows and shrinks the table (allocations).
      for _ in 0..<200 {
        for index in stride(from: 0, to: 64, by: 2) {
          _ = try? uffd.register(spare.baseAddress + index * PageSize.base, length: PageSize.base, mode: .missing)
        }
        try? uffd.unregister(spare.baseAddress, length: spare.length)
      }
      stop.store(true, ordering: .relaxed)
      usleep(100_000)
      server.stop()
      uffd.close()
      exit(server.statistics.resolved > 0 ? 0 : 5)
    }
  }

  /// Issue: a read that found nothing pending boxed its EAGAIN in an existential (swift-system's
  /// `Errno.~=(Errno, any Error)` behind the pattern `.failure(.resourceTemporarilyUnavailable)`:
  /// malloc, then free). The kernel queues a fork event only after copying the address space,
  /// while glibc's fork already holds malloc's locks, so an empty read in that window blocked in
  /// malloc and the fork waited for that very reader (Linux 5.10 under qemu, host loaded: 3 of 28
  /// runs of the two fork tests above hung). Here a fork is held on purpose (its event waits on a
  /// handle nobody reads until the end), and meanwhile a loop of empty reads on another handle
  /// must finish and a server must resolve a fault. Their threads are fresh: a thread's first
  /// malloc sets up its cache under the arena lock, so any allocation there blocks for sure. In a
  /// child with an alarm; the fork is released either way, so a failure ends instead of hanging.
  @Test func emptyReadsAndServingNeedNoMallocWhileAForkHoldsItsLocks() async {
    await #expect(processExitsWith: .success) {
      alarm(60)
      guard let held = try? Userfaultfd(features: [.eventFork], options: .nonBlocking),
            let heldArea = try? AnonymousMemory(length: PageSize.base),
            (try? held.register(heldArea.baseAddress, length: heldArea.length, mode: .missing)) != nil,
            let heldBuffer = try? EventBuffer(capacity: 4),
            let quiet = try? Userfaultfd(options: .nonBlocking),
            let buffer = try? EventBuffer(capacity: 4),
            let served = try? Userfaultfd(options: .nonBlocking),
            let area = try? AnonymousMemory(length: PageSize.base),
            let server = try? FaultServer(uffd: served, resolver: { _ in .zeroPage }),
            (try? server.register(area.baseAddress, length: area.length)) != nil else { exit(3) }
      // The read path's runtime metadata is instantiated once per process, here, not under the fork.
      _ = try? quiet.readEvents(into: buffer)
      let go = Atomic<Bool>(false)
      let emptyReads = Atomic<Int>(0)
      let touched = Atomic<Bool>(false)
      let target = Address(area.baseAddress)
      guard let reader = try? DedicatedThread({
              while !go.load(ordering: .acquiring) { sched_yield() }
              var count = 0
              while count < 100 {
                guard let read = try? quiet.readEvents(into: buffer), read == 0 else { return }
                count += 1
              }
              emptyReads.store(count, ordering: .releasing)
            }),
            let toucher = try? DedicatedThread({
              while !go.load(ordering: .acquiring) { sched_yield() }
              _ = target.mapped.load(as: UInt8.self)
              touched.store(true, ordering: .releasing)
            }) else { exit(4) }
      guard let forker = try? DedicatedThread({ _ = cuffd_test_fork_and_reap() }) else { exit(4) }
      // Once its event is pending the fork sits in the kernel holding malloc's locks.
      let forkHeld = waitWithoutAllocating(seconds: 20) { hasPendingEvent(held) }
      go.store(true, ordering: .releasing)
      let readsDone = forkHeld && waitWithoutAllocating(seconds: 5) { emptyReads.load(ordering: .acquiring) == 100 }
      let faultServed = forkHeld && waitWithoutAllocating(seconds: 5) { touched.load(ordering: .acquiring) }
      // Release the fork (and whoever waited for malloc meanwhile).
      if let count = try? held.readEvents(into: heldBuffer), count > 0, let child = heldBuffer.forkedDescriptor(at: 0) {
        _ = close(child.rawValue)
      }
      forker.join()
      reader.join()
      toucher.join()
      server.stop()
      guard forkHeld else { exit(5) }
      exit(readsDone ? (faultServed ? 0 : 7) : 6)
    }
  }

  @Test func forksUnderEventForkNeverDeadlockTheServer() throws {
    let pages = 64
    let (server, area) = try serve(pages: pages, features: [.eventFork]) { _ in .zeroPage }
    defer {
      server.stop()
      server.uffd.close()  // never leave an EVENT_FORK descriptor behind for later forks
    }
    let base = Address(area.baseAddress)
    let stopTouching = Atomic<Bool>(false)
    let toucher = TestThread {
      while !stopTouching.load(ordering: .relaxed) {
        for index in 0..<pages { _ = (base.mapped + index * PageSize.base).load(as: UInt8.self) }
        _ = madvise(base.mapped, pages * PageSize.base, MADV_DONTNEED)
      }
    }
    let forks = Atomic<Int>(0)
    let stopForking = Atomic<Bool>(false)
    let forker = TestThread {
      for _ in 0..<30 where !stopForking.load(ordering: .relaxed) && cuffd_test_fork_and_reap() == 0 {
        forks.wrappingAdd(1, ordering: .relaxed)
      }
    }
    let forked = Self.joinForker(forker, stop: stopForking)
    #expect(forked, "30 forks finished (no deadlock with the server)")
    stopTouching.store(true, ordering: .relaxed)
    #expect(toucher.join())
    #expect(forks.load(ordering: .relaxed) == 30)
    #expect(eventually { server.statistics.otherEvents >= 30 }, "every fork event was read")
  }

  /// An allocation-free reader loop (readEvents(into:), fork descriptors taken without creating
  /// handles) survives 30 forks. (readEvents(maxCount:) returns an array: freeing it, or a forked
  /// child's handle, can meet the next fork holding malloc's locks, which a CI run did. The loop's
  /// own code runs once on a page fault first: in an unoptimised build, the first run of any Swift
  /// code allocates runtime metadata.)
  @Test func readEventsLoopSurvivesForks() throws {
    let uffd = try Userfaultfd(features: [.eventFork], options: .nonBlocking)
    defer { uffd.close() }  // never leave an EVENT_FORK descriptor behind for later forks
    let area = try AnonymousMemory(length: page)
    try uffd.register(area.baseAddress, length: area.length, mode: .missing)
    let buffer = try EventBuffer(capacity: 16)
    let stopReading = Atomic<Bool>(false)
    let forkEvents = Atomic<Int>(0)
    let faults = Atomic<Int>(0)
    let reader = TestThread {
      var descriptor = pollfd(fd: uffd.fileDescriptor.rawValue, events: Int16(POLLIN), revents: 0)
      while !stopReading.load(ordering: .relaxed) {
        descriptor.revents = 0
        _ = poll(&descriptor, 1, 10)
        guard let count = try? uffd.readEvents(into: buffer) else { continue }
        for index in 0..<count {
          if let child = buffer.forkedDescriptor(at: index) {
            _ = close(child.rawValue)
            forkEvents.wrappingAdd(1, ordering: .relaxed)
          } else if case .pageFault(let fault) = buffer.event(at: index, of: uffd), let target = fault.pageAddress.pointer {
            try? uffd.zeroPage(target, length: PageSize.base)
            faults.wrappingAdd(1, ordering: .relaxed)
          }
        }
      }
    }
    let target = Address(area.baseAddress)
    let toucher = TestThread { _ = target.mapped.load(as: UInt8.self) }
    #expect(toucher.join(), "the warm-up fault was served")
    #expect(eventually { faults.load(ordering: .relaxed) == 1 }, "the reader counted it (after waking the toucher)")
    let stopForking = Atomic<Bool>(false)
    let forker = TestThread {
      for _ in 0..<30 where !stopForking.load(ordering: .relaxed) { _ = cuffd_test_fork_and_reap() }
    }
    let forked = Self.joinForker(forker, stop: stopForking)
    #expect(forked, "30 forks finished")
    #expect(eventually { forkEvents.load(ordering: .relaxed) == 30 })
    // Unregistered while the reader still reads: a fork anywhere in the process from here on
    // no longer waits for this handle's reader.
    try uffd.unregister(area.baseAddress, length: area.length)
    stopReading.store(true, ordering: .relaxed)
    #expect(reader.join())
  }
}
}
