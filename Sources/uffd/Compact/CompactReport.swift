import CompactingHeap
import Foundation

/// What `uffd compact` prints: per strategy the medians over its runs (counts from the median
/// run), the MOVE/COPY ratio of compaction-thread time, and the memcpy bound. Encodes to the JSON
/// keys the README documents.
struct CompactReport: Encodable {
  struct Sample: Encodable {
    var pause_ms: Double
    var compaction_thread_ms: Double
    var compaction_thread_cpu_ms: Double
    var peak_rss_mib: Double
  }

  struct Mode: Encodable {
    var pause_ms: Double
    var mark_ms: Double
    var compaction_thread_ms: Double
    var compaction_thread_cpu_ms: Double
    var compaction_gbps: Double
    var memcpy_fraction: Double
    var pages_by_gc: Int
    var pages_by_mutators: Int
    var mutator_faults: Int
    var recycled_pages: Int
    var buffer_pages: Int
    var move_ioctls: Int
    var pages_moved: Int
    var copy_ioctls: Int
    var pages_copied: Int
    var zeropage_ioctls: Int
    var busy_fallbacks: Int
    var errnos: [String: Int]
    var mutator_writes: Int
    var mutator_writes_per_ms: Double
    var rss_before_mib: Double
    var peak_rss_mib: Double
    var peak_rss_ratio: Double
    var verified: Bool
    var runs: [Sample]
  }

  var heap_mib: Int
  var live_mib: Double
  var live_objects: Int
  var mutators: Int
  var idle_mutators: Bool
  var mutator_block_pages: Int
  var seed: UInt64
  var fault_mode: String
  var runs: Int
  var verified: Bool
  var pause_ms: Double
  var peak_rss_mib: Double
  var memcpy_gbps: Double
  var move_vs_copy_ratio: Double?
  var modes: [String: Mode]

  init(heapMib: Int, mutators: Int, idleMutators: Bool, blockPages: Int, seed: UInt64, faultMode: FaultMode, memcpyGBps: Double,
       results: [MappingStrategy: [CompactionResult]]) {
    let mib = 1_048_576.0
    var modes: [String: Mode] = [:]
    for (strategy, runs) in results where !runs.isEmpty {
      let byTime = runs.sorted { $0.compactionWallNanoseconds < $1.compactionWallNanoseconds }
      let typical = byTime[byTime.count / 2]
      let wall = median(runs.map { Double($0.compactionWallNanoseconds) / 1e6 })
      let gbps = median(runs.map(\.compactionGBps))
      let before = median(runs.map { Double($0.residentBefore) / mib })
      let peak = median(runs.map { Double($0.peakResident) / mib })
      modes[strategy.rawValue] = Mode(
        pause_ms: median(runs.map { Double($0.pauseNanoseconds) / 1e6 }),
        mark_ms: median(runs.map { Double($0.markNanoseconds) / 1e6 }),
        compaction_thread_ms: wall,
        compaction_thread_cpu_ms: median(runs.map { Double($0.compactionCPUNanoseconds) / 1e6 }),
        compaction_gbps: gbps, memcpy_fraction: memcpyGBps > 0 ? gbps / memcpyGBps : 0,
        pages_by_gc: typical.pagesByGC, pages_by_mutators: typical.pagesByMutators,
        mutator_faults: typical.mutatorFaults, recycled_pages: typical.recycledPages,
        buffer_pages: typical.bufferPages, move_ioctls: typical.moveIoctls, pages_moved: typical.pagesMoved,
        copy_ioctls: typical.copyIoctls, pages_copied: typical.pagesCopied,
        zeropage_ioctls: typical.zeroPageIoctls, busy_fallbacks: typical.busyFallbacks,
        errnos: typical.errnoCounts, mutator_writes: typical.mutatorWrites,
        mutator_writes_per_ms: Double(typical.mutatorWrites) / max(1e-9, Double(typical.compactionWallNanoseconds) / 1e6),
        rss_before_mib: before, peak_rss_mib: peak, peak_rss_ratio: before > 0 ? peak / before : 0,
        verified: runs.allSatisfy(\.verified),
        runs: runs.map {
          Sample(pause_ms: Double($0.pauseNanoseconds) / 1e6,
                 compaction_thread_ms: Double($0.compactionWallNanoseconds) / 1e6,
                 compaction_thread_cpu_ms: Double($0.compactionCPUNanoseconds) / 1e6,
                 peak_rss_mib: Double($0.peakResident) / mib)
        })
    }
    let any = results.values.first?.first
    heap_mib = heapMib
    live_mib = Double(any?.liveBytes ?? 0) / mib
    live_objects = any?.liveObjects ?? 0
    self.mutators = mutators
    idle_mutators = idleMutators
    mutator_block_pages = blockPages
    self.seed = seed
    fault_mode = faultMode.rawValue
    runs = results.values.map(\.count).max() ?? 0
    verified = !modes.isEmpty && modes.values.allSatisfy(\.verified)
    pause_ms = modes.values.map(\.pause_ms).max() ?? 0
    peak_rss_mib = modes.values.map(\.peak_rss_mib).max() ?? 0
    memcpy_gbps = memcpyGBps
    if let move = modes["move"], let copy = modes["copy"], copy.compaction_thread_ms > 0 {
      move_vs_copy_ratio = move.compaction_thread_ms / copy.compaction_thread_ms
    }
    self.modes = modes
  }

