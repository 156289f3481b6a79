import CUserfaultfdTestSupport
import Foundation
import Synchronization
import Testing
@testable import Userfaultfd

/// The first promise: no byte the caller had is ever dropped. Every page of a logical move ends in
/// the destination, in the source, or in the caller's hands (``MoveReport/returnedPages``), and
/// the report says which, page by page.
extension KernelTests {
@Suite("Guarantees: nothing lost")
struct NothingLostTests {
  let page = PageSize.base

  struct Setup {
    let uffd: Userfaultfd
    let source: AnonymousMemory
    let destination: AnonymousMemory
  }

  func setup(pages: Int, sourceSharing: AnonymousMemory.Sharing = .private) throws -> Setup {
    let uffd = try Userfaultfd()
    let source = try AnonymousMemory(length: pages * page, sharing: sourceSharing)
    let destination = try AnonymousMemory(length: pages * page)
    try uffd.register(destination.baseAddress, length: destination.length, mode: .missing)
    for index in 0..<pages { fill(source.baseAddress + index * page, seed: UInt64(index + 1)) }
    return Setup(uffd: uffd, source: source, destination: destination)
  }

  /// Where page `index` (seed `index + 1`) ended up, per the memory itself.
  enum Place: Equatable { case destination, source, returned, lost }

  func place(of index: Int, _ s: Setup, returned: ReturnedPages?) -> Place {
    let seed = UInt64(index + 1)
    // Missing pages are never read: the destination is registered and nobody serves its faults.
    let target = s.destination.baseAddress + index * page
    if isPopulated(target), holds(target, seed: seed) { return .destination }
    let origin = s.source.baseAddress + index * page
    if isPopulated(origin), holds(origin, seed: seed) { return .source }
    if let bytes = returned?.contents(ofPage: index), let base = bytes.baseAddress, holds(base, seed: seed) {
      return .returned
    }
    return .lost
  }

  /// The outcome the report gives each page (it must have recorded pages).
  func outcomes(_ report: MoveReport, pages: Int) -> [PageOutcome] {
    var result = [PageOutcome](repeating: .notAttempted, count: pages)
    for run in report.runs { for index in run.firstPage..<(run.firstPage + run.count) { result[index] = run.outcome } }
    return result
  }

  /// A copy-fallback move of `pages` pages, MOVE off, `batch` pages per ioctl, pages recorded:
  /// the report, whether it completed or stopped, or the error when it threw anything else.
  func fallbackMove(_ s: Setup, pages: Int, batch: Int) -> (MoveReport?, UserfaultfdError?) {
    var policy = MovePolicy.copyFallback
    policy.recordPages = true
    policy.maxPagesPerIoctl = batch
    do {
      return (try PageMover(s.uffd, usingMove: false).move(
        from: s.source.baseAddress, to: s.destination.baseAddress, length: pages * page, policy: policy), nil)
    } catch .moveStopped(let stopped) {
      return (stopped, nil)
    } catch {
      return (nil, error)
    }
  }

  /// Every page is where the report says: copied ones in the destination, not attempted or
  /// already-present ones in the source, returned ones in `returnedPages`; none lost.
  func expectAccounted(_ report: MoveReport, _ s: Setup, pages: Int, round: Int) {
    let said = outcomes(report, pages: pages)
    for index in 0..<pages {
      let actual = place(of: index, s, returned: report.returnedPages)
      #expect(actual != .lost, "round \(round): page \(index) lost")
      switch said[index] {
      case .copied, .moved: #expect(actual == .destination, "round \(round): page \(index)")
      case .notAttempted, .alreadyPresent: #expect(actual == .source, "round \(round): page \(index)")
      case .returnedToCaller: #expect(actual == .returned, "round \(round): page \(index)")
      default: Issue.record("round \(round): page \(index) said \(said[index])")
      }
    }
  }

  /// Issue: with MOVE off, a populated destination page 2 and the pre-check off, the fallback took
  /// pages 0-7, copied 0-1, then dropped 3-7 while reporting them "not attempted".
  @Test(arguments: Kernel.hasMove ? [false, true] : [false])  // MOVE on needs Linux 6.8
  func copyFallbackPutsBackEveryPageItDidNotCopy(useMove: Bool) throws {
    let s = try setup(pages: 8)
    try s.uffd.zeroPage(s.destination.baseAddress + 2 * page, length: page)
    var policy = MovePolicy.copyFallback
    policy.checkDestinationEmpty = false
    policy.recordPages = true
    let error = #expect(throws: UserfaultfdError.self) {
      _ = try PageMover(s.uffd, usingMove: useMove).move(
        from: s.source.baseAddress, to: s.destination.baseAddress, length: 8 * page, policy: policy)
    }
    guard let report = expectStopped(error) else { return }
    let said = outcomes(report, pages: 8)
    #expect(said[0] == (useMove ? .moved : .copied) && said[1] == said[0])
    #expect(said[2] == .alreadyPresent)
    for index in 0..<8 {
      let actual = place(of: index, s, returned: report.returnedPages)
      switch said[index] {
      case .moved, .copied: #expect(actual == .destination, "page \(index)")
      case .alreadyPresent, .notAttempted: #expect(actual == .source, "page \(index) said \(said[index])")
      case .returnedToCaller: #expect(actual == .returned, "page \(index)")
      default: Issue.record("page \(index): unexpected outcome \(said[index])")
      }
    }
  }

