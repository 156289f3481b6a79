import CUserfaultfdReference
import Foundation
import Logging
import SnapshotPager
import Synchronization
import Userfaultfd

/// `uffd bench restore`'s working-set rows: `recorded` (a clone's working set recorded by the
/// daemon's code, replayed into the next clone of the same snapshot, which reads the same working
/// set) and `restart` (the daemon, a separate `uffd serve` process with a state directory, killed
/// with SIGKILL when the first of several clones has read half its working set and started again:
/// the time from the restart until every clone has its working set, pages copied over a page a
/// clone had written, reads that stalled 50 ms or more, clones that finished). Beside them, the
/// `boot` pattern served on demand by the daemon and by the C handler, the baselines of the
/// recorded boot row (random-10pct's are the table's own rows).
extension RestoreBenchmark {
  /// The working sets of these rows.
  package enum WorkingSetPattern: String, CaseIterable, Sendable {
    /// A tenth of the pages in 64 KiB runs placed by a seed (not the other rows' placement).
    case random10pct = "random-10pct"
    /// Four sequential runs, then a random tail of 64 KiB runs (10% of the pages in all).
    case boot

    var reference: Int32 {
      switch self {
      case .random10pct: Int32(CUFFD_REF_WS_RANDOM_10PCT.rawValue)
      case .boot: Int32(CUFFD_REF_WS_BOOT.rawValue)
      }
    }
  }

  /// The seed of the working-set rows' clones.
  static let workingSetSeed: UInt64 = 7
  /// Clones in the restart row.
  static let restartClients = 4

  /// Shared memory for clone results (the clones are forked processes).
  final class SharedResults {
    let results: UnsafeMutablePointer<cuffd_ref_ws_result>
    let count: Int
    private let length: Int

    init(_ count: Int) throws {
      length = max(4096, count * MemoryLayout<cuffd_ref_ws_result>.stride)
      guard let memory = mmap(nil, length, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0), memory != MAP_FAILED else {
        throw ToolError("mmap: \(String(cString: strerror(errno)))")
      }
      results = memory.bindMemory(to: cuffd_ref_ws_result.self, capacity: count)
      self.count = count
    }

    deinit { munmap(results, length) }

    func progress(_ index: Int) -> Int64 {
      withUnsafeMutablePointer(to: &results[index].progress) { pointer in
        UnsafeAtomicLoad(pointer)
      }
    }
  }

  /// One clone of `pattern` against `socket`, waited for (bounded).
  func runClone(socket: String, size: Int, pattern: WorkingSetPattern, markers: Bool = false) throws -> cuffd_ref_ws_result {
    let shared = try SharedResults(1)
    let child = cuffd_ref_ws_client(socket, size, pattern.reference, Self.workingSetSeed, markers ? 1 : 0, shared.results)
    guard child > 0 else { throw ToolError("fork: \(String(cString: strerror(errno)))") }
    let status = cuffd_ref_wait(child, 60_000)
    guard status == 0, shared.results[0].status == 0 else {
      throw ToolError("the working-set clone failed (status \(status), step \(shared.results[0].status))")
    }
    return shared.results[0]
  }

  /// The daemon's code serving `pattern`: on demand, or (`recorded`) a first clone recorded and
  /// the second replayed; the second clone's sample.
  func measureWorkingSet(_ pattern: WorkingSetPattern, recorded: Bool, path: String, snapshot: SnapshotFile) throws -> Sample {
    let socketPath = NSTemporaryDirectory() + "uffd-bench-restore-ws-\(getpid()).sock"
    let directory = NSTemporaryDirectory() + "uffd-bench-restore-ws-\(getpid())"
    try? FileManager.default.removeItem(atPath: directory)
    mkdir(directory, 0o700)
    defer { try? FileManager.default.removeItem(atPath: directory) }
    var configuration = PagerConfiguration(
      listens: [.init(socketPath: socketPath, snapshotPath: path)], maxSessions: 4,
      // Demand only: one page a fault (the table's demand rows); recorded: the daemon's default
      // fault-around beside the replay.
      server: .init(faultAroundPages: recorded ? 16 : 1))
    configuration.handshakeTimeout = .seconds(30)
    if recorded {
      configuration.workingSets = WorkingSetSettings(recordDirectory: directory, replayDirectory: directory, traces: 1)
    }
    var logger = Logger(label: "bench.restore.pager")
    logger.logLevel = .error
    let ended = Mutex<[SnapshotServer.Statistics]>([])
    let pager = try SnapshotPagerHost(configuration: configuration, logger: logger) { statistics in
      ended.withLock { $0.append(statistics) }
    }
    try pager.start()
    defer {
      pager.stop()
      _ = pager.waitUntilFinished(timeout: .seconds(10))
    }
    func waitEnded(_ count: Int) throws -> SnapshotServer.Statistics {
      let deadline = ContinuousClock.now + .seconds(10)
      while ended.withLock({ $0.count < count }) && ContinuousClock.now < deadline { usleep(1000) }
      guard let statistics = ended.withLock({ $0.count >= count ? $0[count - 1] : nil }), statistics.failedFaults == 0 else {
        throw ToolError("the daemon's session did not end cleanly")
      }
      return statistics
    }
    if recorded {
      _ = try runClone(socket: socketPath, size: snapshot.length, pattern: pattern)
      _ = try waitEnded(1)
      let file = "\(directory)/\((path as NSString).lastPathComponent).wset"
      let deadline = ContinuousClock.now + .seconds(10)
      while access(file, F_OK) != 0 && ContinuousClock.now < deadline { usleep(1000) }
      guard access(file, F_OK) == 0 else { throw ToolError("the working set was not written") }
    }
    let result = try runClone(socket: socketPath, size: snapshot.length, pattern: pattern)
    let statistics = try waitEnded(recorded ? 2 : 1)
    return Sample(
      firstByteUs: Double(result.first_byte_ns) / 1000, completeMs: Double(result.complete_ns) / 1e6,
      pagesTouched: Int(result.pages_touched), faults: statistics.faults,
      p50Us: statistics.faultLatencyP50.microseconds, p99Us: statistics.faultLatencyP99.microseconds)
  }