  /// The human-readable form.
  var table: String {
    var lines: [String] = []
    lines.append(String(
      format: "Concurrent compaction: %d MiB heap, %.1f MiB live (%d objects), %d mutators %@, fault mode %@, mutator blocks of %d pages, seed %llu",
      heap_mib, live_mib, live_objects, mutators, idle_mutators ? "idle (not touching the heap)" : "writing",
      fault_mode, mutator_block_pages, seed))
    lines.append("Medians of \(runs) runs per strategy (strategies interleaved); counts from the median run.")
    let names = ["move", "copy"].filter { modes[$0] != nil }
    lines.append(formatTable(
      ["", "pause ms", "GC wall ms", "GC cpu ms", "GB/s live", "x memcpy", "pages GC", "pages mutators",
       "MOVE ioctls/pages", "COPY ioctls/pages", "RSS before MiB", "peak MiB", "peak/before", "verified"],
      names.compactMap { name in
        guard let m = modes[name] else { return nil }
        return [name, String(format: "%.2f", m.pause_ms), String(format: "%.1f", m.compaction_thread_ms),
                String(format: "%.1f", m.compaction_thread_cpu_ms), String(format: "%.2f", m.compaction_gbps),
                String(format: "%.2f", m.memcpy_fraction), "\(m.pages_by_gc)", "\(m.pages_by_mutators)",
                "\(m.move_ioctls)/\(m.pages_moved)", "\(m.copy_ioctls)/\(m.pages_copied)",
                String(format: "%.0f", m.rss_before_mib), String(format: "%.0f", m.peak_rss_mib),
                String(format: "%.3f", m.peak_rss_ratio), m.verified ? "yes" : "NO"]
      }))
    for name in names {
      guard let m = modes[name] else { continue }
      let errnos = m.errnos.isEmpty ? "none" : m.errnos.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", ")
      lines.append("\(name): \(m.mutator_faults) mutator faults, \(m.recycled_pages) recycled pages, "
        + "\(m.buffer_pages) GC buffer pages, \(m.busy_fallbacks) EBUSY fallbacks, \(m.mutator_writes) mutator writes verified (\(Int(m.mutator_writes_per_ms))/ms); "
        + "ioctl errnos (all handled): \(errnos)")
    }
    lines.append(String(format: "memcpy here: %.1f GB/s", memcpy_gbps))
    if let ratio = move_vs_copy_ratio {
      lines.append(String(format: "MOVE/COPY compaction-thread time: %.2f", ratio))
    }
    return lines.joined(separator: "\n")
  }
}
