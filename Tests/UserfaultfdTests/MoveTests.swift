import CUserfaultfdTestSupport
import Foundation
import SystemPackage
import Testing
import Userfaultfd

/// Every UFFDIO_MOVE outcome, on the real kernel.
extension KernelTests {
@Suite("UFFDIO_MOVE", .enabled(if: Kernel.hasMove, "needs UFFDIO_MOVE (Linux 6.8+)"))
struct MoveTests {
  let page = PageSize.base

  /// Source pages at `source`, destination pages registered in MISSING mode.
  struct Areas {
    let uffd: Userfaultfd
    let source: AnonymousMemory
    let destination: AnonymousMemory
  }

  func areas(pages: Int, features: Features = [], sourceSharing: AnonymousMemory.Sharing = .private) throws -> Areas {
    let uffd = try Userfaultfd(features: features, options: .nonBlocking)
    let source = try AnonymousMemory(length: pages * page, sharing: sourceSharing)
    let destination = try AnonymousMemory(length: pages * page)
    try uffd.register(destination.baseAddress, length: destination.length, mode: .missing)
    return Areas(uffd: uffd, source: source, destination: destination)
  }

  @Test func populatedDestinationIsEEXIST() throws {
    let a = try areas(pages: 2)
    fill(a.source.baseAddress, seed: 1)
    fill(a.source.baseAddress + page, seed: 2)
    try a.uffd.move(from: a.source.baseAddress, to: a.destination.baseAddress, length: page)
    // The destination's first page is now populated: moving onto it again fails, nothing moves.
    let error = #expect(throws: UserfaultfdError.self) {
      try a.uffd.move(from: a.source.baseAddress + page, to: a.destination.baseAddress, length: page)
    }
    let f = try #require(error.flatMap(failure))
    #expect(f.errno == .fileExists)
    #expect(f.bytesDone == 0)
    #expect(f.kind == .alreadyPresent)
    #expect(holds(a.source.baseAddress + page, seed: 2), "the refused page stays in the source")
  }

  @Test func holeAfterSomePagesIsEAGAINWithBytesMovedThenResumeGivesENOENT() throws {
    let a = try areas(pages: 4)
    fill(a.source.baseAddress, seed: 10)
    fill(a.source.baseAddress + page, seed: 11)
    fill(a.source.baseAddress + 3 * page, seed: 13)  // page 2 is a hole
    let error = #expect(throws: UserfaultfdError.self) {
      try a.uffd.move(from: a.source.baseAddress, to: a.destination.baseAddress, length: 4 * page)
    }
    let f = try #require(error.flatMap(failure))
    #expect(f.errno == .resourceTemporarilyUnavailable)
    #expect(f.bytesDone == 2 * page)
    #expect(f.isPartial)
    #expect(holds(a.destination.baseAddress, seed: 10))
    #expect(holds(a.destination.baseAddress + page, seed: 11))
    #expect(holds(a.source.baseAddress + 3 * page, seed: 13), "pages after the stop stay in the source")
    // Resuming where it stopped tells the real reason.
    let resumed = #expect(throws: UserfaultfdError.self) {
      try a.uffd.move(
        from: a.source.baseAddress + f.bytesDone, to: a.destination.baseAddress + f.bytesDone,
        length: 4 * page - f.bytesDone)
    }
    #expect(resumed.flatMap(failure)?.errno == .noSuchFileOrDirectory)
  }

  @Test func dontForkSourceStillMovesAfterFork() throws {
    let a = try areas(pages: 1)
    try a.source.advise(.dontFork)
    fill(a.source.baseAddress, seed: 31)
    let child = cuffd_test_fork_holder()
    try #require(child > 0)
    defer { _ = cuffd_test_kill_and_wait(child) }
    try a.uffd.move(from: a.source.baseAddress, to: a.destination.baseAddress, length: page)
    #expect(holds(a.destination.baseAddress, seed: 31))
  }

  @Test func unregisteredDestinationIsEINVAL() throws {
    let uffd = try Userfaultfd()
    let source = try AnonymousMemory(length: page)
    let destination = try AnonymousMemory(length: page)
    fill(source.baseAddress, seed: 40)
    let error = #expect(throws: UserfaultfdError.self) {
      try uffd.move(from: source.baseAddress, to: destination.baseAddress, length: page)
    }
    #expect(error.flatMap(failure)?.errno == .invalidArgument)
    #expect(holds(source.baseAddress, seed: 40))
  }

  @Test func unalignedAndEmptyRangesAreRejectedBeforeTheKernel() throws {
    let a = try areas(pages: 2)
    fill(a.source.baseAddress, seed: 42)
    let misaligned = UserfaultfdError.invalidArgument(
      .move, .misaligned(role: .source, address: Address(a.source.baseAddress + 8), pageSize: page))
    #expect(throws: misaligned) {
      try a.uffd.move(from: a.source.baseAddress + 8, to: a.destination.baseAddress, length: page)
    }
    let empty = #expect(throws: UserfaultfdError.self) {
      try a.uffd.move(from: a.source.baseAddress, to: a.destination.baseAddress, length: 0)
    }
    #expect({ if case .invalidArgument(.move, _)? = empty { true } else { false } }())
    let ragged = #expect(throws: UserfaultfdError.self) {
      try a.uffd.move(from: a.source.baseAddress, to: a.destination.baseAddress, length: page + 1)
    }
    #expect({ if case .invalidArgument(.move, _)? = ragged { true } else { false } }())
    let overlapping = #expect(throws: UserfaultfdError.self) {
      try a.uffd.move(from: a.destination.baseAddress, to: a.destination.baseAddress + page, length: 2 * page)
    }
    #expect({ if case .invalidArgument(.move, .overlap)? = overlapping { true } else { false } }())
    let wrapping = #expect(throws: UserfaultfdError.self) {
      try a.uffd.move(
        from: a.source.baseAddress, to: a.destination.baseAddress, length: Int.max & ~(PageSize.base - 1))
    }
    #expect({ if case .invalidArgument(.move, _)? = wrapping { true } else { false } }())
    #expect(holds(a.source.baseAddress, seed: 42), "nothing moved")
  }

  @Test func dontWakeLeavesTheFaultingThreadAsleepUntilWake() throws {
    let a = try areas(pages: 1)
    fill(a.source.baseAddress, seed: 50)
    let target = Address(a.destination.baseAddress)
    let seen = UnsafeMutablePointer<UInt64>.allocate(capacity: 1)
    defer { seen.deallocate() }
    let seenAddress = Address(UnsafeMutableRawPointer(seen))
    let reader = TestThread {
      seenAddress.mapped.storeBytes(of: target.mapped.load(as: UInt64.self), as: UInt64.self)
    }
    // Whatever fails below, release the reader before the memory it reads goes away.
    defer {
      try? a.uffd.unregister(a.destination.baseAddress, length: page)
      _ = reader.join()
    }
    let events = try awaitEvents(a.uffd)
    guard case .pageFault(let fault)? = events.first else {
      Issue.record("expected a page fault, got \(events)")
      return
    }
    #expect(fault.pageAddress == target)
    try a.uffd.move(from: a.source.baseAddress, to: a.destination.baseAddress, length: page, options: .dontWake)
    #expect(!reader.join(seconds: 0.2), "DONTWAKE: the reader must still be asleep")
    try a.uffd.wake(a.destination.baseAddress, length: page)
    #expect(reader.join(seconds: 10))
    #expect(seen.pointee == a.destination.baseAddress.load(as: UInt64.self))
    #expect(holds(a.destination.baseAddress, seed: 50))
  }
}
}
