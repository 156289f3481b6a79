import CompactingHeap
import Foundation
import Userfaultfd

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
    init(medianOf runs: [CompactionResult], of stall: (CompactionResult) -> MutatorStall = \.mutatorStall) {
      func microseconds(_ value: (MutatorStall) -> Int64) -> Double {
        median(runs.map { Double(value(stall($0))) / 1000 })
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
    /// Pages a MOVE mapped although the kernel answered EEXIST (summed over the runs).
    package var movesAnsweredExisting: Int
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
    /// Per fault that waited for a page someone else held (the GC compacting it, or anyone
    /// mapping it): the wait, percentiles' medians over the runs.
    package var mutatorWaitUs: Stall
    /// The stalls of faults that overlapped a GC map ioctl (percentiles' medians over the runs),
    /// and how many faults did, in the median run, against all its faults.
    package var mutatorStallOverlappingGcIoctlUs: Stall
    package var faultsOverlappingGcIoctl: Int
    /// The median run's faults that waited for a page the GC was compacting / being mapped.
    package var waitsOnProcessing: Int
    package var waitsOnMapping: Int
    /// Each fault's own CPU time (the faulting thread's), percentiles' medians over the runs:
    /// what a fault costs while it runs.
    package var mutatorFaultCpuUs: Stall
    /// The stalls of the faults whose thread kept the CPU throughout (no context switch of
    /// either kind), percentiles' medians over the runs, and how many in the median run.
    package var mutatorStallOnCpuUs: Stall
    package var faultsOnCpu: Int
    /// The median run's faults preempted at least once (the scheduler took the CPU), the
    /// involuntary switches in them, and the faults that gave the CPU up themselves.
    package var preemptedFaults: Int
    package var involuntarySwitchesInFaults: Int
    package var blockedFaults: Int
    /// The median run's stalls by powers of two of microseconds (element k: 2^k to 2^(k+1) µs).
    package var mutatorStallCountsPow2Us: [Int]
    package var mappingTimeline: Timeline
    package var runs: [Sample]
    /// `auto` only: cycles per strategy chosen (`{"move": 3, "copy": 2}`).
    package var strategyChosen: [String: Int]? = nil
    /// `auto` only: the last cycle's reason for its choice.
    package var strategyReason: String? = nil
    /// `auto` only: the warm-up cycles run before the measured ones (left out of every median),
    /// their choices and reasons in order; empty when none ran.
    package var warmUpCycles: [Choice]? = nil
    /// `auto` only: every cycle's choice and reason, in order.
    package var strategyCycles: [Choice]? = nil
    /// `auto` only: the calibration and the costs measured under each strategy it chose.
    package var strategyCosts: Costs? = nil
    /// `auto` only: medians over the cycles that ran what the evidence said (after the first
    /// cycle and the cycles measuring both strategies); nil when there were none.
    package var decided: Decided? = nil
  }

  /// `modes.auto.decided`: the automatic choice once it has decided.
  package struct Decided: Encodable, Sendable {
    package var cycles: Int
    package var compactionThreadMs: Double
    package var compactionThreadCpuMs: Double
    package var mutatorStallUs: Stall
  }

  /// One automatic cycle's choice.
  package struct Choice: Encodable, Sendable {
    package var strategy: String
    package var reason: String
  }

  /// What the automatic choice measured: the start-up calibration (mapping cost per page with
  /// busy threads in the process) and, per strategy it chose, the medians of its cycles.
  package struct Costs: Encodable, Sendable {
    package struct Measured: Encodable, Sendable {
      package var cycles: Int
      package var gcUsPerPage: Double
      package var gcCpuUsPerPage: Double
      package var stallP99Us: Double
    }
    package var calibrationMoveUsPerPage: Double?
    package var calibrationCopyUsPerPage: Double?
    package var calibrationMs: Double?
    /// The calibration's time over the median cycle's GC thread time (the concurrent phase).
    package var calibrationFractionOfCycle: Double?
    /// The calibration's time over the median whole cycle (mark, pause and concurrent phase).
    package var calibrationFractionOfFullCycle: Double?
    package var move: Measured?
    package var copy: Measured?
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
  /// Heaps backed by transparent huge pages (`--huge-pages`).
  package var hugePages = false
  package var seed: UInt64
  package var faultMode: String
  package var runs: Int
  package var verified: Bool
  package var pauseMs: Double
  package var peakRssMib: Double
  package var memcpyGbps: Double
  package var moveVsCopyRatio: Double?
  /// The page-compaction routine alone (no ioctls, no other threads, CPU time): live bytes per
  /// nanosecond, and that over memcpy's.
  package var pageRoutineGbps = 0.0
  package var pageRoutineMemcpyFraction = 0.0
  /// `auto`'s GC thread time over the better of `move` and `copy` (when all three ran).
  package var autoVsBestGcRatio: Double?
  /// `auto`'s mutator stall p99 over the better of `move` and `copy`.
  package var autoVsBestStallP99Ratio: Double?
  /// `auto`'s GC thread time and stall p99 over the better fixed strategy (the one of `move` and
  /// `copy` with the lower median GC thread time), round by round (the cycles of one round ran
  /// one after another), median over the rounds: less sensitive than the ratio of medians to a
  /// slow spell of the machine that lands on some rounds.
  package var autoVsBetterGcRatioPerRound: Double?
  package var autoVsBetterStallP99RatioPerRound: Double?
  /// The same two over `auto`'s decided cycles only (``Mode/decided``).
  package var autoDecidedVsBestGcRatio: Double?
  package var autoDecidedVsBestStallP99Ratio: Double?
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
        intrudedPages: runs.map(\.intrudedPages).max() ?? 0,
        movesAnsweredExisting: runs.map(\.movesAnsweredExisting).reduce(0, +), releasedPages: typical.releasedPages,
        errnos: typical.errnoCounts, mutatorWrites: typical.mutatorWrites,
        // A median over the runs: one run's rate swings with how the scheduler shared the CPUs.
        mutatorWritesPerMs: median(runs.map(\.mutatorWritesPerMs)),
        rssBeforeMib: before, peakRssMib: peak, peakRssRatio: before > 0 ? peak / before : 0,
        verified: runs.allSatisfy(\.verified),
        mutatorStallUs: Stall(medianOf: runs),
        mutatorStallMsPerMutator: median(runs.map { $0.stalledMilliseconds(perMutatorOf: mutators) }),
        mutatorWaitUs: Stall(medianOf: runs, of: \.mutatorWait),
        mutatorStallOverlappingGcIoctlUs: Stall(medianOf: runs, of: \.mutatorStallOverlappingGCMapping),
        faultsOverlappingGcIoctl: typical.mutatorStallOverlappingGCMapping.count,
        waitsOnProcessing: typical.waitsOnProcessing, waitsOnMapping: typical.waitsOnMapping,
        mutatorFaultCpuUs: Stall(medianOf: runs, of: \.mutatorFaultCPU),
        mutatorStallOnCpuUs: Stall(medianOf: runs, of: \.mutatorStallOnCPU),
        faultsOnCpu: typical.mutatorStallOnCPU.count, preemptedFaults: typical.preemptedFaults,
        involuntarySwitchesInFaults: typical.involuntarySwitchesInFaults, blockedFaults: typical.blockedFaults,
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
      if strategy == .automatic { modes[strategy.rawValue]?.describeChoices(of: runs, cycleMs: wall) }
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
      if let auto = modes["auto"] {
        autoVsBestGcRatio = auto.compactionThreadMs / max(1e-9, min(move.compactionThreadMs, copy.compactionThreadMs))
        let best = min(move.mutatorStallUs.p99, copy.mutatorStallUs.p99)
        if best > 0 { autoVsBestStallP99Ratio = auto.mutatorStallUs.p99 / best }
        let better: MappingStrategy = move.compactionThreadMs <= copy.compactionThreadMs ? .move : .copy
        if let fixed = results[better], let automatic = results[.automatic], fixed.count == automatic.count {
          autoVsBetterGcRatioPerRound = median(zip(automatic, fixed).map {
            Double($0.compactionWallNanoseconds) / Double(max(1, $1.compactionWallNanoseconds))
          })
          let stalls = zip(automatic, fixed).filter { $1.mutatorStall.p99 > 0 }
          if !stalls.isEmpty {
            autoVsBetterStallP99RatioPerRound = median(stalls.map { Double($0.mutatorStall.p99) / Double($1.mutatorStall.p99) })
          }
        }
        if let decided = auto.decided {
          autoDecidedVsBestGcRatio = decided.compactionThreadMs / max(1e-9, min(move.compactionThreadMs, copy.compactionThreadMs))
          if best > 0 { autoDecidedVsBestStallP99Ratio = decided.mutatorStallUs.p99 / best }
        }
      }
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
    if hugePages { lines.append("Heaps backed by transparent huge pages (MADV_HUGEPAGE).") }
    lines.append("Medians of \(runs) runs per strategy (strategies interleaved); counts from the median run.")
    let names = ["move", "copy", "copy-1", "auto"].filter { modes[$0] != nil }
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
      let wait = m.mutatorWaitUs
      lines.append(String(
        format: "%@: faults that waited for a held page: %d on the GC compacting it, %d on a mapping ioctl; wait p50 %.1f µs, p99 %.1f µs, max %.1f µs",
        name, m.waitsOnProcessing, m.waitsOnMapping, wait.p50, wait.p99, wait.max))
      let overlap = m.mutatorStallOverlappingGcIoctlUs
      lines.append(String(
        format: "%@: %d of %d faults overlapped a GC map ioctl: their stall p50 %.1f µs, p99 %.1f µs, max %.1f µs",
        name, m.faultsOverlappingGcIoctl, m.mutatorFaults, overlap.p50, overlap.p99, overlap.max))
      let onCpu = m.mutatorStallOnCpuUs, cpu = m.mutatorFaultCpuUs
      lines.append(String(
        format: "%@: %d faults preempted (%d involuntary switches), %d gave up the CPU; the %d that kept it: stall p50 %.1f µs, p99 %.1f µs, max %.1f µs; fault CPU time p99 %.0f µs, max %.0f µs",
        name, m.preemptedFaults, m.involuntarySwitchesInFaults, m.blockedFaults, m.faultsOnCpu, onCpu.p50, onCpu.p99, onCpu.max, cpu.p99, cpu.max))
      lines.append("\(name): \(m.mutatorFaults) mutator faults, \(m.recycledPages) recycled pages, "
        + "\(m.bufferPages) GC buffer pages, \(m.releasedPages) from-space pages released early, \(m.busyFallbacks) EBUSY fallbacks, "
        + "\(m.intrudedPages) pages found mapped outside the compaction, "
        + "\(m.movesAnsweredExisting) pages moved that MOVE answered EEXIST for, \(m.mutatorWrites) mutator writes verified (\(Int(m.mutatorWritesPerMs))/ms); "
        + "ioctl errnos (all handled): \(errnos)")
    }
    if let auto = modes["auto"] {
      let chosen = (auto.strategyChosen ?? [:]).sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", ")
      lines.append("auto: cycles by strategy chosen: \(chosen)")
      for (cycle, choice) in (auto.strategyCycles ?? []).enumerated() {
        lines.append("auto, cycle \(cycle + 1): \(choice.reason)")
      }
      if let costs = auto.strategyCosts, let ms = costs.calibrationMs {
        lines.append(String(
          format: "auto: calibration %.2f ms (%.2f%% of the median cycle's GC thread time, %.2f%% of its mark, pause and compaction)",
          ms, 100 * (costs.calibrationFractionOfCycle ?? 0), 100 * (costs.calibrationFractionOfFullCycle ?? 0)))
      }
    }
    lines.append(String(format: "memcpy here: %.1f GB/s", memcpyGbps))
    lines.append(String(format: "the page routine alone (no ioctls, one thread, CPU time): %.2f GB/s, %.2f x memcpy",
                        pageRoutineGbps, pageRoutineMemcpyFraction))
    if let ratio = moveVsCopyRatio {
      lines.append(String(format: "MOVE/COPY compaction-thread time: %.2f", ratio))
    }
    if let gc = autoVsBestGcRatio {
      lines.append(String(format: "auto over the better of MOVE and COPY: GC thread time %.2f, mutator stall p99 %@", gc,
                          autoVsBestStallP99Ratio.map { String(format: "%.2f", $0) } ?? "n/a"))
    }
    if let gc = autoVsBetterGcRatioPerRound {
      lines.append(String(format: "auto over the better fixed strategy, round by round (median of the rounds' ratios): GC thread time %.2f, mutator stall p99 %@", gc,
                          autoVsBetterStallP99RatioPerRound.map { String(format: "%.2f", $0) } ?? "n/a"))
    }
    if let warmUp = modes["auto"]?.warmUpCycles, !warmUp.isEmpty {
      lines.append("auto: \(warmUp.count) warm-up cycles before the measured ones (not in the medians): "
        + warmUp.map(\.strategy).joined(separator: ", "))
    }
    if let gc = autoDecidedVsBestGcRatio, let cycles = modes["auto"]?.decided?.cycles {
      lines.append(String(format: "auto's %d decided cycles (after measuring both) over the better: GC thread time %.2f, mutator stall p99 %@",
                          cycles, gc, autoDecidedVsBestStallP99Ratio.map { String(format: "%.2f", $0) } ?? "n/a"))
    }
    return lines.joined(separator: "\n")
  }
}

