import CUserfaultfdTestSupport
import Foundation
import Glibc
import Synchronization
import SystemPackage
import Testing
@testable import SnapshotPager
@testable import Userfaultfd

/// Snapshot restore into a separate process that behaves like a VMM (Firecracker's handshake): it
/// sends its userfaultfd and regions over a Unix socket, reads its memory in user mode and through
/// system calls, releases pages like a balloon, and exits or dies.
extension KernelTests {
@Suite("Snapshot server")
struct SnapshotServerTests {
  /// A snapshot file of `pages` pages of `pageSize` bytes, each page's bytes derived from its index;
  /// with `zeroRuns`, the first half of every run of that many pages is all zeros instead.
  final class Snapshot {
    let path: String
    init(pages: Int, pageSize: Int, name: String, zeroRuns: Int? = nil) throws {
      path = "/tmp/uffd-test-\(getpid())-\(name).snap"
      let fd = try FileDescriptor.open(FilePath(path), .writeOnly, options: [.create, .truncate], permissions: .ownerReadWrite)
      defer { try? fd.close() }
      var page = [UInt8](repeating: 0, count: pageSize)
      for index in 0..<pages {
        let zero = zeroRuns.map { index % $0 < $0 / 2 } ?? false
        page.withUnsafeMutableBytes { bytes in
          for offset in stride(from: 0, to: pageSize, by: 8) {
            let word = zero ? 0 : UInt64(index) &* 0x9E37_79B9_7F4A_7C15 ^ UInt64(offset)
            bytes.storeBytes(of: word, toByteOffset: offset, as: UInt64.self)
          }
        }
        _ = try page.withUnsafeBytes { try fd.writeAll(toAbsoluteOffset: Int64(index * pageSize), $0) }
      }
    }
    deinit { unlink(path) }
  }

  /// Runs one restore: the server on its own thread, the client in a child; returns the client's
  /// exit status and the server's summary. Every wait is bounded.
  func restore(
    pages: Int, huge: Bool = false, script: cuffd_test_vmm_script = CUFFD_TEST_VMM_FULL,
    configuration: SnapshotServer.Configuration = .init(), name: String, zeroRuns: Int? = nil
  ) throws -> (status: Int32, statistics: SnapshotServer.Statistics?) {
    let pageSize = huge ? PageSize.huge : PageSize.base
    let snapshot = try Snapshot(pages: pages, pageSize: pageSize, name: name, zeroRuns: zeroRuns)
    let socketPath = "/tmp/uffd-test-\(getpid())-\(name).sock"
    unlink(socketPath)
    defer { unlink(socketPath) }
    let listener = try UnixSocket.listen(at: socketPath)
    let child = cuffd_test_vmm_client(socketPath, snapshot.path, pages * pageSize, huge ? 1 : 0, Int32(script.rawValue))
    try #require(child > 0)
    guard let (server, client) = try SnapshotServer.accept(
      on: listener, snapshot: try SnapshotFile(path: snapshot.path), configuration: configuration, timeout: .seconds(20))
    else {
      _ = cuffd_test_wait(child, 0)
      Issue.record("the client never connected")
      return (-1, nil)
    }
    #expect(server.uffd.servesAnotherProcess)
    #expect(client.peerProcessID == child)
    let result = Mutex<SnapshotServer.Statistics?>(nil)
    let thread = try DedicatedThread { result.withLock { $0 = server.run(client: client) } }
    let status = cuffd_test_wait(child, 120_000)
    // The client is gone: the server must notice by itself.
    let finished = eventually(seconds: 10) { result.withLock { $0 != nil } }
    #expect(finished, "the server returned after the client went away")
    if !finished { server.stop() }
    thread.join()
    return (status, result.withLock { $0 })
  }

  @Test func restoresEveryByteAndServesReleasedPagesAsZeros() throws {
    let (status, statistics) = try restore(pages: 64, name: "full")
    #expect(status == 0, "the client's checks passed (exit code names the failing step)")
    let s = try #require(statistics)
    #expect(s.endReason == .clientHungUp)
    #expect(s.pagesByFault == 64, "every page was served once")
    #expect(s.releasedPages == 4 && s.zeroPages == 4, "the released pages came back as zeros")
    #expect(s.failedFaults == 0)
    #expect(s.fullResidency != nil)
  }

