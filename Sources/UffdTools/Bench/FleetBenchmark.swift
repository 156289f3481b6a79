import CUserfaultfdReference
import Foundation
import Userfaultfd

/// `uffd bench fleet`: K clones restore the same snapshot at once, each reading its own working
/// set (a random tenth of the pages in 64 KiB runs, a different seed per clone) and exiting;
/// served once by one `uffd serve` daemon (a separate process, started as an operator would), and
/// once by K C handler processes, one per clone (as Firecracker's example handler runs), in the
/// same run, interleaved. Per K: the wall time until every clone has its working set, the
/// aggregate rate, the latency each clone saw on its faulting reads, the daemon's peak RSS and
/// thread count, the C handlers' summed peak RSS.
package struct FleetBenchmark {
  /// One row: one K, medians over the runs.
  package struct Row: Encodable, Sendable {
    package var clients: Int
    package var daemonWallMs: Double
    package var daemonGbps: Double
    package var cWallMs: Double
    package var cGbps: Double
    /// Latency of the clones' reads that faulted (took 2 µs or more), daemon-served.
    package var faultP50Us: Double
    package var faultP99Us: Double
    package var faultP999Us: Double
    /// The same for the C handlers.
    package var cFaultP50Us: Double
    package var cFaultP99Us: Double
    package var cFaultP999Us: Double
    package var daemonThreads: Int
    /// The daemon's peak RSS (VmHWM): its populated snapshot mapping (page cache, shared) included.
    package var daemonRssBytes: Int
    /// The daemon's anonymous resident memory after the clones finished (RssAnon): its own heap,
    /// stacks and page maps, without the snapshot's page cache.
    package var daemonAnonBytes: Int
    /// The resident memory the C handlers added, summed: the snapshot pages each mapped (the
    /// kernel maps whole page-cache folios around each copied page) and its buffers; a standalone
    /// handler binary's own small baseline is not counted.
    package var cRssBytes: Int
    /// The anonymous part of it (private memory; the snapshot's page cache is shared, not copied).
    package var cAnonBytes: Int
    /// Guest pages in the live sessions (K clones x the snapshot's pages).
    package var livePages: Int
  }

  /// The report.
  package struct Report: Encodable, Sendable {
    package var mib: Int
    package var runs: Int
    package var rows: [Row]
  }

  package let mib: Int
  package let clients: [Int]
  package let runs: Int
  /// The `uffd` executable whose `serve` is the daemon.
  package let daemonExecutable: String

  /// Snapshot sizes accepted, in MiB.
  package static let mibRange = 4...4096
  /// Clone counts accepted.
  package static let clientsRange = 1...256

  package init(mib: Int, clients: [Int], runs: Int, daemonExecutable: String) {
    self.mib = mib
    self.clients = clients
    self.runs = runs
    self.daemonExecutable = daemonExecutable
  }

  struct Sample {
    var wallMs: Double
    var gbps: Double
    var p50: Double, p99: Double, p999: Double
    var threads = 0
    var rss = 0
    var anon = 0
  }

  package func run(progress: Progress) throws -> Report {
    let size = mib << 20
    let folder = NSTemporaryDirectory() + "uffd-bench-fleet-\(getpid())"
    guard mkdir(folder, 0o700) == 0 || errno == EEXIST else { throw ToolError("mkdir \(folder): \(String(cString: strerror(errno)))") }
    defer { rmdir(folder) }
    let path = folder + "/snapshot.mem"
    progress("writing a \(mib) MiB snapshot to \(path)")
    try RestoreBenchmark.writeSnapshot(path: path, size: size)
    defer { unlink(path) }
    var daemon: [Int: [Sample]] = [:]
    var handlers: [Int: [Sample]] = [:]
    for run in 1...runs {
      for k in clients {
        progress("run \(run)/\(runs): \(k) clone(s) from one daemon")
        daemon[k, default: []].append(try measureDaemon(k, snapshot: path, size: size, folder: folder, seed: run))
        progress("run \(run)/\(runs): \(k) clone(s), one C handler each")
        handlers[k, default: []].append(try measureHandlers(k, snapshot: path, size: size, folder: folder, seed: run))
      }
    }
    let pages = size / PageSize.base
    return Report(mib: mib, runs: runs, rows: clients.map { k in
      let d = daemon[k] ?? [], c = handlers[k] ?? []
      func m(_ samples: [Sample], _ value: (Sample) -> Double) -> Double { median(samples.map(value)) }
      return Row(
        clients: k, daemonWallMs: m(d, \.wallMs), daemonGbps: m(d, \.gbps), cWallMs: m(c, \.wallMs), cGbps: m(c, \.gbps),
        faultP50Us: m(d, \.p50), faultP99Us: m(d, \.p99), faultP999Us: m(d, \.p999),
        cFaultP50Us: m(c, \.p50), cFaultP99Us: m(c, \.p99), cFaultP999Us: m(c, \.p999),
        daemonThreads: Int(m(d) { Double($0.threads) }), daemonRssBytes: Int(m(d) { Double($0.rss) }),
        daemonAnonBytes: Int(m(d) { Double($0.anon) }), cRssBytes: Int(m(c) { Double($0.rss) }),
        cAnonBytes: Int(m(c) { Double($0.anon) }), livePages: k * pages)
    })
  }

  /// Shared memory for K clones' results and latencies, unmapped by `body`'s end.
  func withCloneMemory<T>(_ k: Int, perClone: Int, _ body: (UnsafeMutablePointer<cuffd_ref_fleet_result>, UnsafeMutablePointer<Int64>) throws -> T) throws -> T {
    let resultsBytes = k * MemoryLayout<cuffd_ref_fleet_result>.stride
    let latencyBytes = k * perClone * 8
    let length = resultsBytes + latencyBytes + PageSize.base
    guard let memory = mmap(nil, length, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0), memory != MAP_FAILED else {
      throw ToolError("mmap: \(String(cString: strerror(errno)))")
    }
    defer { munmap(memory, length) }
    let results = memory.bindMemory(to: cuffd_ref_fleet_result.self, capacity: k)
    let latencies = (memory + resultsBytes).bindMemory(to: Int64.self, capacity: k * perClone)
    return try body(results, latencies)
  }

  /// Starts K clones (clone i at `socket(i)`), waits for them (bounded), and summarises.
  func runClones(_ k: Int, size: Int, seed: Int, socket: (Int) -> String) throws -> Sample {
    let perClone = size / PageSize.base / 10
    return try withCloneMemory(k, perClone: perClone) { results, latencies in
      var children: [pid_t] = []
      for index in 0..<k {
        let pid = cuffd_ref_fleet_client(socket(index), size, UInt64(seed * 1000 + index), latencies + index * perClone, results + index)
        guard pid > 0 else {
          for child in children { _ = cuffd_ref_wait(child, 0) }
          throw ToolError("fork: \(String(cString: strerror(errno)))")
        }
        children.append(pid)
      }
      let statuses = children.map { cuffd_ref_wait($0, 300_000) }
      guard statuses.allSatisfy({ $0 == 0 }) else { throw ToolError("a clone failed (statuses \(statuses))") }
      var start = Int64.max, end = Int64.min, pages = 0
      var faulted: [Int64] = []
      faulted.reserveCapacity(k * perClone / 4)
      for index in 0..<k {
        let result = results[index]
        guard result.status == 0 else { throw ToolError("clone \(index) failed at step \(result.status)") }
        start = min(start, result.start_ns)
        end = max(end, result.end_ns)
        pages += Int(result.pages_touched)
        for sample in 0..<Int(result.pages_touched) where latencies[index * perClone + sample] >= 2000 {
          faulted.append(latencies[index * perClone + sample])
        }
      }
      faulted.sort()
      func percentile(_ p: Double) -> Double {
        faulted.isEmpty ? 0 : Double(faulted[min(faulted.count - 1, Int(Double(faulted.count) * p))]) / 1000
      }
      let wall = Double(max(1, end - start))
      return Sample(
        wallMs: wall / 1e6, gbps: Double(pages * PageSize.base) / wall, p50: percentile(0.5), p99: percentile(0.99),
        p999: percentile(0.999))
    }
  }

  private func measureDaemon(_ k: Int, snapshot: String, size: Int, folder: String, seed: Int) throws -> Sample {
    let socket = folder + "/daemon.sock"
    unlink(socket)
    let process = Process()
    process.executableURL = URL(fileURLWithPath: daemonExecutable)
    process.arguments = ["serve", "--listen", "\(socket)=\(snapshot)", "--max-sessions", "\(max(k, 1))"]
    // The daemon's log is dropped, or appended to the file UFFD_FLEET_DAEMON_LOG names (for a
    // look at its per-session summaries).
    process.standardError = ProcessInfo.processInfo.environment["UFFD_FLEET_DAEMON_LOG"].flatMap { FileHandle(forWritingAtPath: $0) } ?? FileHandle.nullDevice
    process.standardOutput = FileHandle.nullDevice
    try process.run()
    defer {
      if process.isRunning { kill(process.processIdentifier, SIGKILL) }
      unlink(socket)
    }
    let pid = process.processIdentifier
    let deadline = Date().addingTimeInterval(60)
    while access(socket, F_OK) != 0 {
      guard process.isRunning, Date() < deadline else { throw ToolError("the daemon did not start listening at \(socket)") }
      usleep(2000)
    }
    var sample = try runClones(k, size: size, seed: seed) { _ in socket }
    let status = Self.status(of: pid)
    sample.threads = status["Threads"] ?? 0
    sample.rss = (status["VmHWM"] ?? 0) * 1024
    sample.anon = (status["RssAnon"] ?? 0) * 1024
    kill(pid, SIGTERM)
    let stop = Date().addingTimeInterval(60)
    while process.isRunning && Date() < stop { usleep(2000) }
    guard !process.isRunning, process.terminationStatus == 0 else { throw ToolError("the daemon did not drain and exit 0 on SIGTERM") }
    return sample
  }

  private func measureHandlers(_ k: Int, snapshot: String, size: Int, folder: String, seed: Int) throws -> Sample {
    guard let memory = mmap(nil, k * 16, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0), memory != MAP_FAILED else {
      throw ToolError("mmap: \(String(cString: strerror(errno)))")
    }
    defer { munmap(memory, k * 16) }
    let peaks = memory.bindMemory(to: Int64.self, capacity: 2 * k)
    let socket = { (index: Int) in folder + "/handler-\(index).sock" }
    var handlers: [pid_t] = []
    defer {
      for pid in handlers { _ = cuffd_ref_wait(pid, 0) }
      for index in 0..<k { unlink(socket(index)) }
    }
    for index in 0..<k {
      let pid = cuffd_ref_fleet_handler(socket(index), snapshot, peaks + 2 * index)
      guard pid > 0 else { throw ToolError("starting a C handler: \(String(cString: strerror(errno)))") }
      handlers.append(pid)
    }
    var sample = try runClones(k, size: size, seed: seed, socket: socket)
    let statuses = handlers.map { cuffd_ref_wait($0, 60_000) }
    handlers = []
    guard statuses.allSatisfy({ $0 == 0 }) else { throw ToolError("a C handler failed (statuses \(statuses))") }
    sample.rss = (0..<k).reduce(0) { $0 + Int(peaks[2 * $1]) }
    sample.anon = (0..<k).reduce(0) { $0 + Int(peaks[2 * $1 + 1]) }
    return sample
  }

  /// The numeric fields of /proc/PID/status (kB for sizes).
  static func status(of pid: pid_t) -> [String: Int] {
    // /proc files report a size of 0: read until end of file.
    let fd = open("/proc/\(pid)/status", O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return [:] }
    defer { close(fd) }
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 4096)
    while true {
      let got = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
      guard got > 0 else { break }
      bytes += chunk[0..<got]
    }
    let text = String(decoding: bytes, as: UTF8.self)
    var fields: [String: Int] = [:]
    for line in text.split(separator: "\n") {
      let parts = line.split(separator: ":", maxSplits: 1)
      guard parts.count == 2, let value = Int(parts[1].split(whereSeparator: { $0 == " " || $0 == "\t" }).first ?? "") else { continue }
      fields[String(parts[0])] = value
    }
    return fields
  }

  /// The rows as the tool prints them.
  package static func table(_ report: Report) -> String {
    "\(report.mib) MiB snapshot, K clones each reading a random tenth in 64 KiB runs; medians of \(report.runs)\n"
      + formatTable(
        ["K", "daemon ms", "daemon GB/s", "C ms", "C GB/s", "fault p50/p99/p99.9 µs", "C p50/p99/p99.9 µs",
         "threads", "daemon RSS MiB (anon)", "C RSS MiB (anon)"],
        report.rows.map { r in
          ["\(r.clients)", String(format: "%.1f", r.daemonWallMs), String(format: "%.2f", r.daemonGbps),
           String(format: "%.1f", r.cWallMs), String(format: "%.2f", r.cGbps),
           String(format: "%.1f / %.1f / %.1f", r.faultP50Us, r.faultP99Us, r.faultP999Us),
           String(format: "%.1f / %.1f / %.1f", r.cFaultP50Us, r.cFaultP99Us, r.cFaultP999Us),
           "\(r.daemonThreads)", String(format: "%.1f (%.1f)", Double(r.daemonRssBytes) / 1048576, Double(r.daemonAnonBytes) / 1048576),
           String(format: "%.1f (%.1f)", Double(r.cRssBytes) / 1048576, Double(r.cAnonBytes) / 1048576)]
        })
  }
}
