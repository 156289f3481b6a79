import CUserfaultfdTestSupport
import Foundation
import Glibc
import Testing
import Userfaultfd

/// One test (or more) per userfaultfd operation other than MOVE, on the real kernel.
extension KernelTests {
@Suite("Operations")
struct OperationTests {
  let page = PageSize.base

  @Test func registerReportsRangeIoctlsAndUnregisterRestoresOrdinaryFaults() throws {
    let uffd = try Userfaultfd()
    let memory = try AnonymousMemory(length: 4 * page)
    let ioctls = try uffd.register(memory.baseAddress, length: memory.length, mode: .missing)
    #expect(ioctls.isSuperset(of: [.wake, .copy, .zeroPage]))
    #expect(ioctls.contains(.move) == uffd.supportedFeatures.contains(.move))
    try uffd.unregister(memory.baseAddress, length: memory.length)
    // Unregistered: touching the memory is an ordinary fault again, not a hang.
    memory.baseAddress.storeBytes(of: 7, as: UInt64.self)
    #expect(memory.baseAddress.load(as: UInt64.self) == 7)
  }

  @Test func registeringWithTwoHandlesIsEBUSY() throws {
    let first = try Userfaultfd()
    let second = try Userfaultfd()
    let memory = try AnonymousMemory(length: page)
    try first.register(memory.baseAddress, length: page, mode: .missing)
    let error = #expect(throws: UserfaultfdError.self) {
      try second.register(memory.baseAddress, length: page, mode: .missing)
    }
    let f = try #require(error.flatMap(failure))
    #expect(f.errno == .resourceBusy)
    #expect(f.operation == .register && f.kind == .refused)
  }

