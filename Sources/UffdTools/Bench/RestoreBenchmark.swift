import CUserfaultfdReference
import Foundation
import Histogram
import Logging
import Synchronization
import SnapshotPager
import Userfaultfd

/// `uffd bench restore`: a snapshot file restored lazily into a separate client process over a
/// Unix socket (Firecracker's handshake), by the library's ``SnapshotServer`` three ways (demand
/// faults only; adaptive fault-around; fault-around plus background prefetch), by the pager daemon's
/// code already running (`swift-daemon`: demand faults, what a VMM connecting to `uffd serve` sees) and, beside it in
/// the same run, by a C handler doing what Firecracker's example handler does (one UFFDIO_COPY per
/// 4 KiB fault). Three access patterns: every page in order; a working set of a tenth of the
/// pages in randomly placed 64 KiB runs; a tenth of the pages scattered with no locality at all.
/// The bound: one memcpy of the snapshot from the page cache into resident memory, measured in
/// every repetition beside the rows (the median; a shared machine's load moves it). Beside it, the
/// kernel's own ceiling for a whole restore: the C handler copying the whole region with
/// UFFDIO_COPY at the first fault (`fault-all`, what Firecracker's `fault_all` example handler
/// does; `fault-all-2` in two halves on two threads), and UFFDIO_COPY with no client at all.
/// Every row times the client: from sending its handshake to reading the last page of its pattern
/// (one byte of every page it touches), so a row's bytes are the pattern's pages.
package struct RestoreBenchmark {
  /// One benchmark row (medians over the repetitions).
  package struct Row: Encodable, Sendable {
    package var handler: String
    package var strategy: String
    /// How pages were installed: `copy` from the mapped snapshot, or read(2) into a staging page
    /// then `read+copy` / `read+move` (in-process rows only).
    package var install: String
    package var pattern: String
    package var firstByteUs: Double
    package var completeMs: Double
    package var gbps: Double
    package var faults: Int
    package var faultP50Us: Double
    package var faultP99Us: Double
    /// The restart row only: from the new daemon's start until every clone had its working set,
    /// pages found overwritten after the clone wrote them, clones that finished, clones.
    package var restartToDoneMs: Double? = nil
    package var copiedTwice: Int? = nil
    package var stalls: Int? = nil
    package var clientsOk: Int? = nil
    package var clients: Int? = nil
  }

  /// The whole report.
  package struct Report: Encodable, Sendable {
    package var mib: Int
    package var reps: Int
    package var memcpyGbps: Double
    /// memcpy of the snapshot into memory never touched before (every page allocated by the
    /// copy's own faults): what a restore into fresh memory pays before any userfaultfd cost.
    package var memcpyFreshGbps: Double
    /// UFFDIO_COPY of the whole snapshot into fresh registered memory in this process, 2 MiB
    /// ioctls, no client and no faults (the kernel's own rate): on one thread, and on two in parallel.
    package var copyCeilingGbps: Double
    package var copyCeilingTwoThreadsGbps: Double
    package var rows: [Row]
  }

  package enum Strategy: String, CaseIterable, Sendable {
    case demand, faultAround = "fault-around", prefetch
    /// The C handler only: the whole region in one UFFDIO_COPY at the first fault.
    case faultAll = "fault-all"
    /// The C handler only: the whole region in two UFFDIO_COPYs on two threads at the first fault.
    case faultAllParallel = "fault-all-2"

    /// The strategies the Swift server runs.
    static let served: [Strategy] = [.demand, .faultAround, .prefetch]
  }

  /// How the client reads its memory.
  package enum Pattern: String, CaseIterable, Sendable {
    /// Every page, in order (a full restore).
    case sequential
    /// A working set: a tenth of the pages, as randomly placed 64 KiB runs read in random order.
    case random10pct = "random-10pct"
    /// A tenth of the pages, each alone and scattered: no locality at all (fault-around's worst case).
    case scattered10pct = "scattered-10pct"
    /// Every 4 KiB in order, the client's memory in 2 MiB hugetlb pages (reserved for the rows and
    /// given back after).
    case sequentialHuge = "sequential-2m"

    /// The patterns on base pages.
    static let basePages: [Pattern] = [.sequential, .random10pct, .scattered10pct]

    var reference: Int32 {
      switch self {
      case .sequential: Int32(CUFFD_REF_SEQUENTIAL.rawValue)
      case .random10pct: Int32(CUFFD_REF_RANDOM_10PCT.rawValue)
      case .scattered10pct: Int32(CUFFD_REF_SCATTERED_10PCT.rawValue)
      case .sequentialHuge: Int32(CUFFD_REF_SEQUENTIAL_HUGE.rawValue)
      }
    }
  }

  package let mib: Int
  package let reps: Int
  /// The `uffd` executable whose `serve` the restart row kills and starts again (no restart row
  /// when nil).
  package var daemonExecutable: String?
  /// Only the rows of these strategies (`demand`, `fault-around`, `prefetch`, `fault-all`,
  /// `recorded`, `restart`; nil: every row).
  package var strategies: Set<String>?

  /// Snapshot sizes the benchmark accepts, in MiB.
  package static let mibRange = 4...65536

  package init(mib: Int, reps: Int) {
    self.mib = mib
    self.reps = reps
  }

  package func run(progress: Progress) throws -> Report {
    let size = mib << 20
    let path = NSTemporaryDirectory() + "uffd-bench-restore-\(getpid()).snap"
    progress("writing a \(mib) MiB snapshot to \(path)")
    try Self.writeSnapshot(path: path, size: size)
    defer { unlink(path) }
    let snapshot = try SnapshotFile(path: path)
    var memcpySamples: [Double] = [], memcpyFreshSamples: [Double] = []
    let ceiling = try copyCeiling(snapshot, threads: 1), ceilingTwo = try copyCeiling(snapshot, threads: 2)
    progress(String(format: "UFFDIO_COPY, no client: %.2f GB/s on one thread, %.2f GB/s on two", ceiling, ceilingTwo))
    var samples: [String: [Sample]] = [:]
    typealias Install = SnapshotServer.Configuration.Install
    let installs: [Install] = PageMover.moveVerdict.isUsable ? Install.allCases : [.copyFromMapping, .readAndCopy]
    if !PageMover.moveVerdict.isUsable { progress("read+move rows unavailable here (\(PageMover.moveVerdict))") }
    typealias RowKey = (handler: String, strategy: Strategy, install: Install, pattern: Pattern)
    var rows: [RowKey] = Pattern.basePages.flatMap { pattern -> [RowKey] in
      Strategy.served.map { ("swift", $0, Install.copyFromMapping, pattern) }
        + [("swift-daemon", .demand, .copyFromMapping, pattern), ("c-reference", .demand, .copyFromMapping, pattern)]
    }
    rows += [Pattern.sequential, .random10pct].flatMap { pattern -> [RowKey] in
      installs.map { ("swift-in-process", Strategy.faultAround, $0, pattern) }
    }
    // The daemon's prefetch (its serving loops copy between faults, no thread of their own).
    rows.append(("swift-daemon", .prefetch, .copyFromMapping, .sequential))
    // The kernel's ceiling for a whole restore, beside the prefetch rows.
    rows.append(("c-reference", .faultAll, .copyFromMapping, .sequential))
    rows.append(("c-reference", .faultAllParallel, .copyFromMapping, .sequential))
    // The same on 2 MiB hugetlb pages, where the kernel's cost per byte is not the base page's.
    rows.append(("swift", .prefetch, .copyFromMapping, .sequentialHuge))
    rows.append(("swift-daemon", .prefetch, .copyFromMapping, .sequentialHuge))
    rows.append(("c-reference", .faultAll, .copyFromMapping, .sequentialHuge))
    if let strategies {
      rows.removeAll { !strategies.contains($0.strategy.rawValue) && !(strategies.contains("fault-all") && $0.strategy == .faultAllParallel) }
    }
    // Huge pages for the 2 MiB rows, given back when the rows are done (none to be had: no rows).
    let hugePages = size >> 21
    let reserved = rows.contains { $0.pattern == .sequentialHuge } ? HugePageReservation(hugePages) : nil
    defer { reserved?.giveBack() }
    if rows.contains(where: { $0.pattern == .sequentialHuge }) && reserved == nil {
      progress("no \(hugePages) huge pages of 2 MiB could be reserved (vm.nr_hugepages): no sequential-2m rows")
      rows.removeAll { $0.pattern == .sequentialHuge }
    }
    func key(_ row: (handler: String, strategy: Strategy, install: Install, pattern: Pattern)) -> String {
      "\(row.handler)/\(row.strategy.rawValue)/\(row.install.rawValue)/\(row.pattern.rawValue)"
    }
    for rep in 1...reps {
      let (resident, fresh) = try memcpyOnce(snapshot)
      memcpySamples.append(resident)
      memcpyFreshSamples.append(fresh)
      progress(String(format: "rep \(rep)/\(reps): memcpy from the page cache %.2f GB/s (into fresh memory %.2f GB/s)", resident, fresh))
      for row in rows {  // interleaved: every row once per repetition
        progress("rep \(rep)/\(reps): \(key(row))")
        let sample = row.handler == "swift-in-process"
          ? try measureInProcess(row.install, row.pattern, snapshot: snapshot)
          : row.handler == "swift-daemon"
          ? try measureDaemon(row.strategy, row.pattern, path: path, snapshot: snapshot)
          : try measure(row.handler, row.strategy, row.pattern, snapshot: snapshot)
        samples[key(row), default: []].append(sample)
      }
    }
    let memcpy = median(memcpySamples)
    var report = Report(
      mib: mib, reps: reps, memcpyGbps: memcpy, memcpyFreshGbps: median(memcpyFreshSamples), copyCeilingGbps: ceiling,
      copyCeilingTwoThreadsGbps: ceilingTwo, rows: rows.map { row in
      let key = key(row)
      let runs = samples[key] ?? []
      let complete = median(runs.map(\.completeMs))
      let bytes = Double(runs.first?.pagesTouched ?? 0) * Double(PageSize.base)
      return Row(
        handler: row.handler, strategy: row.strategy.rawValue, install: row.install.rawValue, pattern: row.pattern.rawValue,
        firstByteUs: median(runs.map(\.firstByteUs)), completeMs: complete,
        gbps: complete > 0 ? bytes / (complete / 1000) / 1e9 : 0,
        faults: Int(median(runs.map { Double($0.faults) })),
        faultP50Us: median(runs.map(\.p50Us)), faultP99Us: median(runs.map(\.p99Us)))
    })
    if strategies.map({ !$0.isDisjoint(with: ["recorded", "restart"]) }) ?? true {
      report.rows += try workingSetRows(path: path, snapshot: snapshot, progress: progress)  // RecordedRestoreBenchmark.swift
    }
    return report
  }

  /// The rows as the tool prints them.
  package static func table(_ report: Report) -> String {
    "Snapshot restore into another process, \(report.mib) MiB, medians of \(report.reps) (memcpy bound "
      + String(format: "%.2f GB/s; into fresh memory %.2f GB/s", report.memcpyGbps, report.memcpyFreshGbps) + ")\n"
      + String(format: "UFFDIO_COPY of the whole snapshot, 2 MiB ioctls, no client: %.2f GB/s (%.2fx memcpy) on one thread, %.2f GB/s (%.2fx) on two\n",
               report.copyCeilingGbps, report.memcpyGbps > 0 ? report.copyCeilingGbps / report.memcpyGbps : 0,
               report.copyCeilingTwoThreadsGbps, report.memcpyGbps > 0 ? report.copyCeilingTwoThreadsGbps / report.memcpyGbps : 0)
      + formatTable(
        ["handler", "strategy", "install", "pattern", "first byte µs", "complete ms", "GB/s", "x memcpy", "faults", "fault p50 µs", "p99 µs"],
        report.rows.map {
          [$0.handler, $0.strategy, $0.install, $0.pattern, String(format: "%.0f", $0.firstByteUs), String(format: "%.1f", $0.completeMs),
           String(format: "%.2f", $0.gbps), String(format: "%.2f", report.memcpyGbps > 0 ? $0.gbps / report.memcpyGbps : 0),
           "\($0.faults)", String(format: "%.1f", $0.faultP50Us), String(format: "%.1f", $0.faultP99Us)]
        })
      + report.rows.filter { $0.restartToDoneMs != nil }.map { row in
        String(format: "\nrestart: %d of %d clones finished, %.1f ms from the restart to the last page, %d pages copied twice, %d reads stalled >= 50 ms",
               row.clientsOk ?? 0, row.clients ?? 0, row.restartToDoneMs ?? 0, row.copiedTwice ?? 0, row.stalls ?? 0)
      }.joined()
  }

  struct Sample {
    var firstByteUs: Double
    var completeMs: Double
    var pagesTouched: Int
    var faults: Int
    var p50Us: Double
    var p99Us: Double
  }

  /// The C reference server on `listener` until its client hangs up: one UFFDIO_COPY per fault,
  /// each fault's service time (ns) in `latencies`. Returns 0 or -errno, and the faults served.
  static func serveWithCReference(
    _ listener: UnixSocket, snapshot: SnapshotFile, latencies: inout [Int64]
  ) -> (result: Int32, faults: Int) {
    var count = 0
    let result = snapshot.bytes.baseAddress.map { base in
      latencies.withUnsafeMutableBufferPointer {
        cuffd_ref_restore_server(listener.fileDescriptor.rawValue, base.assumingMemoryBound(to: CChar.self),
                                 snapshot.length, $0.baseAddress, $0.count, &count)
      }
    } ?? -EINVAL
    return (result, count)
  }

  /// One restore: a client process, and the Swift or C server in this one.
  func measure(_ handler: String, _ strategy: Strategy, _ pattern: Pattern, snapshot: SnapshotFile) throws -> Sample {
    let socketPath = NSTemporaryDirectory() + "uffd-bench-restore-\(getpid()).sock"
    unlink(socketPath)
    defer { unlink(socketPath) }
    let listener = try UnixSocket.listen(at: socketPath)
    // Allocated before the client exists, so neither handler's first byte pays for it.
    var latencies = [Int64](repeating: 0, count: handler == "swift" ? 0 : snapshot.length / PageSize.base + 1)
    var report: [Int32] = [-1, -1]
    guard pipe(&report) == 0 else { throw ToolError("pipe: \(String(cString: strerror(errno)))") }
    defer { close(report[0]); close(report[1]) }
    let child = cuffd_ref_restore_client(socketPath, snapshot.length, pattern.reference, report[1])
    guard child > 0 else { throw ToolError("fork: \(String(cString: strerror(errno)))") }
    var histogram = Histogram<UInt64>(highestTrackableValue: 60_000_000_000, numberOfSignificantValueDigits: .three)
    if handler == "swift" {
      var configuration = SnapshotServer.Configuration(faultAroundPages: strategy == .demand ? 1 : 256)
      configuration.prefetch = strategy == .prefetch
      configuration.prefetchPages = 256
      guard let (server, client) = try SnapshotServer.accept(
        on: listener, snapshot: snapshot, configuration: configuration, timeout: .seconds(30))
      else {
        _ = cuffd_ref_wait(child, 0)
        throw ToolError("the restore client never connected")
      }
      let statistics = server.run(client: client)
      let status = cuffd_ref_wait(child, 60_000)
      guard status == 0 else { throw ToolError("the restore client failed (status \(status))") }
      return try finish(report[0], faults: statistics.faults, p50: statistics.faultLatencyP50.microseconds,
                        p99: statistics.faultLatencyP99.microseconds)
    } else if strategy == .faultAll || strategy == .faultAllParallel {
      var count = 0
      let result = snapshot.bytes.baseAddress.map { base in
        cuffd_ref_restore_server_fault_all(listener.fileDescriptor.rawValue, base.assumingMemoryBound(to: CChar.self),
                                           snapshot.length, strategy == .faultAll ? 1 : 2, &count)
      } ?? -EINVAL
      let status = cuffd_ref_wait(child, 60_000)
      guard result == 0, status == 0 else { throw ToolError("the C fault-all restore failed (\(result), client \(status))") }
      return try finish(report[0], faults: count, p50: 0, p99: 0)
    } else {
      let (result, count) = Self.serveWithCReference(listener, snapshot: snapshot, latencies: &latencies)
      let status = cuffd_ref_wait(child, 60_000)
      guard result == 0, status == 0 else { throw ToolError("the C reference restore failed (\(result), client \(status))") }
      for latency in latencies.prefix(count) { _ = histogram.record(UInt64(max(0, latency))) }
      return try finish(report[0], faults: count, p50: Double(histogram.valueAtPercentile(50)) / 1000,
                        p99: Double(histogram.valueAtPercentile(99)) / 1000)
    }
  }

  /// One restore served by the pager daemon's code (``SnapshotPagerHost``, as `uffd serve` runs it):
  /// started and its snapshot mapped and populated before the client exists, so the first byte
  /// measures what a VMM connecting to a running daemon waits for.
  func measureDaemon(_ strategy: Strategy, _ pattern: Pattern, path: String, snapshot: SnapshotFile) throws -> Sample {
    let socketPath = NSTemporaryDirectory() + "uffd-bench-restore-daemon-\(getpid()).sock"
    var configuration = PagerConfiguration(
      listens: [.init(socketPath: socketPath, snapshotPath: path)], maxSessions: 4,
      server: .init(faultAroundPages: strategy == .demand ? 1 : 256, prefetch: strategy == .prefetch, prefetchPages: 256))
    configuration.handshakeTimeout = .seconds(30)
    var logger = Logger(label: "bench.restore.pager")
    logger.logLevel = .error
    let ended = Mutex<SnapshotServer.Statistics?>(nil)
    let pager = try SnapshotPagerHost(configuration: configuration, logger: logger) { statistics in
      ended.withLock { $0 = statistics }
    }
    try pager.start()
    defer {
      pager.stop()
      _ = pager.waitUntilFinished(timeout: .seconds(10))
    }
    var report: [Int32] = [-1, -1]
    guard pipe(&report) == 0 else { throw ToolError("pipe: \(String(cString: strerror(errno)))") }
    defer { close(report[0]); close(report[1]) }
    let child = cuffd_ref_restore_client(socketPath, snapshot.length, pattern.reference, report[1])
    guard child > 0 else { throw ToolError("fork: \(String(cString: strerror(errno)))") }
    let status = cuffd_ref_wait(child, 60_000)
    guard status == 0 else { throw ToolError("the restore client failed (status \(status))") }
    let deadline = ContinuousClock.now + .seconds(10)
    while ended.withLock({ $0 == nil }) && ContinuousClock.now < deadline { usleep(1000) }
    guard let statistics = ended.withLock({ $0 }), statistics.failedFaults == 0 else {
      throw ToolError("the daemon's session did not end cleanly")
    }
    return try finish(report[0], faults: statistics.faults, p50: statistics.faultLatencyP50.microseconds,
                      p99: statistics.faultLatencyP99.microseconds)
  }

  /// An in-process restore: the faulting reader is a thread of this process, so the loader may
  /// install by MOVE. The server runs on its own thread; this thread reads the pattern.
  func measureInProcess(_ install: SnapshotServer.Configuration.Install, _ pattern: Pattern, snapshot: SnapshotFile) throws -> Sample {
    let page = PageSize.base
    let uffd = try Userfaultfd(features: [.eventRemove], options: .nonBlocking)
    let region = try AnonymousMemory(length: snapshot.length)
    try uffd.register(region.baseAddress, length: region.length, mode: .missing)
    let server = try SnapshotServer(
      uffd: uffd, regions: [GuestRegion(base: Address(region.baseAddress), size: region.length, offset: 0)],
      snapshot: snapshot, configuration: .init(faultAroundPages: 256, install: install))
    let result = Mutex<SnapshotServer.Statistics?>(nil)
    let serving = try DedicatedThread { result.withLock { $0 = server.run() } }
    let pages = snapshot.length / page
    let count = pattern == .sequential ? pages : pages / 10
    let run = 16, slots = pages / run
    var sum: UInt64 = 0
    var firstByte: Int64 = 0
    let start = cuffd_ref_now_ns()
    for i in 0..<count {
      // The same walks as the C client (an odd multiplier permutes a power-of-two count).
      var index = i
      if pattern == .scattered10pct { index = (i &* 0x9E37_79B1) % pages }
      if pattern == .random10pct { index = ((i / run) &* 0x9E37_79B1) % slots * run + i % run }
      sum &+= UInt64(region.baseAddress.load(fromByteOffset: index * page, as: UInt8.self))
      if i == 0 { firstByte = cuffd_ref_now_ns() - start }
    }
    let complete = cuffd_ref_now_ns() - start
    server.stop()
    serving.join()
    guard let statistics = result.withLock({ $0 }), statistics.failedFaults == 0 else {
      throw ToolError("the in-process restore (\(install.rawValue)) failed a fault")
    }
    // Keeps the loads: an unused sum would let the optimizer drop them (and every fault).
    if sum == 0x5EED_5EED { FileHandle.standardError.write(Data("sum \(sum)\n".utf8)) }
    return Sample(
      firstByteUs: Double(firstByte) / 1000, completeMs: Double(complete) / 1e6, pagesTouched: count,
      faults: statistics.faults, p50Us: statistics.faultLatencyP50.microseconds, p99Us: statistics.faultLatencyP99.microseconds)
  }

  private func finish(_ fd: Int32, faults: Int, p50: Double, p99: Double) throws -> Sample {
    var result = cuffd_ref_restore_result()
    guard read(fd, &result, MemoryLayout<cuffd_ref_restore_result>.size) == MemoryLayout<cuffd_ref_restore_result>.size,
          result.status == 0
    else { throw ToolError("the restore client reported no result (status \(result.status))") }
    return Sample(
      firstByteUs: Double(result.first_byte_ns) / 1000, completeMs: Double(result.complete_ns) / 1e6,
      pagesTouched: Int(result.pages_touched), faults: faults, p50Us: p50, p99Us: p99)
  }

  /// A snapshot of `size` bytes with a different word everywhere, left in the page cache.
  static func writeSnapshot(path: String, size: Int) throws {
    let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
    guard fd >= 0 else { throw ToolError("cannot create \(path): \(String(cString: strerror(errno)))") }
    defer { close(fd) }
    var chunk = [UInt64](repeating: 0, count: 1 << 17)  // 1 MiB
    for block in 0..<(size >> 20) {
      for index in chunk.indices { chunk[index] = UInt64(block << 17 | index) &* 0x9E37_79B9_7F4A_7C15 }
      let written = chunk.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
      guard written == 1 << 20 else { throw ToolError("writing \(path): \(String(cString: strerror(errno)))") }
    }
  }

  /// UFFDIO_COPY of the whole snapshot into fresh registered memory, 2 MiB ioctls on `threads`
  /// threads, in GB/s: the median of 5.
  private func copyCeiling(_ snapshot: SnapshotFile, threads: Int32) throws -> Double {
    guard let source = snapshot.bytes.baseAddress else { return 0 }
    var rates: [Double] = []
    for _ in 0..<5 {
      let nanoseconds = cuffd_ref_copy_ceiling(source.assumingMemoryBound(to: CChar.self), snapshot.length, 2 << 20, threads)
      guard nanoseconds > 0 else { throw ToolError("UFFDIO_COPY ceiling: \(String(cString: strerror(Int32(-nanoseconds))))") }
      rates.append(Double(snapshot.length) / Double(nanoseconds))
    }
    return median(rates)
  }

  /// memcpy of the whole snapshot from the page cache, in GB/s: into resident memory (the bound
  /// the rows are measured against; the destination written once before, untimed) and into memory
  /// never touched before.
  private func memcpyOnce(_ snapshot: SnapshotFile) throws -> (resident: Double, fresh: Double) {
    guard let source = snapshot.bytes.baseAddress else { return (0, 0) }
    let target = try AnonymousMemory(length: snapshot.length, populate: true)
    memcpy(target.baseAddress, source, snapshot.length)
    var start = cuffd_ref_now_ns()
    memcpy(target.baseAddress, source, snapshot.length)
    let resident = Double(snapshot.length) / Double(cuffd_ref_now_ns() - start)
    let untouched = try AnonymousMemory(length: snapshot.length)
    start = cuffd_ref_now_ns()
    memcpy(untouched.baseAddress, source, snapshot.length)
    let fresh = Double(snapshot.length) / Double(cuffd_ref_now_ns() - start)
    return (resident, fresh)
  }
}

/// `vm.nr_hugepages` raised by a count for the benchmark's hugetlb rows and set back afterwards
/// (a machine setting: always restored).
final class HugePageReservation {
  private let before: Int

  /// Nil when the pool could not grow by `count` (no memory, no permission).
  init?(_ count: Int) {
    guard let before = Self.read(), Self.write(before + count), let now = Self.read(), now >= before + count else {
      if let before = Self.read() { _ = Self.write(before) }
      return nil
    }
    self.before = before
  }

  func giveBack() { _ = Self.write(before) }

  private static let path = "/proc/sys/vm/nr_hugepages"

  private static func read() -> Int? {
    guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { return nil }
    return Int(text.trimmingCharacters(in: .whitespacesAndNewlines))
  }

  private static func write(_ count: Int) -> Bool {
    (try? "\(count)\n".write(toFile: path, atomically: false, encoding: .utf8)) != nil
  }
}
