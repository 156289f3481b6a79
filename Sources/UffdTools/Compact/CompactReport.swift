import CompactingHeap
import Foundation

/// What `uffd compact` prints: per strategy the medians over its runs (counts from the median
/// run), the MOVE/COPY ratio of compaction-thread time, and the memcpy bound. Encodes to the JSON
/// keys the README documents.
package struct CompactReport: Encodable, Sendable {
  package struct Sample: Encodable, Sendable {
    package var pauseMs: Double
    package var compactionThreadMs: Double
    package var compactionThreadCpuMs: Double
    package var peakRssMib: Double
  }

  /// Stall percentiles in microseconds (`mutator_stall_us.{p50,p99,p999,max}`).
  package struct Stall: Encodable, Sendable {
    package var p50: Double
    package var p99: Double
    package var p999: Double
    package var max: Double

    /// Each percentile's median over `runs`.
    init(medianOf runs: [CompactionResult]) {
      func microseconds(_ value: (MutatorStall) -> Int64) -> Double {
        median(runs.map { Double(value($0.mutatorStall)) / 1000 })
      }
      p50 = microseconds(\.p50)
      p99 = microseconds(\.p99)
      p999 = microseconds(\.p999)
      max = microseconds(\.max)
    }
  }

  /// When pages were mapped, by the GC thread and by mutators (the median run's).
  package struct Timeline: Encodable, Sendable {
    package var binMs: Double
    package var pagesByGc: [Int]
    package var pagesByMutators: [Int]
  }

  package struct Mode: Encodable, Sendable {
    package var pauseMs: Double
    package var markMs: Double
    package var compactionThreadMs: Double
    package var compactionThreadCpuMs: Double
    package var compactionGbps: Double
    package var memcpyFraction: Double
    /// Live bytes per second of the compaction thread's CPU time, and that over memcpy.
    package var compactionCpuGbps: Double
    package var memcpyFractionCpu: Double
    package var pagesByGc: Int
    package var pagesByMutators: Int
    package var mutatorFaults: Int
    package var recycledPages: Int
    package var bufferPages: Int
    package var moveIoctls: Int
    package var pagesMoved: Int
    package var copyIoctls: Int
    package var pagesCopied: Int
    package var zeropageIoctls: Int
    package var busyFallbacks: Int
    /// Pages found present where only the compaction maps (something touched the heap in the pause).
    package var intrudedPages: Int
    /// From-space pages released during the concurrent phase.
    package var releasedPages: Int
    package var errnos: [String: Int]
    package var mutatorWrites: Int
    package var mutatorWritesPerMs: Double
    package var rssBeforeMib: Double
    package var peakRssMib: Double
    package var peakRssRatio: Double
    package var verified: Bool
    /// Mutator fault stalls (median run's percentiles, medians over runs for the total).
    package var mutatorStallUs: Stall
    /// Time each mutator spent stalled in faults, on average.
    package var mutatorStallMsPerMutator: Double
    /// The median run's stalls by powers of two of microseconds (element k: 2^k to 2^(k+1) µs).
    package var mutatorStallCountsPow2Us: [Int]
    package var mappingTimeline: Timeline
    package var runs: [Sample]
  }

  package var heapMib: Int
  package var liveMib: Double
  package var liveObjects: Int
  package var mutators: Int
  package var idleMutators: Bool
  package var mutatorBlockPages: Int
  /// The MOVE and COPY settings the cycles ran with.
  package var gcRunPages = 64
  package var minimumMoveRun = 16
  package var mutatorMapping = "copy"
  package var registerBeforeRemap = false
  package var seed: UInt64
  package var faultMode: String
  package var runs: Int
  package var verified: Bool
  package var pauseMs: Double
  package var peakRssMib: Double
  package var memcpyGbps: Double
  package var moveVsCopyRatio: Double?
  package var modes: [String: Mode]

  package init(heapMib: Int, mutators: Int, idleMutators: Bool, blockPages: Int, seed: UInt64, faultMode: FaultMode, memcpyGBps: Double,
       results: [MappingStrategy: [CompactionResult]]) {
    let mib = 1_048_576.0
    var modes: [String: Mode] = [:]
    for (strategy, runs) in results where !runs.isEmpty {
      let byTime = runs.sorted { $0.compactionWallNanoseconds < $1.compactionWallNanoseconds }
      let typical = byTime[byTime.count / 2]
      let wall = median(runs.map { Double($0.compactionWallNanoseconds) / 1e6 })
      let gbps = median(runs.map(\.compactionGBps))
      let cpuGbps = median(runs.map(\.compactionCPUGBps))
      let before = median(runs.map { Double($0.residentBefore) / mib })
      let peak = median(runs.map { Double($0.peakResident) / mib })
      modes[strategy.rawValue] = Mode(
        pauseMs: median(runs.map { Double($0.pauseNanoseconds) / 1e6 }),
        markMs: median(runs.map { Double($0.markNanoseconds) / 1e6 }),
        compactionThreadMs: wall,
        compactionThreadCpuMs: median(runs.map { Double($0.compactionCPUNanoseconds) / 1e6 }),
        compactionGbps: gbps, memcpyFraction: memcpyGBps > 0 ? gbps / memcpyGBps : 0,
        compactionCpuGbps: cpuGbps, memcpyFractionCpu: memcpyGBps > 0 ? cpuGbps / memcpyGBps : 0,
        pagesByGc: typical.pagesByGC, pagesByMutators: typical.pagesByMutators,
        mutatorFaults: typical.mutatorFaults, recycledPages: typical.recycledPages,
        bufferPages: typical.bufferPages, moveIoctls: typical.moveIoctls, pagesMoved: typical.pagesMoved,
        copyIoctls: typical.copyIoctls, pagesCopied: typical.pagesCopied,
        zeropageIoctls: typical.zeroPageIoctls, busyFallbacks: typical.busyFallbacks,
        intrudedPages: runs.map(\.intrudedPages).max() ?? 0, releasedPages: typical.releasedPages,
        errnos: typical.errnoCounts, mutatorWrites: typical.mutatorWrites,
        // A median over the runs: one run's rate swings with how the scheduler shared the CPUs.
        mutatorWritesPerMs: median(runs.map(\.mutatorWritesPerMs)),
        rssBeforeMib: before, peakRssMib: peak, peakRssRatio: before > 0 ? peak / before : 0,
        verified: runs.allSatisfy(\.verified),
        mutatorStallUs: Stall(medianOf: runs),
        mutatorStallMsPerMutator: median(runs.map { $0.stalledMilliseconds(perMutatorOf: mutators) }),
        mutatorStallCountsPow2Us: typical.mutatorStall.countsByPowerOfTwoMicroseconds,
        mappingTimeline: Timeline(
          binMs: Double(typical.timeline.binNanoseconds) / 1e6, pagesByGc: typical.timeline.pagesByGC,
          pagesByMutators: typical.timeline.pagesByMutators),
        runs: runs.map {
          Sample(pauseMs: Double($0.pauseNanoseconds) / 1e6,
                 compactionThreadMs: Double($0.compactionWallNanoseconds) / 1e6,
                 compactionThreadCpuMs: Double($0.compactionCPUNanoseconds) / 1e6,
                 peakRssMib: Double($0.peakResident) / mib)
        })
    }
    let any = results.values.first?.first
    self.heapMib = heapMib
    liveMib = Double(any?.liveBytes ?? 0) / mib
    liveObjects = any?.liveObjects ?? 0
    self.mutators = mutators
    self.idleMutators = idleMutators
    mutatorBlockPages = blockPages
    self.seed = seed
    self.faultMode = faultMode.rawValue
    runs = results.values.map(\.count).max() ?? 0
    verified = !modes.isEmpty && modes.values.allSatisfy(\.verified)
    pauseMs = modes.values.map(\.pauseMs).max() ?? 0
    peakRssMib = modes.values.map(\.peakRssMib).max() ?? 0
    memcpyGbps = memcpyGBps
    if let move = modes["move"], let copy = modes["copy"], copy.compactionThreadMs > 0 {
      moveVsCopyRatio = move.compactionThreadMs / copy.compactionThreadMs
    }
    self.modes = modes
  }

  /// The human-readable form.
  package var table: String {
    var lines: [String] = []
    lines.append(String(
      format: "Concurrent compaction: %d MiB heap, %.1f MiB live (%d objects), %d mutators %@, fault mode %@, mutator blocks of %d pages, seed %llu",
      heapMib, liveMib, liveObjects, mutators, idleMutators ? "idle (not touching the heap)" : "writing",
      faultMode, mutatorBlockPages, seed))
    lines.append(
      "GC runs of up to \(gcRunPages) pages per ioctl; under MOVE, runs under \(minimumMoveRun) pages copied, mutator mapping \(mutatorMapping);"
        + (registerBeforeRemap ? " the heap registered before the mremap." : " the mremap before the registration."))
    lines.append("Medians of \(runs) runs per strategy (strategies interleaved); counts from the median run.")
    let names = ["move", "copy", "copy-1"].filter { modes[$0] != nil }
    lines.append(formatTable(
      ["", "pause ms", "GC wall ms", "GC cpu ms", "GB/s live", "x memcpy", "x memcpy (cpu)", "pages GC", "pages mutators",
       "MOVE ioctls/pages", "COPY ioctls/pages", "RSS before MiB", "peak MiB", "peak/before", "verified"],
      names.compactMap { name in
        guard let m = modes[name] else { return nil }
        return [name, String(format: "%.2f", m.pauseMs), String(format: "%.1f", m.compactionThreadMs),
                String(format: "%.1f", m.compactionThreadCpuMs), String(format: "%.2f", m.compactionGbps),
                String(format: "%.2f", m.memcpyFraction), String(format: "%.2f", m.memcpyFractionCpu), "\(m.pagesByGc)", "\(m.pagesByMutators)",
                "\(m.moveIoctls)/\(m.pagesMoved)", "\(m.copyIoctls)/\(m.pagesCopied)",
                String(format: "%.0f", m.rssBeforeMib), String(format: "%.0f", m.peakRssMib),
                String(format: "%.3f", m.peakRssRatio), m.verified ? "yes" : "NO"]
      }))
    for name in names {
      guard let m = modes[name] else { continue }
      let errnos = m.errnos.isEmpty ? "none" : m.errnos.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", ")
      let stall = m.mutatorStallUs
      lines.append(String(
        format: "%@: mutator stall per fault p50 %.1f µs, p99 %.1f µs, p99.9 %.1f µs, max %.1f µs; %.1f ms stalled per mutator; %.0f writes/ms",
        name, stall.p50, stall.p99, stall.p999, stall.max, m.mutatorStallMsPerMutator, m.mutatorWritesPerMs))
      lines.append("\(name): \(m.mutatorFaults) mutator faults, \(m.recycledPages) recycled pages, "
        + "\(m.bufferPages) GC buffer pages, \(m.releasedPages) from-space pages released early, \(m.busyFallbacks) EBUSY fallbacks, "
        + "\(m.intrudedPages) pages found mapped outside the compaction, \(m.mutatorWrites) mutator writes verified (\(Int(m.mutatorWritesPerMs))/ms); "
        + "ioctl errnos (all handled): \(errnos)")
    }
    lines.append(String(format: "memcpy here: %.1f GB/s", memcpyGbps))
    if let ratio = moveVsCopyRatio {
      lines.append(String(format: "MOVE/COPY compaction-thread time: %.2f", ratio))
    }
    return lines.joined(separator: "\n")
  }
}

extension CompactionResult {
  /// Mutator writes per millisecond of the compaction thread's wall time.
  var mutatorWritesPerMs: Double { Double(mutatorWrites) / Swift.max(1e-9, Double(compactionWallNanoseconds) / 1e6) }

  /// Milliseconds each of `mutators` mutators spent stalled in faults, on average.
  func stalledMilliseconds(perMutatorOf mutators: Int) -> Double {
    Double(mutatorStall.total) / 1e6 / Double(Swift.max(1, mutators))
  }
}
