import ArgumentParser
@testable import CompactingHeap
import CUserfaultfdTestSupport
import Foundation
import SystemPackage
import Testing
@testable import Userfaultfd

/// The third promise: no crash from any input. Every public entry point, given values out of its
/// documented range, throws a typed error before anything happens, and the caller's data is
/// intact afterwards. Inputs that could crash a process (huge sizes, allocation failure) run in a
/// child as exit tests.
extension KernelTests {
@Suite("Guarantees: bad input")
struct BadInputTests {
  static let page = PageSize.base

  /// What an entry point is expected to say.
  enum Expected { case invalid, unsupported, closed, failed, stopped }

  /// The fixture every case runs against: a handle, a filled source, a registered destination,
  /// and a closed handle.
  final class Fixture {
    let uffd: Userfaultfd
    let closed: Userfaultfd
    let source: AnonymousMemory
    let destination: AnonymousMemory
    var src: UnsafeMutableRawPointer { source.baseAddress }
    var dst: UnsafeMutableRawPointer { destination.baseAddress }
    /// An address whose page range would wrap past the top of the address space.
    let top = UnsafeMutableRawPointer(bitPattern: UInt.max & ~UInt(PageSize.base - 1))!

    init() throws {
      uffd = try Userfaultfd(options: .nonBlocking)
      closed = try Userfaultfd(options: .nonBlocking)
      closed.close()
      source = try AnonymousMemory(length: 4 * page)
      destination = try AnonymousMemory(length: 4 * page)
      try uffd.register(destination.baseAddress, length: destination.length, mode: .missing)
      for index in 0..<4 { fill(source.baseAddress + index * page, seed: UInt64(index + 100)) }
    }

    var sourceIntact: Bool { (0..<4).allSatisfy { holds(src + $0 * page, seed: UInt64($0 + 100)) } }
    var destinationEmpty: Bool { (0..<4).allSatisfy { !isPopulated(dst + $0 * page) } }
  }

  typealias Case = (name: String, expected: Expected, body: (Fixture) throws(UserfaultfdError) -> Void)

