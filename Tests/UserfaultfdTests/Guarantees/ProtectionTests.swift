import Foundation
import Synchronization
import Testing
@testable import Userfaultfd

/// Memory whose protection is not read-write, given to every public API that takes memory: a
/// typed error naming the protection or documented success, never a crash or a hang, and every
/// page in the source, the destination or handed back readable.
extension KernelTests {
@Suite("Guarantees: protections")
struct ProtectionTests {
  static let page = PageSize.base
  var page: Int { Self.page }

  /// The protections a caller can give memory, beside read-write.
  static let protections: [AnonymousMemory.Protection] = [.none, .read, .write, .execute]

  // MARK: - The three broken promises, each at its cause

  /// `populate: true` allocates every page whatever the protection (it used to store into a
  /// PROT_NONE or read-only mapping when MADV_POPULATE_WRITE refused it, and the process died).
  @Test(arguments: protections + [.readWrite, [.read, .execute]])
  func populatedMemoryOfEveryProtection(protection: AnonymousMemory.Protection) throws {
    let memory = try AnonymousMemory(length: 4 * page, protection: protection, populate: true)
    for index in 0..<4 {
      #expect(isPopulated(memory.baseAddress + index * page), "page \(index) allocated under \(protection)")
    }
    #expect(Mapping.containing(UInt(bitPattern: memory.baseAddress))?.protection == protection)
    if protection.contains(.read) { #expect(isZero(memory.baseAddress, length: memory.length)) }
  }

  /// The copy fallback refuses a source it cannot read before taking anything: every page stays
  /// in the source, nothing is handed back, and the cause names the protection.
  @Test(arguments: [AnonymousMemory.Protection.none, .write, .execute])
  func copyFallbackRefusesAnUnreadableSource(protection: AnonymousMemory.Protection) throws {
    let uffd = try Userfaultfd()
    let source = try AnonymousMemory(length: 4 * page)
    let destination = try AnonymousMemory(length: 4 * page)
    try uffd.register(destination.baseAddress, length: destination.length, mode: .missing)
    for index in 0..<4 { fill(source.baseAddress + index * page, seed: UInt64(index + 1)) }
    try source.protect(protection)
    let error = #expect(throws: UserfaultfdError.self) {
      _ = try PageMover(uffd, usingMove: false).move(
        from: source.baseAddress, to: destination.baseAddress, length: source.length, policy: .copyFallback)
    }
    if let report = expectStopped(error) {
      #expect(report.stop?.cause == .sourceNotReadable(Address(source.baseAddress), protection))
      #expect(report.returnedPages == nil, "nothing taken, nothing handed back")
      #expect(report.bytesDone == 0)
      #expect("\(error.map(String.init(describing:)) ?? "")".contains("\(protection)"))
    }
    try source.protect(.readWrite)
    for index in 0..<4 {
      #expect(holds(source.baseAddress + index * page, seed: UInt64(index + 1)), "page \(index) still in the source")
      #expect(!isPopulated(destination.baseAddress + index * page))
    }
  }

