import CUserfaultfdTestSupport
import Foundation
import Glibc
import Logging
import Synchronization
import Testing
@testable import SnapshotPager
@testable import Userfaultfd

/// Each ended session's summary, as a pager reports them.
final class EndedSessions: Sendable {
  let list = Mutex<[SnapshotServer.Statistics]>([])
}

/// Log lines a test reads back (warnings and above, with their metadata).
final class CapturedLog: Sendable {
  let lines = Mutex<[String]>([])

  var logger: Logger {
    Logger(label: "test.capture") { _ in Handler(log: self) }
  }

  func contains(_ text: String) -> Bool { lines.withLock { $0.contains { $0.contains(text) } } }

  struct Handler: LogHandler {
    let log: CapturedLog
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level = .info
    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
      get { metadata[key] }
      set { metadata[key] = newValue }
    }
    func log(level: Logger.Level, message: Logger.Message, metadata: Logger.Metadata?, source: String,
             file: String, function: String, line: UInt) {
      let all = self.metadata.merging(metadata ?? [:]) { $1 }
      log.lines.withLock { $0.append("\(level) \(message) \(all)") }
    }
  }
}

/// Working sets against the real kernel: a VMM-like client's restore recorded, then the next
/// client's replayed ahead of its faults (4 KiB and hugetlbfs 2 MiB pages), released pages never
/// replayed over, stale and corrupt files refused and served on demand. Every wait is bounded.
extension KernelTests {
@Suite("Working-set record and replay")
struct WorkingSetReplayTests {
  typealias Snapshot = SnapshotServerTests.Snapshot

  /// A pager recording into and replaying from `directory`; `ended` gets each session's summary.
  static func withPager<T>(
    socket: String, snapshot: String, directory: String, log: CapturedLog? = nil,
    ended: EndedSessions, _ body: (SnapshotPagerHost) throws -> T
  ) throws -> T {
    var configuration = PagerConfiguration(listens: [.init(socketPath: socket, snapshotPath: snapshot)], loops: 2)
    configuration.handshakeTimeout = .seconds(5)
    configuration.workingSets = WorkingSetSettings(
      recordDirectory: directory, replayDirectory: directory, traces: 1, settle: SettleDetector(window: .milliseconds(300)))
    let pager = try SnapshotPagerHost(configuration: configuration, logger: log?.logger ?? PagerFixture.quietLogger) { statistics in
      ended.list.withLock { $0.append(statistics) }
    }
    try pager.start()
    defer {
      pager.stop()
      #expect(pager.waitUntilFinished(timeout: .seconds(20)), "the pager stopped within 20 s")
    }
    return try body(pager)
  }

  static func directory(_ name: String) -> String {
    let path = "/tmp/uffd-test-\(getpid())-\(name)"
    try? FileManager.default.removeItem(atPath: path)
    mkdir(path, 0o700)
    return path
  }

  static func client(_ socket: String, _ snapshot: String, pages: Int, huge: Bool, _ script: cuffd_test_restore_script) -> Int32 {
    let size = pages * (huge ? PageSize.huge : PageSize.base)
    let pid = cuffd_test_restore_client(socket, snapshot, size, huge ? 1 : 0, Int32(script.rawValue), nil, 0)
    return pid > 0 ? cuffd_test_wait(pid, 60_000) : -1
  }