  @Test func demandFaultsOnlyAreOnePagePerFault() throws {
    let (status, statistics) = try restore(pages: 32, configuration: .init(faultAroundPages: 1), name: "demand")
    #expect(status == 0)
    let s = try #require(statistics)
    #expect(s.faults >= 32 && s.pagesByFault == 32)
  }

  @Test func prefetchStreamsWhatFaultsDidNotTouch() throws {
    let (status, statistics) = try restore(
      pages: 512, configuration: .init(faultAroundPages: 16, prefetch: true, prefetchPages: 64), name: "prefetch")
    #expect(status == 0)
    let s = try #require(statistics)
    #expect(s.pagesByFault + s.pagesByPrefetch == 512, "each page came in exactly once")
    #expect(s.zeroPages == 4)
  }

  /// The prefetch pool copies outside the session lock, on two threads: a balloon releasing
  /// blocks while it streams (a copy may be in flight over a block as its REMOVE is read) must
  /// still find zeros in every released block, and the snapshot's bytes everywhere else.
  @Test(arguments: 1...3)
  func parallelPrefetchNeverCopiesOverReleasedPages(attempt: Int) throws {
    let pages = 4096
    let (status, statistics) = try restore(
      pages: pages, script: CUFFD_TEST_VMM_BALLOON,
      configuration: .init(faultAroundPages: 16, prefetch: true, prefetchPages: 512, prefetchThreads: 2),
      name: "balloon-\(attempt)")
    #expect(status == 0, "released blocks read zero, the others the snapshot (exit code names the failing check)")
    let s = try #require(statistics)
    #expect(s.releasedPages == pages / 4, "every fourth 64 KiB block was released once")
    #expect(s.failedFaults == 0 && s.prefetchErrors == 0)
  }

  /// All-zero snapshot pages are mapped with ZEROPAGE (nothing copied); the client still reads
  /// every byte right, and releasing a zero-mapped page still reads zero.
  @Test func prefetchMapsZeroPagesWithoutCopying() throws {
    let (status, statistics) = try restore(
      pages: 1024, configuration: .init(faultAroundPages: 16, prefetch: true, prefetchPages: 512, prefetchThreads: 2),
      name: "prefetch-zeros", zeroRuns: 64)
    #expect(status == 0)
    let s = try #require(statistics)
    #expect(s.pagesByFault + s.pagesByPrefetch == 1024, "each page came in exactly once")
    #expect(s.zeroPagesByPrefetch > 0 && s.zeroPagesByPrefetch <= 512, "zero pages were mapped, never more than there are")
    #expect(s.zeroPages == 4)
  }

  @Test func aClientKilledMidRestoreEndsTheServerCleanly() throws {
    let (status, statistics) = try restore(pages: 64, script: CUFFD_TEST_VMM_DIE, name: "killed")
    #expect(status == 128 + SIGKILL)
    let s = try #require(statistics)
    #expect(s.endReason == .clientHungUp || s.endReason == .processGone)
    #expect(s.failedFaults == 0)
  }