  /// The same stop with a writer hammering source page 5 the whole time: whatever the timing,
  /// every page is somewhere, and every increment the writer made is in the source's page 5 or
  /// in the returned copy of it.
  @Test func copyFallbackWithAWriterOnTheSourceLosesNoIncrement() throws {
    for _ in 0..<20 {
      let s = try setup(pages: 8)
      // Page 5 holds a counter in word 0 and the pattern elsewhere.
      let counterPage = s.source.baseAddress + 5 * page
      counterPage.storeBytes(of: 0 as UInt64, as: UInt64.self)
      try s.uffd.zeroPage(s.destination.baseAddress + 2 * page, length: page)
      let stopWriter = Atomic<Bool>(false)
      let increments = Atomic<UInt64>(0)
      let word = Address(counterPage)
      let writer = TestThread {
        let pointer = word.mapped.assumingMemoryBound(to: UInt64.self)
        while !stopWriter.load(ordering: .relaxed) {
          cuffd_test_atomic_increment(UnsafeMutablePointer(OpaquePointer(pointer)))
          increments.wrappingAdd(1, ordering: .relaxed)
        }
      }
      usleep(200)
      var policy = MovePolicy.copyFallback
      policy.checkDestinationEmpty = false
      policy.recordPages = true
      let error = #expect(throws: UserfaultfdError.self) {
        _ = try PageMover(s.uffd, usingMove: false).move(
          from: s.source.baseAddress, to: s.destination.baseAddress, length: 8 * page, policy: policy)
      }
      stopWriter.store(true, ordering: .relaxed)
      #expect(writer.join())
      guard let report = expectStopped(error) else { return }
      var counted = counterPage.load(as: UInt64.self)
      if let returned = report.returnedPages?.contents(ofPage: 5) {
        counted += returned.load(as: UInt64.self)
        #expect(outcomes(report, pages: 8)[5] == .returnedToCaller)
      }
      #expect(counted == increments.load(ordering: .relaxed), "every increment is in the source or returned")
      for index in [0, 1] { #expect(place(of: index, s, returned: nil) == .destination) }
      for index in [2, 3, 4, 6, 7] { #expect(place(of: index, s, returned: report.returnedPages) == .source) }
    }
  }

  /// Issue: closing the handle before a MOVE-off move took the first run into scratch and dropped it.
  @Test func closedHandleMovesNothingAndLosesNothing() throws {
    let s = try setup(pages: 8)
    s.uffd.close()
    for useMove in [false, true] {
      let error = #expect(throws: UserfaultfdError.self) {
        _ = try PageMover(s.uffd, usingMove: useMove).move(
          from: s.source.baseAddress, to: s.destination.baseAddress, length: 8 * page, policy: .copyFallback)
      }
      #expect(error == .closed(.move))
    }
    for index in 0..<8 { #expect(place(of: index, s, returned: nil) == .source) }
  }

  /// Issue: closing the handle while a copy fallback runs lost every page taken (40 of 40 rounds).
  @Test func closingTheHandleDuringACopyFallbackLosesNothing() throws {
    let pages = 256
    for round in 0..<40 {
      let s = try setup(pages: pages)
      let uffd = s.uffd
      let closer = TestThread {
        usleep(UInt32(50 + (round % 8) * 40))
        uffd.close()
      }
      let (report, error) = fallbackMove(s, pages: pages, batch: 16)
      #expect(closer.join())
      if let report {
        expectAccounted(report, s, pages: pages, round: round)
      } else {
        #expect(error == .closed(.move), "closed before it started: nothing taken")
        for index in 0..<pages { #expect(place(of: index, s, returned: nil) == .source) }
      }
    }
  }

  /// Issue: a copy fallback out of MAP_SHARED memory "succeeded" and left the data in both places.
  @Test(arguments: Kernel.hasMove ? [false, true] : [false])  // MOVE on needs Linux 6.8
  func sharedSourceIsRefusedBeforeAnythingIsTaken(useMove: Bool) throws {
    let s = try setup(pages: 8, sourceSharing: .shared)
    var policy = MovePolicy.copyFallback
    policy.recordPages = true
    let error = #expect(throws: UserfaultfdError.self) {
      _ = try PageMover(s.uffd, usingMove: useMove).move(
        from: s.source.baseAddress, to: s.destination.baseAddress, length: 8 * page, policy: policy)
    }
    guard let report = expectStopped(error) else { return }
    #expect(report.bytesDone == 0)
    #expect(report.stop?.cause == .sourceNotPrivateAnonymous(Address(s.source.baseAddress)))
    for index in 0..<8 {
      #expect(place(of: index, s, returned: nil) == .source)
      #expect(!isPopulated(s.destination.baseAddress + index * page))
    }
  }

  /// Issue: a copy fallback from an unmapped source reported a complete move of holes.
  @Test func unmappedSourceIsAnErrorNotAMoveOfHoles() throws {
    let uffd = try Userfaultfd()
    let destination = try AnonymousMemory(length: 8 * page)
    try uffd.register(destination.baseAddress, length: destination.length, mode: .missing)
    let hole = try unmappedRange(pages: 8)
    for useMove in [false, Kernel.hasMove] {
      let error = #expect(throws: UserfaultfdError.self) {
        _ = try PageMover(uffd, usingMove: useMove).move(
          from: hole, to: destination.baseAddress, length: 8 * page, policy: .copyFallback)
      }
      guard let report = expectStopped(error) else { continue }
      #expect(report.bytesDone == 0)
      #expect(report.stop?.cause == .sourceUnmapped(Address(hole)))
    }
  }

