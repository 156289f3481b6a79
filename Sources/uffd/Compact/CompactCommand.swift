import ArgumentParser
import CompactingHeap
import Foundation
import Userfaultfd

/// `uffd compact`: the project's main job. Builds a fragmented heap from a seed, compacts it
/// concurrently with mutators writing, verifies every cycle, and reports MOVE beside COPY.
struct CompactCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "compact",
    abstract: "Concurrent heap compaction with mutators writing, MOVE vs COPY, every cycle verified.",
    discussion: """
      Each run builds the same heap from the seed, once per strategy, and compacts it the way \
      Android ART's collector does (README: The compacting heap). A failed verification is an \
      error and a non-zero exit. Progress goes to standard error; the table or JSON to standard output.
      """)

  @Option(parsing: .unconditional, help: "Heap size in MiB (the workload fills 90% of it, about 60% of that garbage).")
  var heapMib = 256
  @Option(parsing: .unconditional, help: "Mutator threads reading and writing their objects during compaction.")
  var mutators = 2
  @Option(help: "move, copy or both.")
  var mode = "both"
  @Option(parsing: .unconditional, help: "Workload seed: the same seed builds the same heap.")
  var seed: UInt64 = 1
  @Option(help: "How mutator faults are served: sigbus (in the faulting thread) or thread (a fault-server thread).")
  var faultMode = "sigbus"
  @Option(parsing: .unconditional, help: "A mutator's fault compacts the unprocessed pages around it within an aligned block of this many pages (1-512), mapped with one ioctl.")
  var mutatorBlockPages = 16
  @Flag(help: "Mutators spin without touching the heap: the compaction thread's cost alone, no faults.")
  var idleMutators = false
  @Option(parsing: .unconditional, help: "Cycles per strategy (strategies interleaved); the table shows medians.")
  var runs = 3
  @OptionGroup var output: OutputOptions

  func validate() throws {
    guard heapMib >= 2 else { throw ValidationError("--heap-mib must be at least 2 (one 2 MiB huge-page unit)") }
    let largest = Heap.maxCapacity >> 20
    guard heapMib <= largest else {
      throw ValidationError("--heap-mib must be at most \(largest) on this machine (half of its memory), got \(heapMib)")
    }
    guard mutators >= 1 else { throw ValidationError("--mutators must be at least 1") }
    guard mutators <= 64 else { throw ValidationError("--mutators must be at most 64") }
    guard strategies != nil else { throw ValidationError("unknown --mode '\(mode)': use move, copy or both") }
    guard FaultMode(rawValue: faultMode) != nil else {
      throw ValidationError("unknown --fault-mode '\(faultMode)': use sigbus or thread")
    }
    guard (1...512).contains(mutatorBlockPages) else { throw ValidationError("--mutator-block-pages must be between 1 and 512") }
    guard runs >= 1 && runs <= 100 else { throw ValidationError("--runs must be between 1 and 100") }
  }

  private var strategies: [MappingStrategy]? {
    mode == "both" ? [.move, .copy] : MappingStrategy(rawValue: mode).map { [$0] }
  }

  func run() throws {
    guard var strategies, let faultMode = FaultMode(rawValue: faultMode) else { return }
    // Capabilities at setup: without a usable MOVE, `both` runs COPY and says so; `move` is an error.
    let verdict = PageMover.moveVerdict
    if !verdict.isUsable && strategies.contains(.move) {
      guard strategies.count > 1 else {
        throw ToolError("--mode move needs UFFDIO_MOVE, which is not usable here (\(verdict)); use --mode copy")
      }
      strategies.removeAll { $0 == .move }
      progress("UFFDIO_MOVE is unavailable here (\(verdict)): running the COPY strategy only")
    }
    progress("measuring memcpy bandwidth")
    let memcpyBefore = try MemcpyBaseline.gigabytesPerSecond()
    var results: [MappingStrategy: [CompactionResult]] = [:]
    for run in 1...runs {
      for strategy in strategies {
        let label = "run \(run)/\(runs), \(strategy.rawValue)"
        progress("\(label): building a \(heapMib) MiB heap (seed \(seed))")
        let heap = try Heap(capacity: heapMib << 20, mutators: mutators)
        try Workload(seed: seed).populate(heap)
        let compactor = try Compactor(
          heap: heap, configuration: .init(strategy: strategy, faultMode: faultMode, seed: seed, mutatorBlockPages: mutatorBlockPages,
                                idleMutators: idleMutators))
        let result = try compactor.run { progress("\(label): \($0)") }
        progress(String(
          format: "%@: verified; compaction thread %.1f ms, pause %.2f ms", label,
          Double(result.compactionWallNanoseconds) / 1e6, Double(result.pauseNanoseconds) / 1e6))
        results[strategy, default: []].append(result)
      }
    }
    // Measured again after the cycles; the better of the two is the bound (this shared machine's
    // bandwidth varies from run to run).
    progress("measuring memcpy bandwidth again")
    let memcpy = max(memcpyBefore, try MemcpyBaseline.gigabytesPerSecond())
    let report = CompactReport(
      heapMib: heapMib, mutators: mutators, idleMutators: idleMutators, blockPages: mutatorBlockPages,
      seed: seed, faultMode: faultMode, memcpyGBps: memcpy,
      results: results)
    if output.json {
      try printJSON(report)
    } else {
      print(report.table)
    }
  }

  private func progress(_ message: String) {
    FileHandle.standardError.write(Data("compact: \(message)\n".utf8))
  }
}