  @Test func registerRejectsBadModesAndRanges() throws {
    let uffd = try Userfaultfd()
    let memory = try AnonymousMemory(length: page)
    let empty = #expect(throws: UserfaultfdError.self) {
      try uffd.register(memory.baseAddress, length: page, mode: [])
    }
    #expect({ if case .invalidArgument(.register, _)? = empty { true } else { false } }())
    let unknown = #expect(throws: UserfaultfdError.self) {
      try uffd.register(memory.baseAddress, length: page, mode: RegisterMode(rawValue: 1 << 9))
    }
    #expect({ if case .invalidArgument(.register, _)? = unknown { true } else { false } }())
    let unaligned = #expect(throws: UserfaultfdError.self) {
      try uffd.register(memory.baseAddress + 1, length: page, mode: .missing)
    }
    #expect({ if case .invalidArgument(.register, _)? = unaligned { true } else { false } }())
    // MINOR mode needs shmem or hugetlbfs: the kernel refuses private anonymous memory.
    let minor = #expect(throws: UserfaultfdError.self) {
      try uffd.register(memory.baseAddress, length: page, mode: .minor)
    }
    #expect(minor.flatMap(failure)?.errno == .invalidArgument)
  }

  @Test func copyFillsMissingPagesAndRefusesPopulatedOnes() throws {
    let uffd = try Userfaultfd()
    let source = try AnonymousMemory(length: 2 * page)
    let destination = try AnonymousMemory(length: 2 * page)
    try uffd.register(destination.baseAddress, length: destination.length, mode: .missing)
    fill(source.baseAddress, seed: 1)
    fill(source.baseAddress + page, seed: 2)
    try uffd.copy(from: source.baseAddress, to: destination.baseAddress, length: 2 * page)
    #expect(holds(destination.baseAddress, seed: 1))
    #expect(holds(destination.baseAddress + page, seed: 2))
    #expect(holds(source.baseAddress, seed: 1), "COPY leaves the source as it was")
    let again = #expect(throws: UserfaultfdError.self) {
      try uffd.copy(from: source.baseAddress, to: destination.baseAddress, length: page)
    }
    #expect(again.flatMap(failure)?.errno == .fileExists)
  }

  @Test func copyIntoUnregisteredMemoryIsENOENT() throws {
    let uffd = try Userfaultfd()
    let source = try AnonymousMemory(length: page)
    let destination = try AnonymousMemory(length: page)
    let error = #expect(throws: UserfaultfdError.self) {
      try uffd.copy(from: source.baseAddress, to: destination.baseAddress, length: page)
    }
    let f = try #require(error.flatMap(failure))
    #expect(f.errno == .noSuchFileOrDirectory)
    #expect(f.kind == .refused, "COPY's ENOENT is an unregistered destination, not a source hole")
  }

  @Test func zeroPageMapsZerosAndRefusesPopulatedPages() throws {
    let uffd = try Userfaultfd()
    let memory = try AnonymousMemory(length: 2 * page)
    try uffd.register(memory.baseAddress, length: memory.length, mode: .missing)
    try uffd.zeroPage(memory.baseAddress, length: 2 * page)
    #expect(isZero(memory.baseAddress, length: 2 * page))
    let again = #expect(throws: UserfaultfdError.self) {
      try uffd.zeroPage(memory.baseAddress, length: page)
    }
    #expect(again.flatMap(failure)?.errno == .fileExists)
    // A write after ZEROPAGE is an ordinary copy-on-write fault, not a userfault.
    memory.baseAddress.storeBytes(of: 9, as: UInt64.self)
    #expect(memory.baseAddress.load(as: UInt64.self) == 9)
  }

  @Test func wakeReleasesAThreadLeftAsleepByCopyDontWake() throws {
    let uffd = try Userfaultfd(options: .nonBlocking)
    let source = try AnonymousMemory(length: page)
    let destination = try AnonymousMemory(length: page)
    try uffd.register(destination.baseAddress, length: page, mode: .missing)
    fill(source.baseAddress, seed: 3)
    let target = Address(destination.baseAddress)
    let reader = TestThread { _ = target.mapped.load(as: UInt64.self) }
    defer {
      try? uffd.unregister(destination.baseAddress, length: page)
      _ = reader.join()
    }
    let events = try awaitEvents(uffd)
    #expect(events.count == 1)
    try uffd.copy(from: source.baseAddress, to: destination.baseAddress, length: page, options: .dontWake)
    #expect(!reader.join(seconds: 0.2), "DONTWAKE: still asleep")
    try uffd.wake(destination.baseAddress, length: page)
    #expect(reader.join())
    #expect(holds(destination.baseAddress, seed: 3))
  }

  @Test func writeProtectBlocksWritersUntilRemoved() throws {
    let uffd = try Userfaultfd(features: [.pageFaultFlagWP], options: .nonBlocking)
    let memory = try AnonymousMemory(length: page, populate: true)
    fill(memory.baseAddress, seed: 4)
    let ioctls = try uffd.register(memory.baseAddress, length: page, mode: .writeProtect)
    #expect(ioctls.contains(.writeProtect))
    try uffd.writeProtect(memory.baseAddress, length: page)
    let target = Address(memory.baseAddress)
    let writer = TestThread { target.mapped.storeBytes(of: 0xABCD, as: UInt64.self) }
    defer {
      try? uffd.unregister(memory.baseAddress, length: page)
      _ = writer.join()
    }
    let events = try awaitEvents(uffd)
    guard case .pageFault(let fault)? = events.first else {
      Issue.record("expected a write-protect fault, got \(events)")
      return
    }
    #expect(fault.pageAddress == target)
    #expect(fault.flags.contains(.writeProtect))
    #expect(fault.flags.contains(.write))
    #expect(!writer.isFinished)
    #expect(memory.baseAddress.load(as: UInt64.self) != 0xABCD, "the write waits")
    try uffd.removeWriteProtection(memory.baseAddress, length: page)
    #expect(writer.join())
    #expect(memory.baseAddress.load(as: UInt64.self) == 0xABCD)
  }

  @Test func writeProtectNeedsWPRegistration() throws {
    let uffd = try Userfaultfd()
    let memory = try AnonymousMemory(length: page, populate: true)
    try uffd.register(memory.baseAddress, length: page, mode: .missing)
    let error = #expect(throws: UserfaultfdError.self) {
      try uffd.writeProtect(memory.baseAddress, length: page)
    }
    let f = try #require(error.flatMap(failure))
    #expect(f.errno == .noSuchFileOrDirectory)
    #expect(f.operation == .writeProtect && f.kind == .refused)
  }

  @Test(.enabled(if: Kernel.hasMinorShmem, "needs UFFD_FEATURE_MINOR_SHMEM (Linux 5.14)"))
  func continueMapsThePageCachePageOfShmem() throws {
    let uffd = try Userfaultfd(features: [.minorShmem])
    let memory = try AnonymousMemory(length: page, sharing: .shared)
    fill(memory.baseAddress, seed: 5)
    // Drop the mapping but not the shmem page: the next access is a minor fault.
    try memory.advise(.dontNeed)
    let ioctls = try uffd.register(memory.baseAddress, length: page, mode: .minor)
    #expect(ioctls.contains(.continue))
    try uffd.continue(memory.baseAddress, length: page)
    #expect(holds(memory.baseAddress, seed: 5), "CONTINUE mapped the existing page-cache page")
    let again = #expect(throws: UserfaultfdError.self) {
      try uffd.continue(memory.baseAddress, length: page)
    }
    #expect(again.flatMap(failure)?.errno == .fileExists)
  }

  @Test(.enabled(if: Kernel.hasMinorShmem, "needs UFFD_FEATURE_MINOR_SHMEM (Linux 5.14)"))
  func minorFaultIsReportedAndResolvedByContinue() throws {
    let uffd = try Userfaultfd(features: [.minorShmem], options: .nonBlocking)
    let memory = try AnonymousMemory(length: page, sharing: .shared)
    fill(memory.baseAddress, seed: 6)
    try memory.advise(.dontNeed)
    try uffd.register(memory.baseAddress, length: page, mode: .minor)
    let target = Address(memory.baseAddress)
    let reader = TestThread { _ = target.mapped.load(as: UInt64.self) }
    defer {
      try? uffd.unregister(memory.baseAddress, length: page)
      _ = reader.join()
    }
    let events = try awaitEvents(uffd)
    guard case .pageFault(let fault)? = events.first else {
      Issue.record("expected a minor fault, got \(events)")
      return
    }
    #expect(fault.flags.contains(.minor))
    try uffd.continue(memory.baseAddress, length: page)
    #expect(reader.join())
    #expect(holds(memory.baseAddress, seed: 6))
  }

  @Test(.enabled(if: Kernel.hasPoison, "needs UFFDIO_POISON (Linux 6.6)"))
  func poisonedPageRaisesSIGBUSUntilACopyReplacesIt() throws {
    let uffd = try Userfaultfd(features: [.poison])
    let memory = try AnonymousMemory(length: 2 * page)
    let ioctls = try uffd.register(memory.baseAddress, length: memory.length, mode: .missing)
    #expect(ioctls.contains(.poison))
    try uffd.poison(memory.baseAddress, length: page)
    let first = memory.baseAddress.assumingMemoryBound(to: UInt8.self)
    // Touch it in a child: the child dies of SIGBUS, as on a hardware memory error.
    #expect(cuffd_test_child_touch(first) == SIGBUS)
    let again = #expect(throws: UserfaultfdError.self) {
      try uffd.poison(memory.baseAddress, length: page)
    }
    #expect(again.flatMap(failure)?.errno == .fileExists)
    // The kernel treats the poison marker as "no page" for COPY (pte_none_mostly): a copy
    // replaces it with real data.
    let source = try AnonymousMemory(length: page)
    fill(source.baseAddress, seed: 7)
    try uffd.copy(from: source.baseAddress, to: memory.baseAddress, length: page)
    #expect(cuffd_test_child_touch(first) == 0)
    #expect(holds(memory.baseAddress, seed: 7))
  }
}
}