extension CompactReport.Mode {
  /// Fills the `auto`-only keys from its cycles, in the order they ran.
  mutating func describeChoices(of runs: [CompactionResult], cycleMs: Double) {
    let choices = runs.compactMap(\.choice)
    strategyChosen = Dictionary(choices.map { ($0.strategy.rawValue, 1) }, uniquingKeysWith: +)
    strategyReason = choices.last?.reason
    strategyCycles = choices.map { CompactReport.Choice(strategy: $0.strategy.rawValue, reason: $0.reason) }
    var costs = CompactReport.Costs()
    if let calibration = choices.lazy.compactMap(\.calibration).first {
      costs.calibrationMoveUsPerPage = calibration.moveNanosecondsPerPage / 1000
      costs.calibrationCopyUsPerPage = calibration.copyNanosecondsPerPage / 1000
      costs.calibrationMs = Double(calibration.nanoseconds) / 1e6
      costs.calibrationFractionOfCycle = cycleMs > 0 ? Double(calibration.nanoseconds) / 1e6 / cycleMs : nil
      let fullCycleMs = median(runs.map {
        Double($0.markNanoseconds + $0.pauseNanoseconds + $0.compactionWallNanoseconds) / 1e6
      })
      costs.calibrationFractionOfFullCycle = fullCycleMs > 0 ? Double(calibration.nanoseconds) / 1e6 / fullCycleMs : nil
    }
    func measured(_ strategy: MappingStrategy) -> CompactReport.Costs.Measured? {
      let cycles = runs.filter { $0.strategy == strategy }
      guard !cycles.isEmpty else { return nil }
      return .init(
        cycles: cycles.count,
        gcUsPerPage: median(cycles.map {
          Double($0.compactionWallNanoseconds) / 1000 / Double(max(1, ($0.liveBytes + PageSize.base - 1) / PageSize.base))
        }),
        gcCpuUsPerPage: median(cycles.map {
          Double($0.compactionCPUNanoseconds) / 1000 / Double(max(1, ($0.liveBytes + PageSize.base - 1) / PageSize.base))
        }),
        stallP99Us: median(cycles.map { Double($0.mutatorStall.p99) / 1000 }))
    }
    costs.move = measured(.move)
    costs.copy = measured(.copy)
    strategyCosts = costs
    let settled = runs.filter { $0.choice?.isDecided == true }
    if !settled.isEmpty {
      decided = CompactReport.Decided(
        cycles: settled.count, compactionThreadMs: median(settled.map { Double($0.compactionWallNanoseconds) / 1e6 }),
        compactionThreadCpuMs: median(settled.map { Double($0.compactionCPUNanoseconds) / 1e6 }),
        mutatorStallUs: CompactReport.Stall(medianOf: settled))
    }
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