  @Test(arguments: SnapshotServer.Configuration.Install.allCases)
  func inProcessInstallsDeliverTheSnapshot(install: SnapshotServer.Configuration.Install) throws {
    if install == .readAndMove && !PageMover.moveVerdict.isUsable {
      print("SKIP read+move: UFFDIO_MOVE is not usable here (needs Linux 6.8+): \(PageMover.moveVerdict)")
      return
    }
    let page = PageSize.base
    let snapshot = try Snapshot(pages: 64, pageSize: page, name: "install-\(install.rawValue)")
    let uffd = try Userfaultfd(features: [.eventRemove], options: .nonBlocking)
    let region = try AnonymousMemory(length: 64 * page)
    try uffd.register(region.baseAddress, length: region.length, mode: .missing)
    let server = try SnapshotServer(
      uffd: uffd, regions: [GuestRegion(base: Address(region.baseAddress), size: region.length, offset: 0)],
      snapshot: try SnapshotFile(path: snapshot.path), configuration: .init(faultAroundPages: 8, install: install))
    let result = Mutex<SnapshotServer.Statistics?>(nil)
    let serving = try DedicatedThread { result.withLock { $0 = server.run() } }
    let expected = try SnapshotFile(path: snapshot.path)
    let base = Address(region.baseAddress)
    let right = Atomic<Bool>(false)
    let reader = TestThread {
      let same = (0..<64).allSatisfy { index in
        guard let snapshotBytes = expected.bytes.baseAddress else { return false }
        return memcmp((base + index * page).mapped, snapshotBytes + index * page, page) == 0
      }
      right.store(same, ordering: .relaxed)
    }
    #expect(reader.join())
    server.stop()
    serving.join()
    let same = right.load(ordering: .relaxed)
    #expect(same, "every byte as in the snapshot")
    #expect(result.withLock { $0?.pagesByFault } == 64)
  }

  @Test func readAndMoveIsRefusedAtSetupForAnotherProcess() throws {
    let original = try Userfaultfd()
    let adopted = try Userfaultfd(adopting: FileDescriptor(rawValue: dup(original.fileDescriptor.rawValue)))
    let snapshot = try Snapshot(pages: 4, pageSize: PageSize.base, name: "refuse")
    let error = #expect(throws: UserfaultfdError.self) {
      _ = try SnapshotServer(
        uffd: adopted, regions: [GuestRegion(base: 0x10_0000, size: 4 * PageSize.base, offset: 0)],
        snapshot: try SnapshotFile(path: snapshot.path), configuration: .init(install: .readAndMove))
    }
    #expect({ if case .notSupported(.move, _)? = error { true } else { false } }())
  }

  @Test(.enabled(if: HugePages.canReserve, "needs 2 MiB hugetlb pages: none could be reserved (vm.nr_hugepages)"))
  func restoresHugetlbfsMemoryInTwoMiBPages() throws {
    try HugePages.withReserved(8) {
      let (status, statistics) = try restore(pages: 4, huge: true, name: "huge")
      #expect(status == 0)
      let s = try #require(statistics)
      #expect(s.pagesByFault == 4, "four 2 MiB pages, each one copy")
      #expect(s.bytesServed == 4 * PageSize.huge)
    }
  }
}
}

/// Reserving 2 MiB hugetlb pages for a test, and giving them back afterwards, even on failure.
enum HugePages {
  static let path = "/proc/sys/vm/nr_hugepages"

  static func read() -> Int? {
    guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { return nil }
    return Int(text.trimmingCharacters(in: .whitespacesAndNewlines))
  }

  static func write(_ count: Int) -> Bool {
    guard let fd = try? FileDescriptor.open(FilePath(path), .writeOnly) else { return false }
    defer { try? fd.close() }
    return (try? fd.writeAll(Array("\(count)\n".utf8))) != nil
  }

  static var free: Int? {
    guard let text = try? String(contentsOfFile: "/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages", encoding: .utf8)
    else { return nil }
    return Int(text.trimmingCharacters(in: .whitespacesAndNewlines))
  }

  /// Held while a test changes the reservation: suites run in parallel, and two tests reading
  /// and restoring `nr_hugepages` around each other would take pages from one another's clients
  /// mid-restore and leave the machine's setting changed.
  static let changing = Mutex(())

  /// Whether 8 pages can be reserved now (tries, and gives them back).
  static var canReserve: Bool {
    changing.withLock { _ in
      guard PageSize.huge == 2 << 20, let before = read() else { return false }
      defer { _ = write(before) }
      guard write(before + 8) else { return false }
      return (free ?? 0) >= 8
    }
  }

  static func withReserved(_ count: Int, _ body: () throws -> Void) throws {
    try changing.withLock { _ in
      guard let before = read() else { throw UserfaultfdError.systemCallFailed("read \(path)", .noSuchFileOrDirectory) }
      defer { _ = write(before) }
      _ = write(before + count)
      try body()
    }
  }
}