  static let p = page
  nonisolated(unsafe) static let cases: [Case] = [  // immutable; read by one test
    // register / unregister / wake
    ("register misaligned", .invalid, { f throws(UserfaultfdError) in try f.uffd.register(f.dst + 8, length: p, mode: .missing) }),
    ("register zero length", .invalid, { f throws(UserfaultfdError) in try f.uffd.register(f.dst, length: 0, mode: .missing) }),
    ("register negative length", .invalid, { f throws(UserfaultfdError) in try f.uffd.register(f.dst, length: -p, mode: .missing) }),
    ("register Int.min length", .invalid, { f throws(UserfaultfdError) in try f.uffd.register(f.dst, length: .min, mode: .missing) }),
    ("register ragged length", .invalid, { f throws(UserfaultfdError) in try f.uffd.register(f.dst, length: p + 1, mode: .missing) }),
    ("register wraps", .invalid, { f throws(UserfaultfdError) in try f.uffd.register(f.top, length: 2 * p, mode: .missing) }),
    ("register Int.max length", .invalid, { f throws(UserfaultfdError) in try f.uffd.register(f.dst, length: .max, mode: .missing) }),
    ("register empty mode", .invalid, { f throws(UserfaultfdError) in try f.uffd.register(f.dst, length: p, mode: []) }),
    ("register unknown mode bits", .invalid, { f throws(UserfaultfdError) in try f.uffd.register(f.dst, length: p, mode: RegisterMode(rawValue: 1 << 40)) }),
    ("register on closed handle", .closed, { f throws(UserfaultfdError) in try f.closed.register(f.src, length: p, mode: .missing) }),
    ("unregister misaligned", .invalid, { f throws(UserfaultfdError) in try f.uffd.unregister(f.dst + 1, length: p) }),
    ("unregister zero", .invalid, { f throws(UserfaultfdError) in try f.uffd.unregister(f.dst, length: 0) }),
    ("unregister negative", .invalid, { f throws(UserfaultfdError) in try f.uffd.unregister(f.dst, length: -1) }),
    ("unregister wraps", .invalid, { f throws(UserfaultfdError) in try f.uffd.unregister(f.top, length: 4 * p) }),
    ("unregister on closed handle", .closed, { f throws(UserfaultfdError) in try f.closed.unregister(f.dst, length: p) }),
    ("wake misaligned", .invalid, { f throws(UserfaultfdError) in try f.uffd.wake(f.dst + 100, length: p) }),
    ("wake zero", .invalid, { f throws(UserfaultfdError) in try f.uffd.wake(f.dst, length: 0) }),
    ("wake Int.min", .invalid, { f throws(UserfaultfdError) in try f.uffd.wake(f.dst, length: .min) }),
    ("wake wraps", .invalid, { f throws(UserfaultfdError) in try f.uffd.wake(f.top, length: 2 * p) }),
    ("wake on closed handle", .closed, { f throws(UserfaultfdError) in try f.closed.wake(f.dst, length: p) }),
    // copy
    ("copy misaligned source", .invalid, { f throws(UserfaultfdError) in try f.uffd.copy(from: f.src + 8, to: f.dst, length: p) }),
    ("copy misaligned destination", .invalid, { f throws(UserfaultfdError) in try f.uffd.copy(from: f.src, to: f.dst + 8, length: p) }),
    ("copy zero", .invalid, { f throws(UserfaultfdError) in try f.uffd.copy(from: f.src, to: f.dst, length: 0) }),
    ("copy negative", .invalid, { f throws(UserfaultfdError) in try f.uffd.copy(from: f.src, to: f.dst, length: -p) }),
    ("copy ragged", .invalid, { f throws(UserfaultfdError) in try f.uffd.copy(from: f.src, to: f.dst, length: 3) }),
    ("copy Int.max", .invalid, { f throws(UserfaultfdError) in try f.uffd.copy(from: f.src, to: f.dst, length: .max) }),
    ("copy overlapping", .invalid, { f throws(UserfaultfdError) in try f.uffd.copy(from: f.dst, to: f.dst + p, length: 2 * p) }),
    ("copy source wraps", .invalid, { f throws(UserfaultfdError) in try f.uffd.copy(from: f.top, to: f.dst, length: 2 * p) }),
    ("copy destination wraps", .invalid, { f throws(UserfaultfdError) in try f.uffd.copy(from: f.src, to: f.top, length: 2 * p) }),
    ("copy unknown mode bits", .failed, { f throws(UserfaultfdError) in try f.uffd.copy(from: f.src, to: f.dst, length: p, options: .init(rawValue: 1 << 50)) }),
    ("copy into unregistered memory", .failed, { f throws(UserfaultfdError) in try f.uffd.copy(from: f.dst, to: f.src, length: p) }),
    ("copy on closed handle", .closed, { f throws(UserfaultfdError) in try f.closed.copy(from: f.src, to: f.dst, length: p) }),
    // zero page, continue, poison, write protection
    ("zeropage misaligned", .invalid, { f throws(UserfaultfdError) in try f.uffd.zeroPage(f.dst + 4, length: p) }),
    ("zeropage zero", .invalid, { f throws(UserfaultfdError) in try f.uffd.zeroPage(f.dst, length: 0) }),
    ("zeropage negative", .invalid, { f throws(UserfaultfdError) in try f.uffd.zeroPage(f.dst, length: -p) }),
    ("zeropage wraps", .invalid, { f throws(UserfaultfdError) in try f.uffd.zeroPage(f.top, length: 2 * p) }),
    ("zeropage unknown mode bits", .failed, { f throws(UserfaultfdError) in try f.uffd.zeroPage(f.dst, length: p, options: .init(rawValue: 1 << 9)) }),
    ("zeropage on closed handle", .closed, { f throws(UserfaultfdError) in try f.closed.zeroPage(f.dst, length: p) }),
    ("continue misaligned", .invalid, { f throws(UserfaultfdError) in try f.uffd.continue(f.dst + 2, length: p) }),
    ("continue zero", .invalid, { f throws(UserfaultfdError) in try f.uffd.continue(f.dst, length: 0) }),
    ("continue wraps", .invalid, { f throws(UserfaultfdError) in try f.uffd.continue(f.top, length: 2 * p) }),
    ("continue on anonymous memory", .failed, { f throws(UserfaultfdError) in try f.uffd.continue(f.dst, length: p) }),
    ("continue on closed handle", .closed, { f throws(UserfaultfdError) in try f.closed.continue(f.dst, length: p) }),
    ("poison misaligned", .invalid, { f throws(UserfaultfdError) in try f.uffd.poison(f.dst + 16, length: p) }),
    ("poison zero", .invalid, { f throws(UserfaultfdError) in try f.uffd.poison(f.dst, length: 0) }),
    ("poison negative", .invalid, { f throws(UserfaultfdError) in try f.uffd.poison(f.dst, length: -p) }),
    ("poison wraps", .invalid, { f throws(UserfaultfdError) in try f.uffd.poison(f.top, length: 2 * p) }),
    ("poison on closed handle", .closed, { f throws(UserfaultfdError) in try f.closed.poison(f.dst, length: p) }),
    ("writeprotect misaligned", .invalid, { f throws(UserfaultfdError) in try f.uffd.writeProtect(f.dst + 8, length: p) }),
    ("writeprotect zero", .invalid, { f throws(UserfaultfdError) in try f.uffd.writeProtect(f.dst, length: 0) }),
    ("writeprotect wraps", .invalid, { f throws(UserfaultfdError) in try f.uffd.writeProtect(f.top, length: 2 * p) }),
    ("writeprotect not registered for WP", .failed, { f throws(UserfaultfdError) in try f.uffd.writeProtect(f.dst, length: p) }),
    ("unprotect negative", .invalid, { f throws(UserfaultfdError) in try f.uffd.removeWriteProtection(f.dst, length: -p) }),
    ("unprotect on closed handle", .closed, { f throws(UserfaultfdError) in try f.closed.removeWriteProtection(f.dst, length: p) }),
    // move
    ("move misaligned source", .invalid, { f throws(UserfaultfdError) in try f.uffd.move(from: f.src + 8, to: f.dst, length: p) }),
    ("move misaligned destination", .invalid, { f throws(UserfaultfdError) in try f.uffd.move(from: f.src, to: f.dst + 8, length: p) }),
    ("move zero", .invalid, { f throws(UserfaultfdError) in try f.uffd.move(from: f.src, to: f.dst, length: 0) }),
    ("move negative", .invalid, { f throws(UserfaultfdError) in try f.uffd.move(from: f.src, to: f.dst, length: -p) }),
    ("move Int.min", .invalid, { f throws(UserfaultfdError) in try f.uffd.move(from: f.src, to: f.dst, length: .min) }),
    ("move ragged", .invalid, { f throws(UserfaultfdError) in try f.uffd.move(from: f.src, to: f.dst, length: p - 1) }),
    ("move overlapping", .invalid, { f throws(UserfaultfdError) in try f.uffd.move(from: f.src, to: f.src + p, length: 2 * p) }),
    ("move wraps", .invalid, { f throws(UserfaultfdError) in try f.uffd.move(from: f.src, to: f.top, length: 2 * p) }),
    ("move on closed handle", .closed, { f throws(UserfaultfdError) in try f.closed.move(from: f.src, to: f.dst, length: p) }),
    // read events
    ("readEvents zero", .invalid, { f throws(UserfaultfdError) in _ = try f.uffd.readEvents(maxCount: 0) }),
    ("readEvents negative", .invalid, { f throws(UserfaultfdError) in _ = try f.uffd.readEvents(maxCount: -1) }),
    ("readEvents Int.min", .invalid, { f throws(UserfaultfdError) in _ = try f.uffd.readEvents(maxCount: .min) }),
    ("readEvents on closed handle", .closed, { f throws(UserfaultfdError) in _ = try f.closed.readEvents() }),
    ("EventBuffer zero", .invalid, { _ throws(UserfaultfdError) in _ = try EventBuffer(capacity: 0) }),
    ("EventBuffer Int.max", .invalid, { _ throws(UserfaultfdError) in _ = try EventBuffer(capacity: .max) }),
    ("EventBuffer negative", .invalid, { _ throws(UserfaultfdError) in _ = try EventBuffer(capacity: -8) }),
    // memory
    ("memory zero", .invalid, { _ throws(UserfaultfdError) in _ = try AnonymousMemory(length: 0) }),
    ("memory negative", .invalid, { _ throws(UserfaultfdError) in _ = try AnonymousMemory(length: -1) }),
    ("memory Int.max", .invalid, { _ throws(UserfaultfdError) in _ = try AnonymousMemory(length: .max) }),
    ("memory Int.min", .invalid, { _ throws(UserfaultfdError) in _ = try AnonymousMemory(length: .min) }),
    ("memory alignment 3", .invalid, { _ throws(UserfaultfdError) in _ = try AnonymousMemory(length: p, alignment: 3) }),
    ("memory alignment 0", .invalid, { _ throws(UserfaultfdError) in _ = try AnonymousMemory(length: p, alignment: 0) }),
    ("memory alignment negative", .invalid, { _ throws(UserfaultfdError) in _ = try AnonymousMemory(length: p, alignment: -p) }),
    ("memory alignment Int.min", .invalid, { _ throws(UserfaultfdError) in _ = try AnonymousMemory(length: p, alignment: .min) }),
    ("memory huge alignment", .invalid, { _ throws(UserfaultfdError) in _ = try AnonymousMemory(length: p, alignment: 1 << 62) }),
    ("advise negative offset", .invalid, { f throws(UserfaultfdError) in try f.source.advise(.dontNeed, offset: -p, length: p) }),
    ("advise past the end", .invalid, { f throws(UserfaultfdError) in try f.source.advise(.dontNeed, offset: 0, length: 8 * p) }),
    ("advise ragged offset", .invalid, { f throws(UserfaultfdError) in try f.source.advise(.dontNeed, offset: 5, length: p) }),
    ("advise Int.max length", .invalid, { f throws(UserfaultfdError) in try f.source.advise(.dontNeed, offset: p, length: .max) }),
    // logical move
    ("PageMover misaligned", .invalid, { f throws(UserfaultfdError) in _ = try PageMover(f.uffd).move(from: f.src + 1, to: f.dst, length: p) }),
    ("PageMover zero", .invalid, { f throws(UserfaultfdError) in _ = try PageMover(f.uffd).move(from: f.src, to: f.dst, length: 0) }),
    ("PageMover negative", .invalid, { f throws(UserfaultfdError) in _ = try PageMover(f.uffd).move(from: f.src, to: f.dst, length: -p) }),
    ("PageMover overlapping", .invalid, { f throws(UserfaultfdError) in _ = try PageMover(f.uffd).move(from: f.src, to: f.src + p, length: 2 * p) }),
    ("PageMover wraps", .invalid, { f throws(UserfaultfdError) in _ = try PageMover(f.uffd).move(from: f.src, to: f.top, length: 2 * p) }),
    ("PageMover maxPagesPerIoctl 0", .invalid, { f throws(UserfaultfdError) in
      _ = try PageMover(f.uffd).move(from: f.src, to: f.dst, length: p, policy: MovePolicy(maxPagesPerIoctl: 0)) }),
    ("PageMover maxPagesPerIoctl -1", .invalid, { f throws(UserfaultfdError) in
      _ = try PageMover(f.uffd).move(from: f.src, to: f.dst, length: p, policy: MovePolicy(maxPagesPerIoctl: -1)) }),
    ("PageMover maxPagesPerIoctl Int.max", .invalid, { f throws(UserfaultfdError) in
      _ = try PageMover(f.uffd).move(from: f.src, to: f.dst, length: p, policy: MovePolicy(busyPages: .copy, maxPagesPerIoctl: .max)) }),
    ("PageMover maxPagesPerIoctl Int.min", .invalid, { f throws(UserfaultfdError) in
      _ = try PageMover(f.uffd).move(from: f.src, to: f.dst, length: p, policy: MovePolicy(maxPagesPerIoctl: .min)) }),
    ("PageMover closed handle", .closed, { f throws(UserfaultfdError) in _ = try PageMover(f.closed).move(from: f.src, to: f.dst, length: p, policy: .copyFallback) }),
    ("PageMover strict without MOVE", .unsupported, { f throws(UserfaultfdError) in _ = try PageMover(f.uffd, usingMove: false).move(from: f.src, to: f.dst, length: p) }),
    ("PageMover populated destination", .invalid, { f throws(UserfaultfdError) in
      try f.uffd.zeroPage(f.dst + 3 * p, length: p)
      _ = try PageMover(f.uffd).move(from: f.src, to: f.dst, length: 4 * p, policy: .copyFallback) }),
    ("PageMover unmapped destination", .stopped, { f throws(UserfaultfdError) in
      let hole = (try? unmappedRange(pages: 4)) ?? f.top
      _ = try PageMover(f.uffd, usingMove: false).move(from: f.src, to: hole, length: 4 * p, policy: .copyFallback) }),
    // fault server and SIGBUS regions
    ("FaultServer blocking handle", .invalid, { _ throws(UserfaultfdError) in _ = try FaultServer(uffd: try Userfaultfd()) { _ in .zeroPage } }),
    ("FaultServer batch 0", .invalid, { f throws(UserfaultfdError) in _ = try FaultServer(uffd: f.uffd, configuration: .init(batchSize: 0)) { _ in .zeroPage } }),
    ("FaultServer batch negative", .invalid, { f throws(UserfaultfdError) in _ = try FaultServer(uffd: f.uffd, configuration: .init(batchSize: -1)) { _ in .zeroPage } }),
    ("FaultServer batch Int.max", .invalid, { f throws(UserfaultfdError) in _ = try FaultServer(uffd: f.uffd, configuration: .init(batchSize: .max)) { _ in .zeroPage } }),
    ("FaultServer attempts 0", .invalid, { f throws(UserfaultfdError) in _ = try FaultServer(uffd: f.uffd, configuration: .init(maxAttempts: 0)) { _ in .zeroPage } }),
    ("FaultServer attempts Int.max", .invalid, { f throws(UserfaultfdError) in _ = try FaultServer(uffd: f.uffd, configuration: .init(maxAttempts: .max)) { _ in .zeroPage } }),
    ("FaultServer closed handle", .closed, { f throws(UserfaultfdError) in _ = try FaultServer(uffd: f.closed) { _ in .zeroPage } }),
    ("SigbusRegion without the feature", .invalid, { f throws(UserfaultfdError) in _ = try SigbusRegion(uffd: f.uffd, start: f.src, length: p, source: .zeroPage) }),
    ("SigbusRegion misaligned", .invalid, { f throws(UserfaultfdError) in
      _ = try SigbusRegion(uffd: try Userfaultfd(features: [.sigbus]), start: f.src + 8, length: p, source: .zeroPage) }),
    ("SigbusRegion zero length", .invalid, { f throws(UserfaultfdError) in
      _ = try SigbusRegion(uffd: try Userfaultfd(features: [.sigbus]), start: f.src, length: 0, source: .zeroPage) }),
    ("SigbusRegion wraps", .invalid, { f throws(UserfaultfdError) in
      _ = try SigbusRegion(uffd: try Userfaultfd(features: [.sigbus]), start: f.top, length: 2 * p, source: .zeroPage) }),
    ("SigbusRegion copy source misaligned", .invalid, { f throws(UserfaultfdError) in
      _ = try SigbusRegion(uffd: try Userfaultfd(features: [.sigbus]), start: f.dst, length: p, source: .copy(from: f.src + 3)) }),
    ("SigbusRegion source overlaps", .invalid, { f throws(UserfaultfdError) in
      _ = try SigbusRegion(uffd: try Userfaultfd(features: [.sigbus]), start: f.src, length: 2 * p, source: .copy(from: f.src + p)) }),
  ]

