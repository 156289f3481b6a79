import CompactingHeap
import Foundation
import Userfaultfd

/// One compaction setting in `uffd compact --variants`: ART's techniques, each turned on or off
/// against the defaults, so each row differs from the MOVE default in one thing.
package struct CompactVariant: Sendable {
  /// The row's name.
  package var name: String
  /// What it changes, for the table's legend.
  package var change: String
  package var strategy: MappingStrategy
  package var gcRunPages = 64
  package var mutatorMapping = MutatorMapping.copy
  package var registerBeforeRemap = false
  package var minimumMoveRun = 16
  /// Pages a mutator's fault compacts (nil: the job's setting).
  package var mutatorBlockPages: Int?

  /// The rows, in the order they run within each round. The first (batched COPY at the default
  /// run length) is the reference every ratio is taken against.
  package static var all: [CompactVariant] {
    [
      CompactVariant(name: "copy", change: "ART's batched COPY (64-page runs)", strategy: .copy),
      CompactVariant(name: "move", change: "the MOVE default: mutators COPY, 64-page runs, runs under 16 pages copied, mremap then register",
                     strategy: .move),
      CompactVariant(name: "move, every run moved", change: "the GC moves runs of any length (ART)",
                     strategy: .move, minimumMoveRun: 1),
      CompactVariant(name: "move, 8 MiB runs", change: "GC maps up to 2048 pages per ioctl (ART's ~8 MiB cadence)",
                     strategy: .move, gcRunPages: 2048),
      CompactVariant(name: "copy, 8 MiB runs", change: "batched COPY with 2048-page runs", strategy: .copy, gcRunPages: 2048),
      CompactVariant(name: "move, mutators move", change: "faulting mutators MOVE too (each MOVE flushes the TLB)",
                     strategy: .move, mutatorMapping: .move),
      CompactVariant(name: "move, mutators copy early", change: "mutators COPY while the GC is in the upper half, then MOVE",
                     strategy: .move, mutatorMapping: .copyEarly),
      CompactVariant(name: "move, register first", change: "register the heap before the mremap (ART's order)",
                     strategy: .move, registerBeforeRemap: true),
      CompactVariant(name: "move, 1-page faults", change: "a mutator's fault compacts one page (ART), not a 16-page block",
                     strategy: .move, mutatorBlockPages: 1),
      CompactVariant(name: "move, 1-page faults, every run moved", change: "both ART choices: one page per fault, every run moved",
                     strategy: .move, minimumMoveRun: 1, mutatorBlockPages: 1),
      CompactVariant(name: "copy, 1-page faults", change: "batched COPY with one page per fault (ART)",
                     strategy: .copy, mutatorBlockPages: 1),
    ]
  }
}

/// `uffd compact --variants`: every ``CompactVariant`` on the same heap, rounds interleaved,
/// medians per row and ratios against batched COPY. The base job gives the heap, the mutators,
/// the seed, the fault mode, the block size, idle mutators and the rounds; each variant sets the
/// rest.
package struct CompactVariantsJob: Sendable {
  package var base: CompactJob
  /// Which rows to run (all by default).
  package var variants = CompactVariant.all

  package init(base: CompactJob = CompactJob()) { self.base = base }

  /// The cycle configuration of `variant`.
  func configuration(_ variant: CompactVariant) -> CompactionConfiguration {
    var configuration = base.configuration(variant.strategy)
    configuration.gcRunPages = variant.gcRunPages
    configuration.mutatorMapping = variant.mutatorMapping
    configuration.registerBeforeRemap = variant.registerBeforeRemap
    configuration.minimumMoveRun = variant.minimumMoveRun
    configuration.mutatorBlockPages = variant.mutatorBlockPages ?? base.mutatorBlockPages
    return configuration
  }

  /// Runs every round and returns the report; `progress` hears each cycle.
  package func run(progress: Progress) throws -> CompactVariantsReport {
    let verdict = PageMover.moveVerdict
    let variants = verdict.isUsable ? variants : variants.filter { $0.strategy != .move }
    if !verdict.isUsable { progress("UFFDIO_MOVE is unavailable here (\(verdict)): COPY rows only") }
    var results = Array(repeating: [CompactionResult](), count: variants.count)
    for run in 1...base.runs {
      for (index, variant) in variants.enumerated() {
        let heap = try Heap(capacity: base.heapMib << 20, mutators: base.mutators, hugePages: base.hugePages)
        try Workload(seed: base.seed).populate(heap)
        let result = try Compactor(heap: heap, configuration: configuration(variant)).run()
        progress("round \(run)/\(base.runs), \(variant.name): verified, GC \(String(format: "%.1f", Double(result.compactionWallNanoseconds) / 1e6)) ms")
        results[index].append(result)
      }
    }
    return CompactVariantsReport(
      heapMib: base.heapMib, mutators: base.mutators, faultMode: base.faultMode, runs: base.runs, variants: variants,
      results: results)
  }
}

