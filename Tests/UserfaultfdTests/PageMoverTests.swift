import CUserfaultfdTestSupport
import Foundation
import Synchronization
import Testing
@testable import Userfaultfd

/// The logical move: policies, reports, the atomic copy fallback, batching and huge pages.
extension KernelTests {
@Suite("Logical move (PageMover)", .enabled(if: Kernel.hasMove, "needs UFFDIO_MOVE (Linux 6.8+)"))
struct PageMoverTests {
  let page = PageSize.base

  struct Setup {
    let uffd: Userfaultfd
    let source: AnonymousMemory
    let destination: AnonymousMemory
    var mover: PageMover { PageMover(uffd) }
  }

  func setup(pages: Int, alignment: Int = PageSize.base, sourceSharing: AnonymousMemory.Sharing = .private,
             destinationProtection: AnonymousMemory.Protection = .readWrite) throws -> Setup {
    let uffd = try Userfaultfd()
    let source = try AnonymousMemory(length: pages * page, alignment: alignment, sharing: sourceSharing)
    let destination = try AnonymousMemory(length: pages * page, alignment: alignment,
                                          protection: destinationProtection)
    try uffd.register(destination.baseAddress, length: destination.length, mode: .missing)
    return Setup(uffd: uffd, source: source, destination: destination)
  }

  func stopped(_ error: UserfaultfdError?) -> MoveReport? {
    if case .moveStopped(let report)? = error { return report }
    return nil
  }

  @Test func batchesAreCutByMaxPagesAndTwoMiBBoundaries() throws {
    let pages = 1024  // 4 MiB, 2 MiB-aligned: two 2 MiB source windows
    let s = try setup(pages: pages, alignment: PageSize.huge)
    try s.source.advise(.noHugePage)
    try s.source.advise(.populateWrite)
    let defaults = try s.mover.move(from: s.source.baseAddress, to: s.destination.baseAddress,
                                    length: pages * page)
    #expect(defaults.moveIoctls == 2)
    // And back in 64-page batches: 16 ioctls.
    try s.uffd.register(s.source.baseAddress, length: s.source.length, mode: .missing)
    var policy = MovePolicy.strict
    policy.maxPagesPerIoctl = 64
    let batched = try s.mover.move(from: s.destination.baseAddress, to: s.source.baseAddress,
                                   length: pages * page, policy: policy)
    #expect(batched.moveIoctls == 16)
    #expect(batched.bytesMoved == pages * page)
  }