  /// The C handler (one UFFDIO_COPY per 4 KiB fault) serving `pattern`.
  func measureWorkingSetReference(_ pattern: WorkingSetPattern, snapshot: SnapshotFile) throws -> Sample {
    let socketPath = NSTemporaryDirectory() + "uffd-bench-restore-wsref-\(getpid()).sock"
    unlink(socketPath)
    defer { unlink(socketPath) }
    let listener = try UnixSocket.listen(at: socketPath)
    var latencies = [Int64](repeating: 0, count: snapshot.length / PageSize.base + 1)
    let shared = try SharedResults(1)
    let child = cuffd_ref_ws_client(socketPath, snapshot.length, pattern.reference, Self.workingSetSeed, 0, shared.results)
    guard child > 0 else { throw ToolError("fork: \(String(cString: strerror(errno)))") }
    let (result, count) = Self.serveWithCReference(listener, snapshot: snapshot, latencies: &latencies)
    let status = cuffd_ref_wait(child, 60_000)
    guard result == 0, status == 0, shared.results[0].status == 0 else {
      throw ToolError("the C reference restore failed (\(result), client \(status))")
    }
    let sorted = latencies.prefix(count).sorted()
    func percentile(_ p: Double) -> Double {
      sorted.isEmpty ? 0 : Double(sorted[min(sorted.count - 1, Int(Double(sorted.count) * p))]) / 1000
    }
    let clone = shared.results[0]
    return Sample(
      firstByteUs: Double(clone.first_byte_ns) / 1000, completeMs: Double(clone.complete_ns) / 1e6,
      pagesTouched: Int(clone.pages_touched), faults: count, p50Us: percentile(0.5), p99Us: percentile(0.99))
  }

  /// What the restart row measured in one run.
  struct RestartSample {
    var sample: Sample
    var restartToDoneMs: Double
    var copiedTwice: Int
    var stalls: Int
    var clientsOK: Int
  }

  /// `uffd serve` (this executable) with a state directory, ``restartClients`` clones reading the
  /// random-10pct working set with markers, SIGKILL when the first has read half of it, a new
  /// `uffd serve` on the same state directory.
  func measureRestart(executable: String, path: String, snapshot: SnapshotFile) throws -> RestartSample {
    let socketPath = NSTemporaryDirectory() + "uffd-bench-restore-restart-\(getpid()).sock"
    let state = NSTemporaryDirectory() + "uffd-bench-restore-state-\(getpid())"
    try? FileManager.default.removeItem(atPath: state)
    defer { try? FileManager.default.removeItem(atPath: state) }
    let arguments = ["serve", "--listen", "\(socketPath)=\(path)", "--state-dir", state, "--handshake-timeout", "30"]
    func launch() throws -> Process {
      let process = Process()
      process.executableURL = URL(fileURLWithPath: executable)
      process.arguments = arguments
      process.standardError = FileHandle.nullDevice
      process.standardOutput = FileHandle.nullDevice
      try process.run()
      return process
    }
    var daemon = try launch()
    defer {
      if daemon.isRunning { kill(daemon.processIdentifier, SIGKILL) }
      daemon.waitUntilExit()
    }
    var deadline = ContinuousClock.now + .seconds(30)
    while access(socketPath, F_OK) != 0 && ContinuousClock.now < deadline { usleep(2000) }
    let clients = Self.restartClients
    let shared = try SharedResults(clients)
    let children = (0..<clients).map { index in
      cuffd_ref_ws_client(socketPath, snapshot.length, WorkingSetPattern.random10pct.reference, Self.workingSetSeed &+ UInt64(index), 1,
                          shared.results + index)
    }
    defer { for child in children where child > 0 { _ = cuffd_ref_wait(child, 0) } }
    guard children.allSatisfy({ $0 > 0 }) else { throw ToolError("fork: \(String(cString: strerror(errno)))") }
    let half = Int64(snapshot.length / PageSize.base / 10 / 2)
    deadline = ContinuousClock.now + .seconds(60)
    while !(shared.progress(0) >= half && (0..<clients).allSatisfy({ shared.progress($0) > 0 })) && ContinuousClock.now < deadline {
      usleep(100)
    }
    kill(daemon.processIdentifier, SIGKILL)
    daemon.waitUntilExit()
    let restarted = cuffd_ref_now_ns()
    daemon = try launch()
    let statuses = children.map { cuffd_ref_wait($0, 60_000) }
    let results = (0..<clients).map { shared.results[$0] }
    let ok = zip(statuses, results).filter { $0 == 0 && $1.status == 0 }.count
    let lastDone = results.map(\.done_at_ns).max() ?? restarted
    let first = results[0]
    return RestartSample(
      sample: Sample(firstByteUs: Double(first.first_byte_ns) / 1000, completeMs: Double(first.complete_ns) / 1e6,
                     pagesTouched: Int(first.pages_touched), faults: 0, p50Us: 0, p99Us: 0),
      restartToDoneMs: Double(max(0, lastDone - restarted)) / 1e6,
      copiedTwice: results.reduce(0) { $0 + Int($1.copied_twice) }, stalls: results.reduce(0) { $0 + Int($1.stalls) },
      clientsOK: ok)
  }
}

