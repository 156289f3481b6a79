import ArgumentParser
import CompactingHeap
import Foundation
import Userfaultfd

/// `uffd compact`: build a fragmented heap, compact it concurrently with mutators running, verify,
/// and report (MOVE and COPY side by side by default).
struct CompactCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "compact",
    abstract: "Run concurrent heap compaction cycles (MOVE vs COPY) with mutators writing, verified.")

  @Option(help: "Heap size in MiB.") var heapMib = 256
  @Option(help: "Mutator threads working during compaction.") var mutators = 2
  @Option(help: "move, copy or both.") var mode = "both"
  @Option(help: "Workload seed.") var seed: UInt64 = 1
  @Option(help: "thread or sigbus (sigbus is not built yet for the heap).") var faultMode = "thread"
  @OptionGroup var output: OutputOptions

  func validate() throws {
    guard heapMib >= 2 else { throw ValidationError("--heap-mib must be at least 2") }
    guard mutators >= 1 else { throw ValidationError("--mutators must be at least 1") }
    guard ["move", "copy", "both"].contains(mode) else { throw ValidationError("unknown --mode '\(mode)': use move, copy or both") }
    guard FaultMode(rawValue: faultMode) != nil else { throw ValidationError("unknown --fault-mode '\(faultMode)': use thread or sigbus") }
  }

  struct ModeReport: Encodable {
    var pause_ms: Double
    var compaction_thread_ms: Double
    var compaction_thread_cpu_ms: Double
    var pages_by_gc: Int
    var pages_by_mutators: Int
    var move_ioctls: Int
    var copy_ioctls: Int
    var refusals: [String: Int]
    var mutator_writes: Int
    var peak_rss_mib: Double
    var rss_before_mib: Double
    var compaction_gbps: Double
    var verified: Bool
  }

  struct Report: Encodable {
    var heap_mib: Int
    var live_mib: Double
    var mutators: Int
    var seed: UInt64
    var verified: Bool
    var pause_ms: Double
    var peak_rss_mib: Double
    var modes: [String: ModeReport]
    var move_vs_copy_ratio: Double?
  }

  func run() throws {
    let strategies: [MappingStrategy] = mode == "both" ? [.move, .copy] : [MappingStrategy(rawValue: mode) ?? .move]
    var modes: [String: ModeReport] = [:]
    var live = 0.0
    for strategy in strategies {
      progress("building a \(heapMib) MiB heap (seed \(seed)) for \(strategy.rawValue)")
      let heap = try Heap(capacity: heapMib << 20, mutators: mutators)
      try Workload(seed: seed).populate(heap)
      progress("compacting with \(strategy.rawValue), \(mutators) mutators writing")
      let result = try Compactor(
        heap: heap, configuration: .init(strategy: strategy, faultMode: FaultMode(rawValue: faultMode) ?? .thread, seed: seed)
      ).run()
      live = Double(result.liveBytes) / 1_048_576
      modes[strategy.rawValue] = ModeReport(
        pause_ms: Double(result.pauseNanoseconds) / 1e6,
        compaction_thread_ms: Double(result.compactionWallNanoseconds) / 1e6,
        compaction_thread_cpu_ms: Double(result.compactionCPUNanoseconds) / 1e6,
        pages_by_gc: result.pagesByGC, pages_by_mutators: result.pagesByMutators,
        move_ioctls: result.moveIoctls, copy_ioctls: result.copyIoctls, refusals: result.refusals,
        mutator_writes: result.mutatorWrites, peak_rss_mib: Double(result.peakResident) / 1_048_576,
        rss_before_mib: Double(result.residentBefore) / 1_048_576,
        compaction_gbps: Double(result.liveBytes) / max(1, Double(result.compactionWallNanoseconds)),
        verified: result.verified)
      progress("\(strategy.rawValue): verified")
    }
    var ratio: Double?
    if let move = modes["move"], let copy = modes["copy"], copy.compaction_thread_ms > 0 {
      ratio = move.compaction_thread_ms / copy.compaction_thread_ms
    }
    let report = Report(
      heap_mib: heapMib, live_mib: live, mutators: mutators, seed: seed,
      verified: modes.values.allSatisfy(\.verified), pause_ms: modes.values.map(\.pause_ms).max() ?? 0,
      peak_rss_mib: modes.values.map(\.peak_rss_mib).max() ?? 0, modes: modes, move_vs_copy_ratio: ratio)
    if output.json {
      try printJSON(report)
    } else {
      print("Concurrent compaction of a \(heapMib) MiB heap (\(String(format: "%.1f", live)) MiB live), \(mutators) mutators writing, seed \(seed)")
      let names = ["move", "copy"].filter { modes[$0] != nil }
      print(formatTable(
        ["", "pause ms", "GC wall ms", "GC cpu ms", "GB/s live", "pages GC", "pages mutators", "MOVE", "COPY", "peak RSS MiB", "verified"],
        names.compactMap { name in
          guard let m = modes[name] else { return nil }
          return [name, String(format: "%.2f", m.pause_ms), String(format: "%.1f", m.compaction_thread_ms),
                  String(format: "%.1f", m.compaction_thread_cpu_ms), String(format: "%.2f", m.compaction_gbps),
                  "\(m.pages_by_gc)", "\(m.pages_by_mutators)", "\(m.move_ioctls)", "\(m.copy_ioctls)",
                  String(format: "%.0f", m.peak_rss_mib), m.verified ? "yes" : "NO"]
        }))
      if let ratio { print(String(format: "MOVE/COPY compaction-thread time: %.2f", ratio)) }
    }
  }

  private func progress(_ message: String) {
    FileHandle.standardError.write(Data("compact: \(message)\n".utf8))
  }
}
