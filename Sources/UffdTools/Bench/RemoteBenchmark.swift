import CUserfaultfdReference
import Foundation
import Logging
import SnapshotPager
import Synchronization
import Userfaultfd

/// `uffd bench remote`: one snapshot and one working set (a tenth of the pages in 64 KiB runs,
/// as `uffd bench fleet`'s clones read) restored through a pager in this process from the local
/// file (`local`), from the host chunk cache already holding its chunks (`cache-warm`), from nginx
/// over loopback with 1 ms injected per request (`http-cold`), from the S3 server likewise
/// (`s3-cold`); then 64 clones at once from the local file (`fleet-64-local`) and from nginx with
/// 1 ms (`fleet-64`, each chunk's GETs counted in nginx's own access log); and a `pack` row: a
/// diff snapshot with 5% of its pages changed, its bytes against the base's.
///
/// The `-recorded` rows restore with a recorded working set (`uffd serve --record/--replay`): a
/// first clone's working set is recorded by one pager, then a second pager (an empty chunk cache)
/// replays it into the next clone, which reads the same working set: `local-recorded` from the
/// file, `http-recorded` from nginx with 1 ms per request, where the working set's chunks are
/// fetched ahead in recorded order from the handshake on; `http-recorded-64k` the same from a
/// pack of the snapshot in 64 KiB chunks (a working set of scattered 64 KiB runs needs a tenth
/// of those, against every 2 MiB chunk).
package struct RemoteBenchmark {
  /// One row (medians over the runs).
  package struct Row: Encodable, Sendable {
    package var source: String
    package var clones: Int
    package var completeMs: Double
    package var gbps: Double
    package var chunksFetched: Int
    package var chunksNeeded: Int
    package var bytesFetched: Int
    package var faultP99Us: Double
    /// The clones' faults (pages they waited for) and the pages replay copied ahead of them.
    package var faults: Int
    package var replayedPages: Int
    /// The most GETs nginx logged for one chunk during the row (fleet-64; nil elsewhere).
    package var maxServerGetsPerChunk: Int?
    /// The pack row's numbers.
    package var baseBytes: Int?
    package var diffBytes: Int?
    package var changedFraction: Double?
  }

  /// The report.
  package struct Report: Encodable, Sendable {
    package var mib: Int
    package var runs: Int
    package var chunkBytes: Int
    package var latencyMs: Double
    package var machine: String
    package var rows: [Row]
  }

  /// Where the servers are.
  package struct Servers: Sendable {
    package var http: String
    package var httpAccessLog: String?
    package var s3Endpoint: String
    package var s3Bucket: String

    package init(http: String, httpAccessLog: String?, s3Endpoint: String, s3Bucket: String) {
      self.http = http
      self.httpAccessLog = httpAccessLog
      self.s3Endpoint = s3Endpoint
      self.s3Bucket = s3Bucket
    }
  }

  package let mib: Int
  package let runs: Int
  package let clones: Int
  package let latency: Duration
  package let servers: Servers
  package static let chunkBytes = 2 << 20
  /// The chunk size of the `http-recorded-64k` row's pack.
  package static let smallChunkBytes = 64 << 10

  package init(mib: Int, runs: Int, clones: Int, latency: Duration, servers: Servers) {
    self.mib = mib
    self.runs = runs
    self.clones = clones
    self.latency = latency
    self.servers = servers
  }

  struct Sample {
    var completeMs = 0.0, gbps = 0.0, p99 = 0.0
    var chunksFetched = 0, bytesFetched = 0
    var faults = 0, replayedPages = 0
    var serverGets: Int?
  }

  package func run(progress: Progress) async throws -> Report {
    let size = mib << 20
    let folder = NSTemporaryDirectory() + "uffd-bench-remote-\(getpid())"
    try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(atPath: folder) }
    let raw = folder + "/snapshot.mem"
    progress("writing a \(mib) MiB snapshot, packing it in 2 MiB chunks, pushing it to nginx and S3")
    try RestoreBenchmark.writeSnapshot(path: raw, size: size)
    let base = try await SnapshotPacker.pack(file: raw, into: folder + "/store/base", chunkSize: Self.chunkBytes)
    let prefix = "bench-remote-\(getpid())"
    let httpManifest = try await SnapshotTransfer.push(manifestPath: folder + "/store/base/manifest.json",
                                                       to: "\(servers.http)/\(prefix)").manifestURL
    let s3Manifest = try await SnapshotTransfer.push(manifestPath: folder + "/store/base/manifest.json",
                                                     to: "s3://\(servers.s3Bucket)/\(prefix)", endpoint: servers.s3Endpoint).manifestURL
    guard let httpPort = Self.port(servers.http), let s3Port = Self.port(servers.s3Endpoint) else {
      throw ToolError("the servers must be http://127.0.0.1:PORT addresses (loopback only)")
    }
    _ = try await SnapshotPacker.pack(file: raw, into: folder + "/store/small", chunkSize: Self.smallChunkBytes)
    let smallManifest = try await SnapshotTransfer.push(manifestPath: folder + "/store/small/manifest.json",
                                                        to: "\(servers.http)/\(prefix)-64k").manifestURL
    let single = Self.chunksNeeded(size: size, seeds: [1000])
    let singleSmall = Self.chunksNeeded(size: size, seeds: [1000], chunkBytes: Self.smallChunkBytes)
    let fleet = Self.chunksNeeded(size: size, seeds: (0..<clones).map { UInt64(1000 + $0) })
    var samples: [String: [Sample]] = [:]
    for run in 1...runs {
      progress("run \(run)/\(runs): local, cache-warm, http-cold, s3-cold")
      samples["local", default: []].append(try measure(snapshot: raw, clones: 1))
      samples["cache-warm", default: []].append(try measure(snapshot: httpManifest, clones: 1, warm: true))
      samples["http-cold", default: []].append(try measure(snapshot: httpManifest, clones: 1, through: (servers.http, httpPort)))
      samples["s3-cold", default: []].append(try measure(snapshot: s3Manifest, clones: 1, through: (servers.s3Endpoint, s3Port)))
      progress("run \(run)/\(runs): recorded working sets: local, http (2 MiB and 64 KiB chunks)")
      samples["local-recorded", default: []].append(try measure(snapshot: raw, clones: 1, recorded: true))
      samples["http-recorded", default: []].append(try measure(snapshot: httpManifest, clones: 1, through: (servers.http, httpPort), recorded: true))
      samples["http-recorded-64k", default: []].append(
        try measure(snapshot: smallManifest, clones: 1, through: (servers.http, httpPort), recorded: true))
      progress("run \(run)/\(runs): \(clones) clones from the local file, then from nginx")
      samples["fleet-\(clones)-local", default: []].append(try measure(snapshot: raw, clones: clones))
      samples["fleet-\(clones)", default: []].append(try measure(snapshot: httpManifest, clones: clones, through: (servers.http, httpPort)))
    }
    var rows: [Row] = []
    for (source, count, needed) in [("local", 1, single), ("cache-warm", 1, single), ("http-cold", 1, single), ("s3-cold", 1, single),
                                     ("local-recorded", 1, single), ("http-recorded", 1, single), ("http-recorded-64k", 1, singleSmall),
                                     ("fleet-\(clones)-local", clones, fleet), ("fleet-\(clones)", clones, fleet)] {
      let list = samples[source] ?? []
      func m(_ value: (Sample) -> Double) -> Double { median(list.map(value)) }
      rows.append(Row(
        source: source, clones: count, completeMs: m(\.completeMs), gbps: m(\.gbps),
        chunksFetched: Int(m { Double($0.chunksFetched) }), chunksNeeded: needed, bytesFetched: Int(m { Double($0.bytesFetched) }),
        faultP99Us: m(\.p99), faults: Int(m { Double($0.faults) }), replayedPages: Int(m { Double($0.replayedPages) }),
        maxServerGetsPerChunk: list.compactMap(\.serverGets).max()))
    }
    progress("pack: a diff with 5% of the pages changed")
    rows.append(try await packRow(raw: raw, folder: folder, base: base))
    return Report(mib: mib, runs: runs, chunkBytes: Self.chunkBytes, latencyMs: Double(latency.nanosecondsValue) / 1e6,
                  machine: Self.machine, rows: rows)
  }

  /// One restore: a pager in this process serving `snapshot` (through a proxy adding `latency`
  /// when `through` names a server), `clones` clones reading their working sets.
  private func measure(snapshot: String, clones: Int, warm: Bool = false, through: (url: String, port: Int)? = nil,
                       recorded: Bool = false) throws -> Sample {
    // No latency asked: straight to the server, no proxy in between.
    let proxy = latency == .zero ? nil : try through.map { try FaultInjectingProxy(upstreamPort: $0.port) }
    defer { proxy?.stop() }
    proxy?.set(.delay(latency))
    var address = snapshot
    if let through, let proxy { address = snapshot.replacingOccurrences(of: through.url, with: proxy.url) }
    let socket = NSTemporaryDirectory() + "uffd-bench-remote-\(getpid()).sock"
    var configuration = PagerConfiguration(listens: [.init(socketPath: socket, snapshotPath: address)], maxSessions: max(clones, 1))
    configuration.remote.endpoint = through.map { $0.url == servers.s3Endpoint ? (proxy?.url ?? $0.url) : servers.s3Endpoint }
      ?? servers.s3Endpoint
    var logger = Logger(label: "uffd.bench.remote")
    logger.logLevel = .error
    let workingSets = NSTemporaryDirectory() + "uffd-bench-remote-ws-\(getpid())"
    defer { if recorded { try? FileManager.default.removeItem(atPath: workingSets) } }
    if recorded {
      // A first pager records the clone's working set (written as its session ends, before
      // `waitUntilFinished` returns); the measured pager below starts with an empty cache.
      try? FileManager.default.removeItem(atPath: workingSets)
      try FileManager.default.createDirectory(atPath: workingSets, withIntermediateDirectories: true)
      var recording = configuration
      recording.workingSets = WorkingSetSettings(recordDirectory: workingSets, traces: 1)
      let recorder = try SnapshotPagerHost(configuration: recording, logger: logger)
      try recorder.start()
      let outcome = Result { try FleetBenchmark(mib: mib, clients: [], runs: 1, daemonExecutable: "").runClones(1, size: mib << 20, seed: 1) { _ in socket } }
      recorder.stop()
      _ = recorder.waitUntilFinished(timeout: .seconds(30))
      _ = try outcome.get()
      configuration.workingSets = WorkingSetSettings(replayDirectory: workingSets)
    }
    let ended = Mutex<[SnapshotServer.Statistics]>([])
    let pager = try SnapshotPagerHost(configuration: configuration, logger: logger) { statistics in ended.withLock { $0.append(statistics) } }
    try pager.start()
    defer {
      pager.stop()
      _ = pager.waitUntilFinished(timeout: .seconds(30))
    }
    let fleet = FleetBenchmark(mib: mib, clients: [], runs: 1, daemonExecutable: "")
    if warm { _ = try fleet.runClones(1, size: mib << 20, seed: 1) { _ in socket } }
    let before = pager.chunkCache?.statistics ?? .init()
    let logStart = servers.httpAccessLog.flatMap { try? FileManager.default.attributesOfItem(atPath: $0)[.size] as? Int } ?? 0
    let result = try fleet.runClones(clones, size: mib << 20, seed: 1) { _ in socket }
    let after = pager.chunkCache?.statistics ?? .init()
    // The sessions' summaries arrive as they end (the clones have exited: bounded).
    let deadline = ContinuousClock.now + .seconds(10)
    while ended.withLock({ $0.count }) < clones + (warm ? 1 : 0), ContinuousClock.now < deadline { usleep(1000) }
    let sessions = ended.withLock { $0.dropFirst(warm ? 1 : 0) }
    var sample = Sample(completeMs: result.wallMs, gbps: result.gbps, p99: result.p99,
                        chunksFetched: after.chunksFetched - before.chunksFetched, bytesFetched: after.bytesFetched - before.bytesFetched,
                        faults: sessions.reduce(0) { $0 + $1.faults }, replayedPages: sessions.reduce(0) { $0 + $1.pagesByReplay })
    if clones > 1, through?.url == servers.http, let log = servers.httpAccessLog {
      sample.serverGets = Self.maxGetsPerChunk(log: log, from: logStart)
    }
    return sample
  }

  private func packRow(raw: String, folder: String, base: SnapshotPacker.Report) async throws -> Row {
    let next = folder + "/next.mem"
    let pages = (mib << 20) / 4096
    let changed = pages / 20
    try FileManager.default.copyItem(atPath: raw, toPath: next)
    let handle = try FileHandle(forUpdating: URL(fileURLWithPath: next))
    var generator = SystemRandomNumberGenerator()
    var chosen = Set<Int>()
    while chosen.count < changed { chosen.insert(Int.random(in: 0..<pages, using: &generator)) }
    for page in chosen.sorted() {
      try handle.seek(toOffset: UInt64(page * 4096))
      try handle.write(contentsOf: Data((0..<4096).map { _ in UInt8.random(in: 0...255, using: &generator) }))
    }
    try handle.close()
    let clock = ContinuousClock()
    let start = clock.now
    let diff = try await SnapshotPacker.pack(file: next, into: folder + "/store/next", chunkSize: Self.chunkBytes,
                                             basePath: folder + "/store/base/manifest.json")
    let elapsed = clock.now - start
    return Row(source: "pack", clones: 0, completeMs: Double(elapsed.nanosecondsValue) / 1e6,
               gbps: Double(mib << 20) / Double(max(1, elapsed.nanosecondsValue)), chunksFetched: 0, chunksNeeded: 0,
               bytesFetched: 0, faultP99Us: 0, faults: 0, replayedPages: 0, baseBytes: base.layerBytes, diffBytes: diff.layerBytes + diff.manifestBytes,
               changedFraction: Double(diff.changedPages) / Double(pages))
  }

  /// Distinct 2 MiB chunks the clones' working sets touch (the pages `cuffd_ref_fleet_client`
  /// reads for each seed: a tenth of the pages in 64 KiB runs).
  static func chunksNeeded(size: Int, seeds: [UInt64], chunkBytes: Int = chunkBytes) -> Int {
    let pages = size / 4096, run = 16, slots = pages / run, count = pages / 10
    var chunks = Set<Int>()
    for seed in seeds {
      let shift = seed &* 0x632B_E59B_D9B4_E019
      for i in 0..<count {
        let slot = Int((UInt64(i / run) &* 0x9E37_79B1 &+ shift) % UInt64(slots))
        chunks.insert((slot * run + i % run) * 4096 / chunkBytes)
      }
    }
    return chunks.count
  }

  /// The most GETs of one chunk in nginx's access log after byte `offset`.
  static func maxGetsPerChunk(log: String, from offset: Int) -> Int {
    guard let data = FileManager.default.contents(atPath: log), data.count >= offset else { return 0 }
    var counts: [Substring: Int] = [:]
    for line in String(decoding: data[offset...], as: UTF8.self).split(separator: "\n") where line.contains("/chunks/") && line.contains("\"GET ") {
      if let path = line.split(separator: " ").first(where: { $0.contains("/chunks/") }) { counts[path, default: 0] += 1 }
    }
    return counts.values.max() ?? 0
  }

  static func port(_ url: String) -> Int? {
    guard url.hasPrefix("http://127.0.0.1:") || url.hasPrefix("http://localhost:") else { return nil }
    return url.split(separator: ":").last.flatMap { Int($0.prefix { $0.isNumber }) }
  }

  static var machine: String {
    var name = utsname()
    uname(&name)
    let release = withUnsafeBytes(of: &name.release) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
    return "\(ProcessInfo.processInfo.activeProcessorCount) CPUs, Linux \(release)"
  }

  /// A table of the rows.
  package static func table(_ report: Report) -> String {
    var lines = ["\(report.mib) MiB snapshot, 2 MiB chunks, \(report.latencyMs) ms injected per request, medians of \(report.runs) (\(report.machine))",
                 "source             clones  complete_ms     GB/s  chunks fetched/needed  bytes_fetched  fault_p99_us   faults  replayed"]
    for row in report.rows where row.source != "pack" {
      lines.append("\(row.source.padding(toLength: 18, withPad: " ", startingAt: 0)) \(String(format: "%6d %12.1f %8.2f %10d/%-10d %14d %13.1f %8d %9d", row.clones, row.completeMs, row.gbps, row.chunksFetched, row.chunksNeeded, row.bytesFetched, row.faultP99Us, row.faults, row.replayedPages))"
                   + (row.maxServerGetsPerChunk.map { "  (nginx: at most \($0) GET per chunk)" } ?? ""))
    }
    for row in report.rows where row.source == "pack" {
      lines.append(String(format: "pack: %.1f%% of pages changed, diff %d bytes = %.2f%% of the base's %d, in %.0f ms",
                          (row.changedFraction ?? 0) * 100, row.diffBytes ?? 0,
                          Double(row.diffBytes ?? 0) / Double(max(1, row.baseBytes ?? 1)) * 100, row.baseBytes ?? 0, row.completeMs))
    }
    return lines.joined(separator: "\n")
  }
}

extension Duration {
  var nanosecondsValue: Int64 {
    let (seconds, attoseconds) = components
    return seconds * 1_000_000_000 + attoseconds / 1_000_000_000
  }
}