/// An acquire load of a counter a clone stores with release ordering.
private func UnsafeAtomicLoad(_ pointer: UnsafeMutablePointer<Int64>) -> Int64 {
  cuffd_ref_ws_progress(pointer)
}

extension RestoreBenchmark {
  /// The working-set rows, each run ``reps`` times (interleaved), as medians.
  func workingSetRows(path: String, snapshot: SnapshotFile, progress: Progress) throws -> [Row] {
    enum Kind: Equatable { case demand, reference, recorded, restart }
    let kinds: [(handler: String, strategy: String, kind: Kind, pattern: WorkingSetPattern)] = [
      ("swift-daemon", "demand", .demand, .boot), ("c-reference", "demand", .reference, .boot),
      ("swift-daemon", "demand", .demand, .random10pct), ("c-reference", "demand", .reference, .random10pct),
      ("swift-daemon", "recorded", .recorded, .random10pct), ("swift-daemon", "recorded", .recorded, .boot),
    ] + (daemonExecutable != nil ? [("swift-daemon", "restart", Kind.restart, WorkingSetPattern.random10pct)] : [])
    var samples: [[Sample]] = Array(repeating: [], count: kinds.count)
    var restarts: [RestartSample] = []
    for rep in 1...reps {
      for (index, row) in kinds.enumerated() {
        progress("rep \(rep)/\(reps): \(row.handler)/\(row.strategy)/\(row.pattern.rawValue) (seed \(Self.workingSetSeed))")
        switch row.kind {
        case .demand: samples[index].append(try measureWorkingSet(row.pattern, recorded: false, path: path, snapshot: snapshot))
        case .reference: samples[index].append(try measureWorkingSetReference(row.pattern, snapshot: snapshot))
        case .recorded: samples[index].append(try measureWorkingSet(row.pattern, recorded: true, path: path, snapshot: snapshot))
        case .restart:
          guard let executable = daemonExecutable else { continue }
          let restart = try measureRestart(executable: executable, path: path, snapshot: snapshot)
          restarts.append(restart)
          samples[index].append(restart.sample)
        }
      }
    }
    return kinds.enumerated().map { index, row in
      let runs = samples[index]
      let complete = median(runs.map(\.completeMs))
      let bytes = Double(runs.first?.pagesTouched ?? 0) * Double(PageSize.base)
      var result = Row(
        handler: row.handler, strategy: row.strategy, install: "copy",
        pattern: row.pattern == .random10pct && row.strategy == "demand" ? "random-10pct-seeded" : row.pattern.rawValue,
        firstByteUs: median(runs.map(\.firstByteUs)), completeMs: complete,
        gbps: complete > 0 ? bytes / (complete / 1000) / 1e9 : 0, faults: Int(median(runs.map { Double($0.faults) })),
        faultP50Us: median(runs.map(\.p50Us)), faultP99Us: median(runs.map(\.p99Us)))
      if row.kind == .restart {
        result.restartToDoneMs = median(restarts.map(\.restartToDoneMs))
        result.copiedTwice = restarts.map(\.copiedTwice).max() ?? 0
        result.stalls = Int(median(restarts.map { Double($0.stalls) }))
        result.clientsOk = restarts.map(\.clientsOK).min() ?? 0
        result.clients = Self.restartClients
      }
      return result
    }
  }
}