  /// COPY from a page that is missing in a range registered with the same handle would wait for a
  /// fault nobody serves: refused before the ioctl, within a bounded wait.
  @Test func copyRefusesAMissingPageRegisteredWithTheSameHandle() throws {
    let uffd = try Userfaultfd()
    let registered = try AnonymousMemory(length: 4 * page)
    let destination = try AnonymousMemory(length: 4 * page)
    try uffd.register(registered.baseAddress, length: registered.length, mode: .missing)
    try uffd.register(destination.baseAddress, length: destination.length, mode: .missing)
    let filler = try AnonymousMemory(length: page)
    fill(filler.baseAddress, seed: 7)
    try uffd.copy(from: filler.baseAddress, to: registered.baseAddress, length: page)  // page 0 present
    let source = Address(registered.baseAddress)
    let target = Address(destination.baseAddress)
    let outcome = Mutex<UserfaultfdError?>(nil)
    let caller = TestThread {
      do throws(UserfaultfdError) {
        // Pages 0 (present) and 1 (missing): the missing one is named.
        try uffd.copy(from: source.mapped, to: target.mapped, length: 2 * PageSize.base)
      } catch {
        outcome.withLock { $0 = error }
      }
    }
    let returned = caller.join(seconds: 10)
    if !returned { try uffd.unregister(registered.baseAddress, length: registered.length) }  // release it
    #expect(returned, "the copy returned instead of waiting on its own handle's fault")
    #expect(outcome.withLock { $0 } == .invalidArgument(.copy, .sourceIsMissingRegisteredPage(source + page)))
    #expect(!isPopulated(destination.baseAddress), "nothing copied")
    // A present page of the same range is fine.
    try uffd.copy(from: registered.baseAddress, to: destination.baseAddress, length: page)
    #expect(holds(destination.baseAddress, seed: 7))
  }

  /// A write-protect-only registration does not fault on a missing page's read: copy goes ahead.
  @Test(.enabled(if: Kernel.hasUserfaultfd, "needs userfaultfd"))
  func copyFromAMissingPageOfAWriteProtectRangeGoesAhead() throws {
    let uffd = try Userfaultfd()
    let registered = try AnonymousMemory(length: 2 * page)
    let destination = try AnonymousMemory(length: page)
    do {
      try uffd.register(registered.baseAddress, length: registered.length, mode: .writeProtect)
    } catch {
      print("SKIP: write-protect registration of anonymous memory needs Linux 5.7 (\(error))")
      return
    }
    try uffd.register(destination.baseAddress, length: destination.length, mode: .missing)
    try uffd.copy(from: registered.baseAddress, to: destination.baseAddress, length: page)
    #expect(isPopulated(destination.baseAddress) && isZero(destination.baseAddress))
  }

  // MARK: - Names in errors

  @Test func sigbusRegionOverlapNamesTheRegion() throws {
    guard Kernel.hasSigbus else {
      print("SKIP: needs UFFD_FEATURE_SIGBUS (Linux 4.14)")
      return
    }
    let uffd = try Userfaultfd(features: [.sigbus])
    let area = try AnonymousMemory(length: 4 * page)
    let error = #expect(throws: UserfaultfdError.self) {
      _ = try SigbusRegion(uffd: uffd, start: area.baseAddress + page, length: 2 * page,
                           source: .copy(from: area.baseAddress))
    }
    guard case .invalidArgument(let operation, .overlap)? = error else {
      Issue.record("expected an overlap refusal, got \(String(describing: error))")
      return
    }
    #expect(operation == .sigbusRegion)
    #expect(error?.description.hasPrefix("SigbusRegion:") == true)
  }

