import CUserfaultfd
import CUserfaultfdTestSupport
import Foundation
import Synchronization
import Testing
import Userfaultfd

/// The fault server (handler thread, busy-poll) and SIGBUS mode, on the real kernel.
extension KernelTests {
@Suite("Fault service")
struct FaultServiceTests {
  let page = PageSize.base

  /// `threads` threads each read every page of a registered area in its own order; the server
  /// fills each from a source. Every read sees the right data; each page is mapped exactly once.
  func manyThreadsFault(configuration: FaultServer.Configuration, useMove: Bool) throws {
    let pages = 64, threads = 8
    let uffd = try Userfaultfd(options: .nonBlocking)
    let source = try AnonymousMemory(length: pages * page)
    let area = try AnonymousMemory(length: pages * page)
    for index in 0..<pages { fill(source.baseAddress + index * page, seed: UInt64(index)) }
    let sourceBase = Address(source.baseAddress)
    let areaBase = Address(area.baseAddress)
    let server = try FaultServer(uffd: uffd, configuration: configuration) { fault in
      let offset = fault.pageAddress - areaBase
      return useMove ? .move(from: sourceBase + offset) : .copy(from: sourceBase + offset)
    }
    defer { server.stop() }
    try server.register(area.baseAddress, length: area.length)
    let target = Address(area.baseAddress)
    let wrong = Atomic<Int>(0)
    let workers = (0..<threads).map { thread in
      TestThread {
        for step in 0..<pages {
          // Threads start at different pages and go opposite ways: same and different pages at once.
          let index = thread % 2 == 0 ? (step + thread * 8) % pages : (pages - 1 - step + thread * 8) % pages
          let words = (target.mapped + index * PageSize.base).assumingMemoryBound(to: UInt64.self)
          if words[0] != UInt64(index) &* 0x9E37_79B9_7F4A_7C15 { wrong.wrappingAdd(1, ordering: .relaxed) }
        }
      }
    }
    for worker in workers { #expect(worker.join(seconds: 30)) }
    #expect(wrong.load(ordering: .relaxed) == 0)
    for index in 0..<pages { #expect(holds(area.baseAddress + index * page, seed: UInt64(index))) }
    server.stop()  // Joins the server thread, so its counters are final.
    let statistics = server.statistics
    #expect(statistics.resolved == UInt64(pages), "each page mapped exactly once")
    #expect(statistics.failed == 0)
    if useMove { #expect(isZero(source.baseAddress, length: pages * page)) }
  }

  @Test func handlerThreadResolvesManyThreadsByCopy() throws {
    try manyThreadsFault(configuration: .init(), useMove: false)
  }

  @Test func handlerThreadResolvesManyThreadsByMove() throws {
    try manyThreadsFault(configuration: .init(), useMove: true)
  }

  @Test func busyPollResolvesManyThreads() throws {
    try manyThreadsFault(configuration: .init(busyPoll: true), useMove: true)
  }

  @Test func serverRefusesABlockingHandle() throws {
    let uffd = try Userfaultfd()
    #expect(throws: UserfaultfdError.self) { try FaultServer(uffd: uffd) { _ in .zeroPage } }
  }

  @Test func stopReleasesThreadsWaitingOnFaults() throws {
    let uffd = try Userfaultfd(options: .nonBlocking)
    let area = try AnonymousMemory(length: 4 * page)
    let server = try FaultServer(uffd: uffd) { _ in .later }  // Never resolves anything.
    try server.register(area.baseAddress, length: area.length)
    let target = Address(area.baseAddress)
    let waiters = (0..<4).map { index in
      TestThread { _ = (target.mapped + index * PageSize.base).load(as: UInt64.self) }
    }
    Thread.sleep(forTimeInterval: 0.1)
    #expect(waiters.allSatisfy { !$0.isFinished }, "nothing resolves their faults")
    server.stop()
    for waiter in waiters { #expect(waiter.join(seconds: 10), "released by stop()") }
    #expect(isZero(area.baseAddress, length: area.length))
    server.stop()  // Idempotent.
  }

  @Test func forkEventReachesTheHandlerAndTheAsyncSequence() async throws {
    let uffd = try Userfaultfd(features: [.eventFork], options: .nonBlocking)
    defer { uffd.close() }  // see EventTests: never leave an EVENT_FORK descriptor behind
    let area = try AnonymousMemory(length: page)
    let seen = Mutex<[String]>([])
    let server = try FaultServer(uffd: uffd, onEvent: { event in
      if case .fork(let child) = event {
        seen.withLock { $0.append("fork") }
        child.close()
      }
    }) { _ in .zeroPage }
    defer { server.stop() }
    try server.register(area.baseAddress, length: area.length)
    let child = cuffd_test_fork_holder()  // Blocks until the server has read the fork event.
    try #require(child > 0)
    defer { _ = cuffd_test_kill_and_wait(child) }
    #expect(eventually { seen.withLock { $0 } == ["fork"] })
    var iterator = server.events.makeAsyncIterator()
    let event = await iterator.next()
    guard case .fork? = event else {
      Issue.record("expected the fork event from the async sequence, got \(String(describing: event))")
      return
    }
  }

  @Test func removeAndUnmapEventsReachTheHandler() throws {
    let uffd = try Userfaultfd(features: [.eventRemove, .eventUnmap], options: .nonBlocking)
    let kinds = Mutex<[String]>([])
    let server = try FaultServer(uffd: uffd, onEvent: { event in
      switch event {
      case .remove: kinds.withLock { $0.append("remove") }
      case .unmap: kinds.withLock { $0.append("unmap") }
      default: break
      }
    }) { _ in .zeroPage }
    defer { server.stop() }
    var area: AnonymousMemory? = try AnonymousMemory(length: 2 * page)
    if let area {
      try server.register(area.baseAddress, length: area.length)
      _ = area.baseAddress.load(as: UInt64.self)  // Fault; zero page.
      try area.advise(.dontNeed)  // Waits until the server read the remove event.
    }
    area = nil  // munmap: waits until the server read the unmap event.
    #expect(eventually { kinds.withLock { $0 } == ["remove", "unmap"] })
  }

  // MARK: SIGBUS mode

  @Test(arguments: Kernel.hasMove ? [false, true] : [false])  // .move needs UFFDIO_MOVE (Linux 6.8)
  func sigbusModeResolvesInTheFaultingThread(useMove: Bool) throws {
    let uffd = try Userfaultfd(features: [.sigbus])
    let pages = 32
    let source = try AnonymousMemory(length: pages * page)
    let area = try AnonymousMemory(length: pages * page)
    for index in 0..<pages { fill(source.baseAddress + index * page, seed: UInt64(1000 + index)) }
    let before = SigbusRegion.resolvedCount
    let region = try SigbusRegion(
      uffd: uffd, start: area.baseAddress, length: area.length,
      source: useMove ? .move(from: source.baseAddress) : .copy(from: source.baseAddress))
    defer { region.close() }
    let target = Address(area.baseAddress)
    let readers = (0..<4).map { thread in
      TestThread {
        for step in 0..<pages {
          _ = (target.mapped + ((step + thread * 5) % pages) * PageSize.base).load(as: UInt64.self)
        }
      }
    }
    for reader in readers { #expect(reader.join(seconds: 30)) }
    for index in 0..<pages { #expect(holds(area.baseAddress + index * page, seed: UInt64(1000 + index))) }
    #expect(SigbusRegion.resolvedCount - before >= UInt64(pages))
  }

  @Test func sigbusModeWithASwiftConventionCResolver() throws {
    let uffd = try Userfaultfd(features: [.sigbus])
    let area = try AnonymousMemory(length: 4 * page)
    // Async-signal-safe: raw memory and a C ioctl wrapper only. The context is the uffd number.
    let resolver: SigbusRegion.Resolver = { context, address in
      guard let context else { return -1 }
      var arg = cuffd_zeropage(
        range: cuffd_range(start: UInt64(address), len: 4096), mode: 0, zeropage: 0)
      return cuffd_ioctl_zeropage(context.load(as: Int32.self), &arg) == 0 ? 0 : -1
    }
    let context = UnsafeMutablePointer<Int32>.allocate(capacity: 1)
    context.initialize(to: uffd.fileDescriptor.rawValue)
    defer { context.deallocate() }
    let region = try SigbusRegion(
      uffd: uffd, start: area.baseAddress, length: area.length, resolver: resolver, context: context)
    defer { region.close() }
    #expect(isZero(area.baseAddress, length: area.length))
  }

  @Test func sigbusRegionNeedsTheSigbusFeature() throws {
    let uffd = try Userfaultfd()
    let area = try AnonymousMemory(length: page)
    #expect(throws: UserfaultfdError.self) {
      try SigbusRegion(uffd: uffd, start: area.baseAddress, length: page, source: .zeroPage)
    }
  }

  @Test func genuineSigbusOutsideRegionsReachesThePreviousHandler() {
    #expect(cuffd_test_sigbus_chain_in_child() == 42)
  }
}
}