  /// Issue: a copy fallback into an unmapped destination retried for 2 s, then blamed EAGAIN.
  @Test func unmappedDestinationStopsAtOnceAndSaysSo() throws {
    let uffd = try Userfaultfd()
    let source = try AnonymousMemory(length: 8 * page)
    for index in 0..<8 { fill(source.baseAddress + index * page, seed: UInt64(index + 1)) }
    let hole = try unmappedRange(pages: 8)
    for useMove in [false, Kernel.hasMove] {
      let started = Date()
      let error = #expect(throws: UserfaultfdError.self) {
        _ = try PageMover(uffd, usingMove: useMove).move(
          from: source.baseAddress, to: hole, length: 8 * page, policy: .copyFallback)
      }
      #expect(Date().timeIntervalSince(started) < 1.5, "no 2 s of retries")
      guard let report = expectStopped(error) else { continue }
      #expect(report.stop?.cause == .destinationUnmapped(Address(hole)))
      for index in 0..<8 { #expect(holds(source.baseAddress + index * page, seed: UInt64(index + 1))) }
    }
  }

  /// Issue: a range spanning two mappings with the same protections (after MADV_DONTFORK on half,
  /// the README's own EBUSY remedy) stopped at offset 0 with EINVAL.
  @Test func moveSpanningTwoMappingsCompletes() throws {
    let s = try setup(pages: 16)
    try s.source.advise(.dontFork, offset: 8 * page, length: 8 * page)
    for useMove in [Kernel.hasMove, false] {
      let report = try PageMover(s.uffd, usingMove: useMove).move(
        from: s.source.baseAddress, to: s.destination.baseAddress, length: 16 * page,
        policy: useMove ? .strict : .copyFallback)
      #expect(report.isComplete)
      for index in 0..<16 { #expect(place(of: index, s, returned: nil) == .destination) }
      // Back again for the other mode: move the data to the source's place by hand.
      for index in 0..<16 {
        (s.source.baseAddress + index * page).copyMemory(from: s.destination.baseAddress + index * page, byteCount: page)
      }
      try s.uffd.unregister(s.destination.baseAddress, length: 16 * page)
      try s.destination.advise(.dontNeed)
      try s.uffd.register(s.destination.baseAddress, length: 16 * page, mode: .missing)
    }
  }

  /// A destination page resolved by a third party while the copy fallback runs: the move stops
  /// there, and every other page is in the destination or back in the source.
  @Test func destinationResolvedMeanwhileLosesNothing() throws {
    let pages = 128
    for round in 0..<20 {
      let s = try setup(pages: pages)
      let target = Address(s.destination.baseAddress)
      let uffd = s.uffd
      let third = TestThread {
        usleep(UInt32(20 + round * 10))
        try? uffd.zeroPage(target.mapped + (pages - 1 - round) * PageSize.base, length: PageSize.base)
      }
      let (report, error) = fallbackMove(s, pages: pages, batch: 8)
      #expect(third.join())
      guard let report else {
        // The third party was first: the pre-check refused the move before anything was taken.
        guard case .invalidArgument? = error else {
          Issue.record("unexpected \(String(describing: error))")
          continue
        }
        for index in 0..<pages where index != pages - 1 - round {
          #expect(place(of: index, s, returned: nil) == .source, "round \(round): page \(index)")
        }
        continue
      }
      expectAccounted(report, s, pages: pages, round: round)
    }
  }
}
}

/// A page-aligned range with nothing mapped in it (mapped, then unmapped). A later mmap may reuse
/// the range: make it after the test's other mappings, and use it at once.
func unmappedRange(pages: Int) throws -> UnsafeMutableRawPointer {
  let memory = try AnonymousMemory(length: pages * PageSize.base)
  let start = memory.baseAddress
  // Unmap by replacing the mapping's pages with nothing: the AnonymousMemory's own munmap later
  // hits an unmapped range, which munmap accepts.
  munmap(start, pages * PageSize.base)
  unmappedKeepAlive.withLock { $0.append(memory) }
  return start
}

/// Keeps the AnonymousMemory objects behind `unmappedRange` alive, so nothing maps into those
/// ranges again while a test uses them.
let unmappedKeepAlive = Mutex<[AnonymousMemory]>([])