  @Test func copyFallbackCopiesBusyPagesAndEmptiesTheSource() throws {
    let s = try setup(pages: 8)
    for index in 0..<8 { fill(s.source.baseAddress + index * page, seed: UInt64(100 + index)) }
    let child = cuffd_test_fork_holder()
    try #require(child > 0)
    defer { _ = cuffd_test_kill_and_wait(child) }
    fill(s.source.baseAddress + 5 * page, seed: 105)  // page 5 unshared: it moves zero-copy
    var policy = MovePolicy.copyFallback
    policy.recordPages = true
    let report = try s.mover.move(from: s.source.baseAddress, to: s.destination.baseAddress,
                                  length: 8 * page, policy: policy)
    #expect(report.isComplete)
    #expect(report.bytesMoved == page)
    #expect(report.bytesCopied == 7 * page)
    #expect(report.runs == [
      PageRun(outcome: .copied, firstPage: 0, count: 5), PageRun(outcome: .moved, firstPage: 5, count: 1),
      PageRun(outcome: .copied, firstPage: 6, count: 2),
    ])
    #expect(report.busy.allSatisfy { $0.reason == .sharedWithForkedChild })
    #expect(report.busy.map(\.pages).reduce(0, +) == 7)
    for index in 0..<8 {
      #expect(holds(s.destination.baseAddress + index * page, seed: UInt64(100 + index)))
    }
    #expect(isZero(s.source.baseAddress, length: 8 * page), "the source is empty, as after MOVE")
  }

  /// Writers increment counters in the source while every page goes through the copy fallback
  /// (MOVE forced off). Each increment is one atomic instruction, so it lands in exactly one
  /// physical page: before the take it travels to the destination, after it the source gets a fresh
  /// page. Destination plus source counters must equal the increments made: no write lost.
  @Test func copyFallbackLosesNoConcurrentWrite() throws {
    let pages = 256
    let s = try setup(pages: pages)
    try s.source.advise(.populateWrite)
    let words = pages * page / 8
    let source = Address(s.source.baseAddress)
    let running = Atomic<Bool>(true)
    let warmedUp = Atomic<Int>(0)
    let counts = Mutex<[Int]>([])
    let writers = (0..<2).map { writer in
      TestThread {
        var made = 0
        defer { counts.withLock { $0.append(made) } }
        var state = UInt64(writer + 1) &* 0x9E37_79B9_7F4A_7C15
        let base = source.mapped.assumingMemoryBound(to: UInt64.self)
        while running.load(ordering: .relaxed) || made < 10_000 {
          state ^= state << 13; state ^= state >> 7; state ^= state << 17
          cuffd_test_atomic_increment(UnsafeMutablePointer(mutating: base + Int(state % UInt64(words))))
          made += 1
          if made == 1000 { warmedUp.add(1, ordering: .releasing) }
        }
      }
    }
    // Both writers are writing before the pages are taken (no assumption about scheduling).
    while warmedUp.load(ordering: .acquiring) < 2 { sched_yield() }
    var policy = MovePolicy.copyFallback
    policy.maxPagesPerIoctl = 4
    let report = try PageMover(s.uffd, usingMove: false).move(
      from: s.source.baseAddress, to: s.destination.baseAddress, length: pages * page, policy: policy)
    running.store(false, ordering: .relaxed)
    for writer in writers { #expect(writer.join()) }
    #expect(report.isComplete)
    #expect(report.bytesMoved == 0)
    #expect(report.bytesCopied == pages * page)
    let made = counts.withLock { $0.reduce(0, +) }
    func total(_ memory: AnonymousMemory) -> Int {
      let base = memory.baseAddress.assumingMemoryBound(to: UInt64.self)
      return (0..<words).reduce(0) { $0 + Int(base[$1]) }
    }
    #expect(total(s.destination) + total(s.source) == made)
    #expect(total(s.destination) > 0)
  }

  @Test func withoutMoveStrictPoliciesSayWhyAndCopyFallbackCopiesEverything() throws {
    let s = try setup(pages: 4)
    for index in 0..<4 { fill(s.source.baseAddress + index * page, seed: UInt64(index)) }
    let noMove = PageMover(s.uffd, usingMove: false)
    #expect(!noMove.usesMove)
    for policy in [MovePolicy.strict, .allowSourceHoles] {
      let error = #expect(throws: UserfaultfdError.self) {
        _ = try noMove.move(from: s.source.baseAddress, to: s.destination.baseAddress, length: 4 * page,
                            policy: policy)
      }
      #expect({ if case .notSupported(.move, _)? = error { true } else { false } }(), "\(String(describing: error))")
    }
    #expect(holds(s.source.baseAddress, seed: 0))
    let report = try noMove.move(from: s.source.baseAddress, to: s.destination.baseAddress,
                                 length: 4 * page, policy: .copyFallback)
    #expect(report.bytesCopied == 4 * page)
    #expect(report.moveIoctls == 0)
    #expect(report.copyIoctls >= 1)
    for index in 0..<4 { #expect(holds(s.destination.baseAddress + index * page, seed: UInt64(index))) }
    #expect(isZero(s.source.baseAddress, length: 4 * page))
  }

  @Test func alignedTransparentHugePagesMoveAsWholePMDs() throws {
    let huge = PageSize.huge
    let s = try setup(pages: 4 * huge / page, alignment: huge)
    try s.source.advise(.hugePage)
    try s.source.advise(.populateWrite)
    for index in 0..<4 { fill(s.source.baseAddress + index * huge, seed: UInt64(index), length: huge) }
    let before = try #require(anonHugePages(containing: UInt(bitPattern: s.source.baseAddress)))
    try #require(before >= 4 * huge, "transparent huge pages unavailable here (AnonHugePages \(before))")
    var policy = MovePolicy.strict
    policy.inspectHugePages = true
    let report = try s.mover.move(from: s.source.baseAddress, to: s.destination.baseAddress,
                                  length: 4 * huge, policy: policy)
    #expect(report.moveIoctls == 4, "one ioctl per 2 MiB")
    #expect(report.hugePageMoves == 4, "each a whole PMD (kpageflags)")
    let after = try #require(anonHugePages(containing: UInt(bitPattern: s.destination.baseAddress)))
    #expect(after == 4 * huge, "the destination is mapped by huge pages, not split")
    for index in 0..<4 { #expect(holds(s.destination.baseAddress + index * huge, seed: UInt64(index), length: huge)) }
  }

  /// While a remove event is pending (MADV_DONTNEED on a registered range, event not yet read),
  /// MOVE usually fails with EAGAIN and no progress; the mover backs off and retries until a reader
  /// has drained the event, then completes with every page in place. (Seen here: in rare runs the
  /// kernel let the MOVE through at once; the move must be complete and correct either way.)
  @Test func retriesWhileARemoveEventIsPending() throws {
    let uffd = try Userfaultfd(features: [.eventRemove], options: .nonBlocking)
    let source = try AnonymousMemory(length: 8 * page)
    let destination = try AnonymousMemory(length: 16 * page)
    try uffd.register(destination.baseAddress, length: destination.length, mode: .missing)
    for index in 0..<8 { fill(source.baseAddress + index * page, seed: UInt64(70 + index)) }
    // A madvise on the destination's second half raises a remove event and waits until it is read.
    let madviser = TestThread { try? destination.advise(.dontNeed, offset: 8 * PageSize.base, length: 8 * PageSize.base) }
    try #require(eventually { hasPendingEvent(uffd) }, "the remove event is pending")
    // While the event is unread the move cannot complete: every attempt gets EAGAIN.
    let result = Mutex<MoveReport?>(nil)
    let sourceAddress = Address(source.baseAddress), destinationAddress = Address(destination.baseAddress)
    let mover = TestThread {
      let report = try? PageMover(uffd).move(
        from: sourceAddress.mapped, to: destinationAddress.mapped, length: 8 * PageSize.base)
      result.withLock { $0 = report }
    }
    usleep(100_000)
    let blocked = !mover.isFinished
    _ = try awaitEvents(uffd)
    #expect(mover.join())
    #expect(madviser.join())
    let report = try #require(result.withLock { $0 })
    #expect(report.isComplete)
    #expect(report.bytesMoved == 8 * page)
    if blocked {
      #expect(report.moveIoctls > 1, "blocked by the pending event means it retried after EAGAIN")
    } else {
      #expect(report.moveIoctls == 1, "not blocked means the kernel let the first MOVE through")
    }
    for index in 0..<8 { #expect(holds(destination.baseAddress + index * page, seed: UInt64(70 + index))) }
  }

  @Test func badInputIsATypedErrorAndTheSourceIsIntact() throws {
    let s = try setup(pages: 4)
    for index in 0..<4 { fill(s.source.baseAddress + index * page, seed: UInt64(50 + index)) }
    func intact() -> Bool { (0..<4).allSatisfy { holds(s.source.baseAddress + $0 * page, seed: UInt64(50 + $0)) } }
    let mover = s.mover
    // Overlap, misalignment, overflow: rejected before any system call.
    let overlap = #expect(throws: UserfaultfdError.self) {
      _ = try mover.move(from: s.source.baseAddress, to: s.source.baseAddress + page, length: 2 * page)
    }
    #expect({ if case .invalidArgument(.move, .overlap)? = overlap { true } else { false } }())
    let unaligned = #expect(throws: UserfaultfdError.self) {
      _ = try mover.move(from: s.source.baseAddress + 1, to: s.destination.baseAddress, length: page)
    }
    #expect({ if case .invalidArgument(.move, _)? = unaligned { true } else { false } }())
    let overflow = #expect(throws: UserfaultfdError.self) {
      _ = try mover.move(from: s.source.baseAddress, to: s.destination.baseAddress, length: Int.max - page + 1)
    }
    #expect({ if case .invalidArgument(.move, _)? = overflow { true } else { false } }())
    // Destination partly populated: found before anything moves.
    let other = try AnonymousMemory(length: page)
    fill(other.baseAddress, seed: 9)
    try s.uffd.move(from: other.baseAddress, to: s.destination.baseAddress + 2 * page, length: page)
    let populated = #expect(throws: UserfaultfdError.self) {
      _ = try mover.move(from: s.source.baseAddress, to: s.destination.baseAddress, length: 4 * page)
    }
    let populatedPage = Address(s.destination.baseAddress + 2 * page)
    #expect(populated == .invalidArgument(.move, .destinationPopulated(page: 2, address: populatedPage)))
    // Unregistered destination.
    let unregistered = try AnonymousMemory(length: 4 * page)
    let notRegistered = #expect(throws: UserfaultfdError.self) {
      _ = try mover.move(from: s.source.baseAddress, to: unregistered.baseAddress, length: 4 * page)
    }
    #expect(stopped(notRegistered)?.stop?.failure?.errno == .invalidArgument)
    #expect(stopped(notRegistered)?.bytesDone == 0)
    #expect(intact())
  }

  @Test func differentProtectionsOrSharedSourceAreRefusedWithNothingMoved() throws {
    let readOnly = try setup(pages: 2, destinationProtection: .read)
    fill(readOnly.source.baseAddress, seed: 60)
    let protections = #expect(throws: UserfaultfdError.self) {
      _ = try readOnly.mover.move(from: readOnly.source.baseAddress, to: readOnly.destination.baseAddress,
                                  length: 2 * page, policy: .copyFallback)
    }
    #expect(stopped(protections)?.stop?.failure?.errno == .invalidArgument)
    #expect(stopped(protections)?.bytesDone == 0)
    #expect(holds(readOnly.source.baseAddress, seed: 60))

    let shared = try setup(pages: 2, sourceSharing: .shared)
    fill(shared.source.baseAddress, seed: 61)
    let sharedError = #expect(throws: UserfaultfdError.self) {
      _ = try shared.mover.move(from: shared.source.baseAddress, to: shared.destination.baseAddress,
                                length: 2 * page)
    }
    #expect(stopped(sharedError)?.stop?.failure?.errno == .invalidArgument)
    #expect(holds(shared.source.baseAddress, seed: 61))
  }
}
}