  @Test func adviceAndProtectionPrintByName() throws {
    let shared = try AnonymousMemory(length: page, sharing: .shared)
    #expect(throws: UserfaultfdError.invalidArgument(.memory, .adviceNeedsPrivateMemory("MADV_WIPEONFORK"))) {
      try shared.advise(.wipeOnFork)
    }
    let unknown = AnonymousMemory.Protection(rawValue: 0x100)
    #expect(throws: UserfaultfdError.invalidArgument(.memory, .unknownProtectionBits(0x100))) {
      try shared.protect([.read, unknown])
    }
    #expect(throws: UserfaultfdError.invalidArgument(.memory, .unknownProtectionBits(0x100))) {
      _ = try AnonymousMemory(length: page, protection: unknown)
    }
    let error = #expect(throws: UserfaultfdError.self) { try shared.advise(AnonymousMemory.Advice(rawValue: 9_999)) }
    let text = error?.description ?? ""
    #expect(text.hasPrefix("madvise(MADV_9999) failed: EINVAL"), "\(text)")
    #expect(text.contains("does not know advice 9999"), "\(text)")
    #expect("\(AnonymousMemory.Advice.wipeOnFork)" == "MADV_WIPEONFORK")
    #expect("\(AnonymousMemory.Protection.none)" == "PROT_NONE")
    #expect("\(AnonymousMemory.Protection([.read, .execute]))" == "PROT_READ|PROT_EXEC")
  }

  // MARK: - The matrix

  /// Memory of one kind with one protection, filled (before protecting) when `seedBase` is given.
  func memory(
    _ sharing: AnonymousMemory.Sharing, _ protection: AnonymousMemory.Protection, pages: Int = 4, seedBase: UInt64? = nil
  ) throws -> AnonymousMemory {
    let memory = try AnonymousMemory(length: pages * page, sharing: sharing)
    if let seedBase {
      for index in 0..<pages { fill(memory.baseAddress + index * page, seed: seedBase + UInt64(index)) }
    }
    try memory.protect(protection)
    return memory
  }

  /// Whether every page of `memory` still holds its seed (made readable to look).
  func holdsAll(_ memory: AnonymousMemory, seedBase: UInt64, pages: Int = 4) throws -> Bool {
    try memory.protect(.readWrite)
    return (0..<pages).allSatisfy { holds(memory.baseAddress + $0 * page, seed: seedBase + UInt64($0)) }
  }

  /// The direct ioctls: register, copy, zero page, poison and move, with the source or the
  /// destination under each protection, private and shared. Each either succeeds with the right
  /// bytes or throws a typed error naming the protection, the source intact.
  @Test(arguments: [AnonymousMemory.Sharing.private, .shared], protections)
  func ioctlsUnderProtection(sharing: AnonymousMemory.Sharing, protection: AnonymousMemory.Protection) throws {
    let uffd = try Userfaultfd()
    // Source under the protection, destination read-write.
    let source = try memory(sharing, protection, seedBase: 10)
    let destination = try memory(.private, .readWrite, pages: 4)
    try uffd.register(destination.baseAddress, length: destination.length, mode: .missing)
    do {
      try uffd.copy(from: source.baseAddress, to: destination.baseAddress, length: page)
      #expect(protection != .none, "copy from \(protection) succeeded")
      #expect(holds(destination.baseAddress, seed: 10))
    } catch {
      #expect(error == .invalidArgument(.copy, .sourceNotReadable(Address(source.baseAddress), protection)), "\(error)")
      #expect(!isPopulated(destination.baseAddress))
    }
    if Kernel.hasMove, sharing == .private {
      do {
        try uffd.move(from: source.baseAddress + page, to: destination.baseAddress + page, length: page)
        Issue.record("MOVE from \(protection) into read-write memory is refused by the kernel")
      } catch {
        #expect(error == .invalidArgument(.move, .moveProtections(source: protection, destination: .readWrite)), "\(error)")
      }
    }
    #expect(try holdsAll(source, seedBase: 10), "the source is intact")

    // Destination under the protection: register, copy, zero page, poison.
    let guarded = try memory(sharing, protection)
    try uffd.register(guarded.baseAddress, length: guarded.length, mode: .missing)
    let filler = try memory(.private, .readWrite, pages: 1, seedBase: 20)
    try uffd.copy(from: filler.baseAddress, to: guarded.baseAddress, length: page)
    try uffd.zeroPage(guarded.baseAddress + page, length: page)
    if Kernel.hasPoison {
      try uffd.poison(guarded.baseAddress + 2 * page, length: page)
    }
    try uffd.unregister(guarded.baseAddress, length: guarded.length)
    try guarded.protect(.read)
    #expect(holds(guarded.baseAddress, seed: 20), "copied into \(protection) memory")
    #expect(isZero(guarded.baseAddress + page), "zero page in \(protection) memory")

    // MOVE between two mappings of the same protection: only writable ones move.
    if Kernel.hasMove, sharing == .private {
      let from = try memory(.private, protection, pages: 1, seedBase: 30)
      let to = try memory(.private, protection, pages: 1)
      try uffd.register(to.baseAddress, length: page, mode: .missing)
      do throws(UserfaultfdError) {
        try uffd.move(from: from.baseAddress, to: to.baseAddress, length: page)
        #expect(protection.contains(.write), "MOVE between \(protection) mappings")
        try uffd.unregister(to.baseAddress, length: page)
        #expect((try? holdsAll(to, seedBase: 30, pages: 1)) == true)
      } catch {
        #expect(error == .invalidArgument(.move, .moveProtections(source: protection, destination: protection)), "\(error)")
        #expect((try? holdsAll(from, seedBase: 30, pages: 1)) == true)
      }
    }
  }

  /// The logical move, every policy, MOVE on and off, from a source under each protection: it
  /// completes, or stops with every page in the source (or handed back readable), never lost.
  @Test(arguments: protections, [true, false])
  func pageMoverUnderProtection(protection: AnonymousMemory.Protection, usingMove: Bool) throws {
    if usingMove && !Kernel.hasMove {
      print("SKIP: MOVE rows need UFFDIO_MOVE (Linux 6.8)")
      return
    }
    for policy in [MovePolicy.strict, .allowSourceHoles, .copyFallback] {
      let uffd = try Userfaultfd()
      let source = try memory(.private, protection, seedBase: 40)
      let destination = try memory(.private, .readWrite)
      try uffd.register(destination.baseAddress, length: destination.length, mode: .missing)
      var returned: ReturnedPages?
      let outcome = Result { () throws(UserfaultfdError) -> MoveReport in
        try PageMover(uffd, usingMove: usingMove).move(
          from: source.baseAddress, to: destination.baseAddress, length: source.length, policy: policy)
      }
      switch outcome {
      case .success(let report):
        #expect(report.bytesDone == source.length)
      case .failure(.moveStopped(let report)):
        returned = report.returnedPages
        let cause = report.stop?.cause
        #expect(cause == .protectionsDiffer || cause == .sourceNotReadable(Address(source.baseAddress), protection),
                "\(protection), MOVE \(usingMove), \(policy): \(report)")
      case .failure(.notSupported):
        #expect(!usingMove && policy.busyPages != .copy, "only zero-copy policies without MOVE")
      case .failure(let error):
        Issue.record("\(protection), MOVE \(usingMove), \(policy): \(error)")
      }
      try source.protect(.readWrite)
      for index in 0..<4 {
        let seed = 40 + UInt64(index)
        let there = isPopulated(destination.baseAddress + index * page) && holds(destination.baseAddress + index * page, seed: seed)
        let here = isPopulated(source.baseAddress + index * page) && holds(source.baseAddress + index * page, seed: seed)
        let handed = returned?.contents(ofPage: index).flatMap { $0.baseAddress }.map { holds($0, seed: seed) } ?? false
        #expect(there || here || handed, "page \(index) of \(protection), MOVE \(usingMove), \(policy) is somewhere readable")
      }
    }
  }

  /// SIGBUS regions check their source's protection when they are set up, not at fault time.
  @Test(arguments: protections)
  func sigbusRegionChecksItsSourceAtSetUp(protection: AnonymousMemory.Protection) throws {
    guard Kernel.hasSigbus else {
      print("SKIP: needs UFFD_FEATURE_SIGBUS (Linux 4.14)")
      return
    }
    let uffd = try Userfaultfd(features: [.sigbus])
    let source = try memory(.private, protection, seedBase: 50)
    let area = try memory(.private, .readWrite)
    do {
      let region = try SigbusRegion(uffd: uffd, start: area.baseAddress, length: area.length,
                                    source: .copy(from: source.baseAddress))
      #expect(protection.contains(.read))
      #expect(holds(area.baseAddress, seed: 50), "the first touch is served from the \(protection) source")
      region.close()
    } catch {
      #expect(error == .invalidArgument(.sigbusRegion, .sourceNotReadable(Address(source.baseAddress), protection)), "\(error)")
    }
    if Kernel.hasMove, PageMover.moveVerdict.isUsable {
      #expect(throws: UserfaultfdError.invalidArgument(
        .sigbusRegion, .moveProtections(source: protection, destination: .readWrite))) {
        _ = try SigbusRegion(uffd: uffd, start: area.baseAddress, length: area.length, source: .move(from: source.baseAddress))
      }
    }
    #expect(try holdsAll(source, seedBase: 50))
  }

  /// A fault server told to copy from memory it cannot read fails that fault (zero-filled here,
  /// counted, reported with EFAULT) instead of retrying forever; a readable source serves it.
  @Test(arguments: protections)
  func faultServerCopyFromProtectedSource(protection: AnonymousMemory.Protection) throws {
    let uffd = try Userfaultfd(options: .nonBlocking)
    let source = try memory(.private, protection, pages: 1, seedBase: 60)
    let area = try memory(.private, .readWrite, pages: 1)
    let from = Address(source.baseAddress)
    let server = try FaultServer(uffd: uffd, configuration: .init(onUnresolvable: .zeroPage)) { _ in .copy(from: from) }
    defer { server.stop() }
    try server.register(area.baseAddress, length: area.length)
    let target = Address(area.baseAddress)
    let firstWord = Atomic<UInt64>(1)
    let reader = TestThread { firstWord.store(target.mapped.load(as: UInt64.self), ordering: .relaxed) }
    #expect(reader.join(seconds: 10), "the faulting thread was released")
    server.stop()
    let readable = (try? source.protect(.read)) != nil && holds(source.baseAddress, seed: 60)
    #expect(readable)
    if server.statistics.failed == 0 {
      #expect(holds(area.baseAddress, seed: 60), "served from the \(protection) source")
    } else {
      #expect(isZero(area.baseAddress), "failed fault zero-filled")
      #expect(server.lastFailure?.errno == EFAULT)
      #expect(protection == .none || !protection.contains(.read))
    }
  }

  /// AnonymousMemory's own helpers on memory under each protection: typed errors or success.
  @Test(arguments: protections)
  func memoryHelpersUnderProtection(protection: AnonymousMemory.Protection) throws {
    let memory = try memory(.private, protection, seedBase: 70)
    try memory.advise(.dontFork)
    try memory.advise(.doFork)
    for advice in [AnonymousMemory.Advice.populateRead, .populateWrite] {
      do {
        try memory.advise(advice)
      } catch {
        guard case .systemCallFailed(let call, _) = error else {
          Issue.record("\(advice) on \(protection): \(error)")
          continue
        }
        #expect(call.hasPrefix("madvise(\(advice))"))
      }
    }
    #expect(try holdsAll(memory, seedBase: 70))
    try memory.advise(.dontNeed)
    #expect(isZero(memory.baseAddress, length: memory.length))
  }

  /// Hugetlbfs memory under each protection: registration and COPY of whole 2 MiB pages.
  @Test(.enabled(if: HugePages.canReserve, "needs 2 MiB hugetlb pages: none could be reserved (vm.nr_hugepages)"),
        arguments: protections)
  func hugetlbUnderProtection(protection: AnonymousMemory.Protection) throws {
    try HugePages.withReserved(2) {
      let huge = PageSize.huge
      let uffd = try Userfaultfd(features: [.missingHugetlbfs])
      let region = try AnonymousMemory.hugePages(length: huge)
      try region.protect(protection)
      try uffd.register(region.baseAddress, length: huge, mode: .missing)
      let source = try AnonymousMemory(length: huge, alignment: huge)
      fill(source.baseAddress, seed: 80, length: huge)
      try uffd.copy(from: source.baseAddress, to: region.baseAddress, length: huge)
      try uffd.unregister(region.baseAddress, length: huge)
      try region.protect(.read)
      #expect(holds(region.baseAddress, seed: 80, length: huge), "a whole huge page copied into \(protection) memory")
    }
  }
}
}