/// What `uffd compact --variants` prints: one row per variant (medians over the rounds).
package struct CompactVariantsReport: Encodable, Sendable {
  package struct Row: Encodable, Sendable {
    package var name: String
    package var change: String
    /// The row's settings.
    package var strategy: String
    package var gcRunPages: Int
    package var minimumMoveRun: Int
    package var mutatorMapping: String
    package var registerBeforeRemap: Bool
    package var mutatorBlockPages: Int?
    package var pauseMs: Double
    package var compactionThreadMs: Double
    package var compactionThreadCpuMs: Double
    /// GC-thread wall time over batched COPY's (the first row), median of per-round ratios.
    package var vsCopy: Double
    /// GC-thread CPU time over batched COPY's, the same way.
    package var vsCopyCpu: Double
    package var moveIoctls: Int
    package var copyIoctls: Int
    package var mutatorStallUs: CompactReport.Stall
    package var mutatorWritesPerMs: Double
    /// Time each mutator spent stalled in faults, on average.
    package var mutatorStallMsPerMutator: Double
    package var peakRssRatio: Double
    package var verified: Bool
  }

  package var heapMib: Int
  package var mutators: Int
  package var faultMode: String
  package var runs: Int
  package var rows: [Row]

  init(heapMib: Int, mutators: Int, faultMode: FaultMode, runs: Int, variants: [CompactVariant],
       results: [[CompactionResult]]) {
    self.heapMib = heapMib
    self.mutators = mutators
    self.faultMode = faultMode.rawValue
    self.runs = runs
    let reference = results.first ?? []
    rows = zip(variants, results).map { variant, runs in
      let typical = runs.sorted { $0.compactionWallNanoseconds < $1.compactionWallNanoseconds }[runs.count / 2]
      let ratios = zip(runs, reference).map {
        Double($0.compactionWallNanoseconds) / max(1, Double($1.compactionWallNanoseconds))
      }
      let cpuRatios = zip(runs, reference).map {
        Double($0.compactionCPUNanoseconds) / max(1, Double($1.compactionCPUNanoseconds))
      }
      return Row(
        name: variant.name, change: variant.change, strategy: variant.strategy.rawValue,
        gcRunPages: variant.gcRunPages, minimumMoveRun: variant.minimumMoveRun,
        mutatorMapping: variant.mutatorMapping.rawValue, registerBeforeRemap: variant.registerBeforeRemap,
        mutatorBlockPages: variant.mutatorBlockPages,
        pauseMs: median(runs.map { Double($0.pauseNanoseconds) / 1e6 }),
        compactionThreadMs: median(runs.map { Double($0.compactionWallNanoseconds) / 1e6 }),
        compactionThreadCpuMs: median(runs.map { Double($0.compactionCPUNanoseconds) / 1e6 }),
        vsCopy: median(ratios), vsCopyCpu: median(cpuRatios), moveIoctls: typical.moveIoctls, copyIoctls: typical.copyIoctls,
        mutatorStallUs: CompactReport.Stall(medianOf: runs),
        mutatorWritesPerMs: median(runs.map(\.mutatorWritesPerMs)),
        mutatorStallMsPerMutator: median(runs.map { $0.stalledMilliseconds(perMutatorOf: mutators) }),
        peakRssRatio: median(runs.map { Double($0.peakResident) / max(1, Double($0.residentBefore)) }),
        verified: runs.allSatisfy(\.verified))
    }
  }

  /// The human-readable form.
  package var table: String {
    var lines = [
      "ART's techniques on and off: \(heapMib) MiB heap, \(mutators) mutators writing, fault mode \(faultMode);"
        + " medians of \(runs) interleaved rounds (ratios per round against batched COPY, then the median).",
    ]
    lines.append(formatTable(
      ["variant", "GC ms", "GC cpu ms", "x copy", "x copy (cpu)", "pause ms", "MOVE/COPY ioctls", "stall p50/p99/p99.9 µs", "stalled ms", "writes/ms",
       "peak RSS", "verified"],
      rows.map { row in
        let stall = row.mutatorStallUs
        return [row.name, String(format: "%.1f", row.compactionThreadMs), String(format: "%.1f", row.compactionThreadCpuMs),
                String(format: "%.2f", row.vsCopy), String(format: "%.2f", row.vsCopyCpu), String(format: "%.2f", row.pauseMs), "\(row.moveIoctls)/\(row.copyIoctls)",
                String(format: "%.0f / %.0f / %.0f", stall.p50, stall.p99, stall.p999),
                String(format: "%.1f", row.mutatorStallMsPerMutator), String(format: "%.0f", row.mutatorWritesPerMs),
                String(format: "%.3f", row.peakRssRatio),
                row.verified ? "yes" : "NO"]
      }))
    for row in rows { lines.append("  \(row.name): \(row.change)") }
    return lines.joined(separator: "\n")
  }
}