  @Test func everyBadArgumentIsATypedErrorAndChangesNothing() throws {
    #expect(Self.cases.count >= 80)
    for (name, expected, body) in Self.cases {
      let fixture = try Fixture()
      var thrown: UserfaultfdError?
      do { try body(fixture) } catch { thrown = error }
      guard let thrown else {
        Issue.record("\(name): no error")
        continue
      }
      let kind: Expected =
        switch thrown {
        case .invalidArgument: .invalid
        case .notSupported, .featuresUnsupported: .unsupported
        case .closed: .closed
        case .moveStopped: .stopped
        default: .failed
        }
      #expect(kind == expected, "\(name): \(thrown)")
      #expect(!thrown.description.isEmpty)
      #expect(fixture.sourceIntact, "\(name): source data changed")
      if name != "PageMover populated destination" {
        #expect(fixture.destinationEmpty, "\(name): destination changed")
      }
    }
  }

  /// The heap's parameters, checked before anything is mapped.
  @Test(arguments: [(0, 1), (-1, 1), (Int.max, 1), (Int.min, 1), (1 << 20, -1), (1 << 20, 100_000)])
  func heapRejectsOutOfRangeSizes(capacity: Int, mutators: Int) {
    #expect(throws: HeapError.self) { _ = try Heap(capacity: capacity, mutators: mutators) }
  }

