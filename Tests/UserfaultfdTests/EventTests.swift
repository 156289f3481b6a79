import CUserfaultfdTestSupport
import Foundation
import Synchronization
import Testing
import Userfaultfd

/// Reading and decoding `uffd_msg` events from the real kernel.
extension KernelTests {
@Suite("Events")
struct EventTests {
  let page = PageSize.base

  @Test func nonBlockingReadWithNothingPendingReturnsNoEvents() throws {
    let uffd = try Userfaultfd(options: .nonBlocking)
    #expect(uffd.isNonBlocking)
    #expect(try uffd.readEvents().isEmpty)
  }

  @Test func missingWriteFaultIsDecodedWithAddressFlagsAndThreadID() throws {
    let uffd = try Userfaultfd(features: [.threadID], options: .nonBlocking)
    let memory = try AnonymousMemory(length: 4 * page)
    try uffd.register(memory.baseAddress, length: memory.length, mode: .missing)
    let target = Address(memory.baseAddress + 2 * page + 24)  // inside the third page
    let tid = Atomic<Int32>(0)
    let writer = TestThread {
      tid.store(cuffd_test_gettid(), ordering: .releasing)
      target.mapped.storeBytes(of: 0x1234, as: UInt64.self)
    }
    defer {
      try? uffd.unregister(memory.baseAddress, length: memory.length)
      _ = writer.join()
    }
    let events = try awaitEvents(uffd)
    try #require(events.count == 1)
    guard case .pageFault(let fault) = events[0] else {
      Issue.record("expected a page fault, got \(events)")
      return
    }
    #expect(fault.pageAddress == Address(memory.baseAddress + 2 * page))
    #expect(fault.flags.contains(.write))
    #expect(!fault.flags.contains(.writeProtect))
    #expect(!fault.flags.contains(.minor))
    #expect(fault.threadID == tid.load(ordering: .acquiring))
    #expect(fault.threadID != nil)
    // Resolve with a zeroed page so the write can complete.
    let zeros = try AnonymousMemory(length: page)
    try uffd.copy(from: zeros.baseAddress, to: memory.baseAddress + 2 * page, length: page)
    #expect(writer.join())
    #expect((memory.baseAddress + 2 * page + 24).load(as: UInt64.self) == 0x1234)
  }

  @Test func readFaultHasNoWriteFlagAndNoThreadIDUnlessNegotiated() throws {
    let uffd = try Userfaultfd(options: .nonBlocking)
    let memory = try AnonymousMemory(length: page)
    try uffd.register(memory.baseAddress, length: page, mode: .missing)
    let target = Address(memory.baseAddress)
    let reader = TestThread { _ = target.mapped.load(as: UInt8.self) }
    defer {
      try? uffd.unregister(memory.baseAddress, length: page)
      _ = reader.join()
    }
    let events = try awaitEvents(uffd)
    guard case .pageFault(let fault)? = events.first else {
      Issue.record("expected a page fault, got \(events)")
      return
    }
    #expect(!fault.flags.contains(.write))
    #expect(fault.threadID == nil)
    try uffd.zeroPage(memory.baseAddress, length: page)
    #expect(reader.join())
  }

  @Test func forkEventHandsOverTheChildsUserfaultfd() throws {
    let uffd = try Userfaultfd(features: [.eventFork], options: .nonBlocking)
    // Closed explicitly at the end: an EVENT_FORK descriptor left open with a registered range
    // would make every later fork in the test process wait for a reader that is gone.
    defer { uffd.close() }
    let memory = try AnonymousMemory(length: page)
    try uffd.register(memory.baseAddress, length: page, mode: .missing)
    // With EVENT_FORK the forking thread waits until the event is read, so fork on a thread, and
    // allocate nothing until the event is read: the forking thread holds malloc's locks.
    let buffer = try EventBuffer(capacity: 4)
    let child = Atomic<Int32>(0)
    let forker = TestThread { child.store(cuffd_test_fork_holder(), ordering: .releasing) }
    defer {
      _ = forker.join()
      let pid = child.load(ordering: .acquiring)
      if pid > 0 { _ = cuffd_test_kill_and_wait(pid) }
    }
    let count = awaitEvents(uffd, into: buffer)
    guard count > 0, case .fork(let childHandle) = buffer.event(at: 0, of: uffd) else {
      Issue.record("expected a fork event")
      return
    }
    #expect(forker.join())
    #expect(child.load(ordering: .acquiring) > 0)
    #expect(childHandle.openMethod == .forkEvent)
    #expect(!childHandle.isClosed)
    #expect(childHandle.fileDescriptor.rawValue != uffd.fileDescriptor.rawValue)
    #expect(childHandle.features == uffd.features)
    childHandle.close()
    #expect(childHandle.isClosed)
  }

  @Test func removeEventAfterDontNeed() throws {
    let uffd = try Userfaultfd(features: [.eventRemove], options: .nonBlocking)
    let memory = try AnonymousMemory(length: 2 * page)
    try uffd.register(memory.baseAddress, length: memory.length, mode: .missing)
    try uffd.zeroPage(memory.baseAddress, length: memory.length)
    let madviser = TestThread { try? memory.advise(.dontNeed) }
    defer { _ = madviser.join() }
    let events = try awaitEvents(uffd)
    guard case .remove(let start, let end)? = events.first else {
      Issue.record("expected a remove event, got \(events)")
      return
    }
    #expect(start == Address(memory.baseAddress))
    #expect(end == start + memory.length)
    #expect(madviser.join())
  }

  @Test func unmapEventWhenRegisteredMemoryIsUnmapped() throws {
    let uffd = try Userfaultfd(features: [.eventUnmap], options: .nonBlocking)
    final class Holder: @unchecked Sendable { var memory: AnonymousMemory? }
    // The holder has the only reference, so the unmapper thread's release is the munmap: munmap
    // waits until the unmap event is read, and this thread must never be the one doing it.
    let holder = Holder()
    holder.memory = try AnonymousMemory(length: 2 * page)
    guard let base = holder.memory?.baseAddress else { return }
    let start = Address(base)
    try uffd.register(base, length: 2 * page, mode: .missing)
    let unmapper = TestThread { holder.memory = nil }
    defer { _ = unmapper.join() }
    let events = try awaitEvents(uffd)
    guard case .unmap(let from, let to)? = events.first else {
      Issue.record("expected an unmap event, got \(events)")
      return
    }
    #expect(from == start)
    #expect(to == start + 2 * page)
    #expect(unmapper.join())
  }
}
}
