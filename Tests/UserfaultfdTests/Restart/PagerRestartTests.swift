import CUserfaultfdTestSupport
import Foundation
import Glibc
import Testing
@testable import SnapshotPager
@testable import Userfaultfd

/// `uffd serve` as a process, killed with SIGKILL while VMM-like clients fault, started again on
/// its state directory: every client finishes with every byte right, no page the client wrote is
/// copied over, no thread is left blocked. Every wait is bounded; every process started is killed
/// on every path.
extension KernelTests {
@Suite("Pager restart")
struct PagerRestartTests {
  typealias Snapshot = SnapshotServerTests.Snapshot

  /// The `uffd` executable built beside this test bundle.
  static var uffdPath: String {
    let executable = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
    return (executable as NSString).deletingLastPathComponent + "/uffd"
  }

  /// A running `uffd serve`, its log in a file.
  final class Daemon {
    let process = Process()
    let logPath: String

    init(_ arguments: [String], log: String) throws {
      logPath = log
      FileManager.default.createFile(atPath: log, contents: nil)
      process.executableURL = URL(fileURLWithPath: PagerRestartTests.uffdPath)
      process.arguments = ["serve"] + arguments
      process.standardError = try FileHandle(forWritingTo: URL(fileURLWithPath: log))
      process.standardOutput = FileHandle.nullDevice
      try process.run()
    }

    var log: String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }

    func kill(_ signal: Int32) { if process.isRunning { Glibc.kill(process.processIdentifier, signal) } }

    /// Waits (bounded) for the process to exit; its status, or nil when it had to be killed.
    func wait(seconds: Double) -> Int32? {
      let deadline = Date().addingTimeInterval(seconds)
      while process.isRunning && Date() < deadline { usleep(10_000) }
      guard !process.isRunning else {
        kill(SIGKILL)
        process.waitUntilExit()
        return nil
      }
      return process.terminationStatus
    }

    deinit {
      kill(SIGKILL)
      if process.isRunning { process.waitUntilExit() }
    }
  }

  /// Shared memory the clients count their pages in.
  final class Progress {
    let counters: UnsafeMutablePointer<Int>
    let count: Int
    init(_ count: Int) throws {
      guard let memory = mmap(nil, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0), memory != MAP_FAILED else {
        throw UserfaultfdError.systemCallFailed("mmap", .current)
      }
      counters = memory.bindMemory(to: Int.self, capacity: count)
      self.count = count
      for index in 0..<count { counters[index] = 0 }
    }
    deinit { munmap(counters, 4096) }
    func pages(_ index: Int) -> Int { cuffd_test_restore_progress(counters + index) }
  }