  @Test(.enabled(if: Kernel.hasSigbus, "needs UFFD_FEATURE_SIGBUS (Linux 4.14)"),
        arguments: [0, -1, Int.max, CompactionConfiguration.maxLoggedWordsPerMutator + 1])
  func compactorRejectsOutOfRangeLogs(words: Int) throws {
    let heap = try Heap(capacity: 2 << 20, mutators: 1)
    var configuration = CompactionConfiguration(strategy: .copy)
    configuration.loggedWordsPerMutator = words
    #expect(throws: HeapError.self) { _ = try Compactor(heap: heap, configuration: configuration) }
  }

  /// Under memory pressure (a low RLIMIT_AS in a child) a logical move that needs scratch memory
  /// stops with its report instead of aborting, and the source keeps every page.
  @Test func memoryPressureStopsAMoveWithItsReport() async {
    await #expect(processExitsWith: .success) {
      let uffd = try Userfaultfd()
      let pages = 512
      let source = try AnonymousMemory(length: pages * PageSize.base)
      let destination = try AnonymousMemory(length: pages * PageSize.base)
      try uffd.register(destination.baseAddress, length: destination.length, mode: .missing)
      for index in 0..<pages { fill(source.baseAddress + index * PageSize.base, seed: UInt64(index)) }
      // Leave almost no address space: the scratch mapping for the fallback cannot be made.
      let mapped = try String(contentsOfFile: "/proc/self/statm", encoding: .utf8).split(separator: " ")
      let current = (Int(mapped.first ?? "0") ?? 0) * PageSize.base
      guard cuffd_test_limit_address_space(UInt64(current + (1 << 20))) == 0 else { exit(2) }
      do throws(UserfaultfdError) {
        _ = try PageMover(uffd, usingMove: false).move(
          from: source.baseAddress, to: destination.baseAddress, length: pages * PageSize.base, policy: .copyFallback)
        // Enough memory after all: the move completed, which is fine too.
        exit(0)
      } catch {
        guard case .moveStopped(let report) = error else { exit(4) }
        for index in (report.bytesDone / PageSize.base)..<pages
        where !holds(source.baseAddress + index * PageSize.base, seed: UInt64(index)) { exit(3) }
        exit(0)
      }
    }
  }