  func recordThenReplay(pages: Int, huge: Bool, name: String) throws {
    let pageSize = huge ? PageSize.huge : PageSize.base
    let snapshot = try Snapshot(pages: pages, pageSize: pageSize, name: name)
    let directory = Self.directory(name)
    defer { try? FileManager.default.removeItem(atPath: directory) }
    let socket = PagerFixture.socketPath(name)
    let ended = EndedSessions()
    let workingSetPath = "\(directory)/\((snapshot.path as NSString).lastPathComponent).wset"
    try Self.withPager(socket: socket, snapshot: snapshot.path, directory: directory, ended: ended) { pager in
      // The first clone: served on demand, recorded.
      #expect(Self.client(socket, snapshot.path, pages: pages, huge: huge, CUFFD_TEST_RESTORE_WORKING_SET) == 0,
              "the recorded client read every byte of its working set right")
      #expect(eventually(seconds: 10) { access(workingSetPath, F_OK) == 0 }, "the working set was written")
      let set = try WorkingSet.read(from: workingSetPath, expecting: try SnapshotIdentity(path: snapshot.path))
      let granulesPerPage = pageSize / set.granule
      let recorded = Set(set.pages.map { Int($0) / granulesPerPage })
      let touched = (0..<pages).filter { cuffd_test_restore_in_working_set($0, pages, huge ? 1 : 0) != 0 }
      #expect(Set(touched).isSubset(of: recorded), "every page the client touched is in the working set")
      #expect(recorded.count <= touched.count * 2 + 16, "and little else (the fault-around neighbours)")
      let first = try #require(ended.list.withLock { $0.first })
      // The next clone: replayed ahead of its faults; it releases part of the set first.
      #expect(Self.client(socket, snapshot.path, pages: pages, huge: huge, CUFFD_TEST_RESTORE_RELEASE_THEN_WORKING_SET) == 0,
              "the replayed client read every byte right, and zeros where it had released pages")
      #expect(eventually(seconds: 10) { ended.list.withLock { $0.count } == 2 })
      let second = try #require(ended.list.withLock { $0.last })
      // At most a tenth of the recorded clone's faults; one fault may race the replay's first step
      // on a slow machine (qemu TCG: the huge-page case records only 2 faults).
      #expect(second.faults <= max(1, first.faults / 10), "replay took at most a tenth of the faults (\(second.faults) against \(first.faults))")
      #expect(second.pagesByReplay > 0, "pages came by replay")
      if !huge {
        #expect(second.releasedPages > 0, "the client released part of the working set")
        #expect(second.zeroPages == 0, "its released pages were zero-filled by the kernel, with no round trip to the pager")
      }
      #expect(second.failedFaults == 0 && first.failedFaults == 0)
      #expect(pager.totalSessions == 2)
    }
  }

  @Test func aRecordedWorkingSetIsReplayedIntoTheNextClone() throws {
    try recordThenReplay(pages: 1024, huge: false, name: "ws-base")
  }

  @Test(.enabled(if: HugePages.canReserve, "needs 2 MiB hugetlb pages: none could be reserved (vm.nr_hugepages)"))
  func aRecordedWorkingSetIsReplayedInHugePages() throws {
    try HugePages.withReserved(8) { try recordThenReplay(pages: 8, huge: true, name: "ws-huge") }
  }

  @Test func staleAndCorruptWorkingSetsAreRefusedAndServedOnDemand() throws {
    let pages = 256
    let snapshot = try Snapshot(pages: pages, pageSize: PageSize.base, name: "ws-stale")
    let directory = Self.directory("ws-stale")
    defer { try? FileManager.default.removeItem(atPath: directory) }
    let socket = PagerFixture.socketPath("ws-stale")
    let workingSetPath = "\(directory)/\((snapshot.path as NSString).lastPathComponent).wset"
    let identity = try SnapshotIdentity(path: snapshot.path)
    // A stale file: recorded for another generation of the snapshot.
    var stale = identity
    stale.modifiedNanoseconds &+= 1
    try WorkingSet(snapshot: stale, pages: (0..<64).map(UInt64.init)).write(to: workingSetPath)
    // And, for the second pager, a corrupt one: right identity, a flipped byte.
    var corrupt = WorkingSet(snapshot: identity, pages: (0..<64).map(UInt64.init)).encode()
    corrupt[100] ^= 0x40
    for (file, expected) in [(nil as [UInt8]?, "stale"), (corrupt, "corrupt")] {
      if let file { try Data(file).write(to: URL(fileURLWithPath: workingSetPath)) }
      let log = CapturedLog()
      let ended = EndedSessions()
      var configuration = PagerConfiguration(listens: [.init(socketPath: socket, snapshotPath: snapshot.path)], loops: 1)
      configuration.workingSets = WorkingSetSettings(replayDirectory: directory)
      let pager = try SnapshotPagerHost(configuration: configuration, logger: log.logger) { statistics in ended.list.withLock { $0.append(statistics) } }
      try pager.start()
      #expect(Self.client(socket, snapshot.path, pages: pages, huge: false, CUFFD_TEST_RESTORE_WORKING_SET) == 0,
              "the client is served on demand, every byte right")
      pager.stop()
      #expect(pager.waitUntilFinished(timeout: .seconds(20)))
      #expect(log.contains("working set refused, serving on demand") && log.contains(expected), "a clear log line says \(expected)")
      let statistics = try #require(ended.list.withLock { $0.first })
      #expect(statistics.pagesByReplay == 0 && statistics.faults > 0, "nothing was replayed")
    }
  }
}
}