  /// Kills the daemon at each of `killAt` (fractions of the first client's pages), starting a new
  /// one on the same state directory each time; every client must finish with every check passed.
  func restoreThroughKills(name: String, pages: Int, clients: Int, killAt: [Double], extra: [String] = [], pauseMicroseconds: Int32,
                          whilePrefetching: Bool = false) throws {
    let snapshot = try Snapshot(pages: pages, pageSize: PageSize.base, name: name)
    let stateDirectory = "/tmp/uffd-test-\(getpid())-\(name)-state"
    try? FileManager.default.removeItem(atPath: stateDirectory)
    defer { try? FileManager.default.removeItem(atPath: stateDirectory) }
    let socket = PagerFixture.socketPath(name)
    let arguments = ["--listen", "\(socket)=\(snapshot.path)", "--state-dir", stateDirectory, "--loops", "2",
                     "--handshake-timeout", "5", "--drain-timeout", "5"] + extra
    var generation = 0
    func start() throws -> Daemon {
      generation += 1
      return try Daemon(arguments, log: "/tmp/uffd-test-\(getpid())-\(name)-\(generation).log")
    }
    var daemon = try start()
    defer { for index in 1...generation { unlink("/tmp/uffd-test-\(getpid())-\(name)-\(index).log") } }
    #expect(eventually(seconds: 20) { access(socket, F_OK) == 0 }, "the daemon listens")
    let progress = try Progress(clients)
    let children = (0..<clients).map { index in
      cuffd_test_restore_client(socket, snapshot.path, pages * PageSize.base, 0, Int32(CUFFD_TEST_RESTORE_SLOW_FULL.rawValue),
                                progress.counters + index, pauseMicroseconds)
    }
    defer { for child in children where child > 0 { _ = cuffd_test_wait(child, 0) } }  // reaped, killed if still there
    #expect(children.allSatisfy { $0 > 0 })
    for point in killAt {
      let target = Int(Double(pages) * point)
      // Every client's session has started (a client whose handshake no pager has read yet is
      // known to none: see the restoring-snapshots article).
      #expect(eventually(seconds: 30) { (0..<clients).allSatisfy { progress.pages($0) > 0 } && progress.pages(0) >= target },
              "every client is being restored and the first reached \(Int(point * 100))%")
      daemon.kill(SIGKILL)
      #expect(daemon.wait(seconds: 10) != nil, "the killed daemon is gone")
      // The clients are stuck now: nobody serves their next missing page.
      let stuck = (0..<clients).map { progress.pages($0) }
      usleep(100_000)
      let before = (0..<clients).map { progress.pages($0) }
      if !whilePrefetching {
        #expect(zip(stuck, before).contains { $0 == $1 && $0 < pages }, "a client waits for a page while no pager runs")
      }
      daemon = try start()
      #expect(eventually(seconds: 20) { daemon.log.contains("session re-adopted") || daemon.log.contains("session not re-adopted") },
              "the new daemon took the sessions up")
      if whilePrefetching {
        // The kill landed before the prefetch had brought everything in.
        let present = daemon.log.split(separator: "\n").filter { $0.contains("session re-adopted") }.compactMap { line in
          line.split(separator: " ").first { $0.hasPrefix("present_pages=") }.flatMap { Int($0.dropFirst("present_pages=".count)) }
        }
        #expect(present.contains { $0 < pages }, "a session was killed mid-prefetch (present pages \(present) of \(pages))")
      }
    }
    let statuses = children.map { $0 > 0 ? cuffd_test_wait($0, 60_000) : -1 }
    #expect(statuses == Array(repeating: 0, count: clients),
            "every client restored every byte, found its markers intact, and read zeros where it released pages (log: \(daemon.log.suffix(2000)))")
    #expect(!daemon.log.contains("session not re-adopted"), "every live session was re-adopted")
    #expect(eventually(seconds: 10) {
      ((try? FileManager.default.contentsOfDirectory(atPath: stateDirectory)) ?? ["?"]).filter { $0.hasSuffix(".json") }.isEmpty
    }, "the sessions' state went with them")
    daemon.kill(SIGTERM)
    #expect(daemon.wait(seconds: 20) == 0, "SIGTERM drains the last daemon, exit 0")
  }

  @Test func aStateDirectoryServesOnePagerAtATime() throws {
    let directory = "/tmp/uffd-test-\(getpid())-state-lock"
    try? FileManager.default.removeItem(atPath: directory)
    defer { try? FileManager.default.removeItem(atPath: directory) }
    func pager(_ name: String) throws -> SnapshotPagerHost {
      var configuration = PagerConfiguration(controlPath: PagerFixture.socketPath(name), loops: 1)
      configuration.stateDirectory = directory
      return try SnapshotPagerHost(configuration: configuration, logger: PagerFixture.quietLogger)
    }
    let first = try pager("lock-1")
    try first.start()
    let second = try pager("lock-2")
    #expect(throws: UserfaultfdError.self, "a second pager on the same state directory is refused") { try second.start() }
    first.stop()
    #expect(first.waitUntilFinished(timeout: .seconds(10)))
    let third = try pager("lock-3")
    try third.start()  // the directory is free again once the first has stopped
    third.stop()
    #expect(third.waitUntilFinished(timeout: .seconds(10)))
  }

  @Test func aNewPagerTakesOverEverySessionAndSocketWithoutAGap() throws {
    let pages = 2048
    let snapshot = try Snapshot(pages: pages, pageSize: PageSize.base, name: "takeover")
    let socket = PagerFixture.socketPath("takeover")
    let control = PagerFixture.socketPath("takeover-control")
    func configuration(takeover: Bool) -> PagerConfiguration {
      var configuration = PagerConfiguration(listens: [.init(socketPath: socket, snapshotPath: snapshot.path)], controlPath: control, loops: 2)
      configuration.handshakeTimeout = .seconds(5)
      if takeover { configuration.takeoverControlPath = control }
      return configuration
    }
    let old = try SnapshotPagerHost(configuration: configuration(takeover: false), logger: PagerFixture.quietLogger)
    try old.start()
    defer {
      old.stop()
      _ = old.waitUntilFinished(timeout: .seconds(10))
    }
    let progress = try Progress(3)
    let children = (0..<3).map { index in
      cuffd_test_restore_client(socket, snapshot.path, pages * PageSize.base, 0, Int32(CUFFD_TEST_RESTORE_SLOW_FULL.rawValue),
                                progress.counters + index, 2000)
    }
    defer { for child in children where child > 0 { _ = cuffd_test_wait(child, 0) } }
    #expect(eventually(seconds: 30) { (0..<3).allSatisfy { progress.pages($0) > 0 } && progress.pages(0) >= pages / 3 },
            "every client is being restored")
    // The upgrade: a new pager takes everything from the running one.
    let new = try SnapshotPagerHost(configuration: configuration(takeover: true), logger: PagerFixture.quietLogger)
    try new.start()
    defer {
      new.stop()
      #expect(new.waitUntilFinished(timeout: .seconds(20)))
    }
    #expect(old.waitUntilFinished(timeout: .seconds(10)), "the old pager stopped after handing over")
    #expect(new.activeSessions == 3, "the new pager serves the three sessions")
    #expect(access(socket, F_OK) == 0 && access(control, F_OK) == 0, "the socket paths stayed: they are the new pager's")
    let statuses = children.map { $0 > 0 ? cuffd_test_wait($0, 60_000) : -1 }
    #expect(statuses == [0, 0, 0], "every client restored every byte with its markers intact")
    // New clients reach the new pager at the same path.
    let later = cuffd_test_restore_client(socket, snapshot.path, pages * PageSize.base, 0, Int32(CUFFD_TEST_RESTORE_WORKING_SET.rawValue), nil, 0)
    #expect(later > 0 && cuffd_test_wait(later, 60_000) == 0, "a client after the takeover is served")
    #expect(eventually(seconds: 10) { new.activeSessions == 0 })
  }

  /// Why sessions cannot be re-adopted on this kernel, if they cannot (pidfd_getfd: Linux 5.6).
  static let unavailable = SnapshotPagerHost.pidfdGetfdUnavailable()

  @Test(.enabled(if: unavailable == nil, "needs pidfd_getfd (Linux 5.6): \(unavailable ?? "")"))
  func aPagerKilledMidRestoreIsRestartedAndEveryClientFinishes() throws {
    try #require(FileManager.default.isExecutableFile(atPath: Self.uffdPath), "the uffd executable is built beside the tests")
    // Demand faults with fault-around, killed at 30% and again at 70% of the first client.
    try restoreThroughKills(name: "restart-demand", pages: 2048, clients: 3, killAt: [0.3, 0.7], pauseMicroseconds: 2000)
  }

  @Test(.enabled(if: unavailable == nil, "needs pidfd_getfd (Linux 5.6): \(unavailable ?? "")"))
  func aPagerKilledWhilePrefetchingInLargeBatchesIsRestarted() throws {
    try #require(FileManager.default.isExecutableFile(atPath: Self.uffdPath), "the uffd executable is built beside the tests")
    // Prefetch in 2 MiB copies while the clients fault: a kill lands between or during batches.
    try restoreThroughKills(
      name: "restart-prefetch", pages: 32768, clients: 2, killAt: [0.0005], extra: ["--prefetch", "--prefetch-pages", "512"],
      pauseMicroseconds: 1000, whilePrefetching: true)
  }
}
}