  /// Messages that used to mislead.
  @Test(.enabled(if: Kernel.hasMove, "needs UFFDIO_MOVE (Linux 6.8)"))
  func moveIntoAnUnmappedDestinationBlamesTheDestination() throws {
    let uffd = try Userfaultfd()
    let source = try AnonymousMemory(length: 4 * Self.page)
    try source.advise(.populateWrite)
    let hole = try unmappedRange(pages: 4)
    let error = #expect(throws: UserfaultfdError.self) {
      _ = try PageMover(uffd).move(from: source.baseAddress, to: hole, length: 4 * Self.page)
    }
    guard let report = expectStopped(error) else { return }
    #expect(report.bytesDone == 0)
    if Mapping.containing(UInt(bitPattern: hole)) == nil {
      #expect(report.stop?.cause == .destinationUnmapped(Address(hole)))
    } else {
      // Another thread's mmap landed in the hole meanwhile (seen under qemu): the destination is
      // then mapped but not registered, and the move is refused without taking anything.
      #expect(report.stop?.cause != .sourceHole(Address(source.baseAddress)))
    }
  }

  @Test(.enabled(if: Kernel.hasMove, "needs UFFDIO_MOVE (Linux 6.8)"))
  func moveFromANeverMappedSourceDoesNotAdviseSkippingHoles() throws {
    let uffd = try Userfaultfd()
    let destination = try AnonymousMemory(length: 4 * Self.page)
    try uffd.register(destination.baseAddress, length: destination.length, mode: .missing)
    let hole = try unmappedRange(pages: 4)
    let error = #expect(throws: UserfaultfdError.self) {
      _ = try PageMover(uffd).move(from: hole, to: destination.baseAddress, length: 4 * Self.page)
    }
    guard let report = expectStopped(error) else { return }
    #expect(report.stop?.cause == .sourceUnmapped(Address(hole)))
  }

  @Test func errnoNamesAreSearchable() {
    #expect(ErrnoName.of(.tooManyOpenFiles) == "EMFILE")
    #expect(ErrnoName.of(.tooManyOpenFilesInSystem) == "ENFILE")
    #expect(ErrnoName.of(.deadlock) == "EDEADLK")
    #expect(ErrnoName.of(Errno(rawValue: 9999)) == "errno 9999")
  }

  @Test func unregisterInvalidMentionsAnotherHandle() {
    let failure = OperationFailure(operation: .unregister, errno: .invalidArgument, destination: Address(rawValue: 0), length: Self.page)
    #expect(failure.explanation == Explanation.of(.unregister, .invalidArgument, partial: false, bytesDone: 0))
    #expect(failure.explanation != Explanation.of(.wake, .invalidArgument, partial: false, bytesDone: 0),
            "unregister's EINVAL has its own explanation (another handle may own the range)")
  }
}
}

/// A root that is not an object of the heap is an error before compaction, never a trap.
@Suite("Guarantees: heap roots")
struct HeapRootTests {
  @Test(arguments: [UInt(1), UInt.max, UInt(8)])
  func rootsOutsideTheHeapAreRejected(offsetOrAddress: UInt) throws {
    let heap = try Heap(capacity: 2 << 20, mutators: 1)
    try Workload(seed: 5).populate(heap)
    let bogus = offsetOrAddress == UInt(8) ? heap.start + 8 : offsetOrAddress  // inside an object, or outside
    #expect(throws: HeapError.self) { try heap.addRoot(bogus, forMutator: 0) }
    #expect(throws: HeapError.self) { try heap.addRoot(heap.start, forMutator: 1) }
    #expect(heap.roots[0].allSatisfy { $0 != bogus }, "a refused root is not added")
    heap.roots[0].append(bogus)  // as if it had been corrupted after it was added
    #expect(throws: HeapError.self) { try heap.validateRoots() }
    #expect(throws: HeapError.self) { _ = try Compactor(heap: heap, configuration: .init(strategy: .copy, faultMode: .thread)).run() }
    _ = LiveMap(marking: heap)  // skips what is outside; no trap
  }
}
