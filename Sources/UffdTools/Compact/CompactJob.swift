import CompactingHeap
import Userfaultfd

/// Which strategies `uffd compact` runs.
package enum CompactMode: String, CaseIterable, Sendable {
  /// MOVE only (an error where MOVE is unusable).
  case move
  /// COPY only, batched (one UFFDIO_COPY per contiguous run, as ART maps).
  case copy
  /// COPY with one page per ioctl (the unbatched variant).
  case copy1 = "copy-1"
  /// MOVE and batched COPY, interleaved, for the MOVE/COPY ratio (COPY alone where MOVE is
  /// unusable, said so).
  case both
  /// MOVE, batched COPY, one-page COPY and the automatic choice, interleaved.
  case all
  /// MOVE or batched COPY chosen per cycle from what they cost here (``MappingStrategy/automatic``;
  /// COPY where MOVE is unusable, said so): the default.
  case auto

  var strategies: [MappingStrategy] {
    switch self {
    case .move: [.move]
    case .copy: [.copy]
    case .copy1: [.copySinglePage]
    case .both: [.move, .copy]
    case .all: [.move, .copy, .copySinglePage, .automatic]
    case .auto: [.automatic]
    }
  }
}

/// `uffd compact`, the project's main job: builds the same fragmented heap from a seed once per
/// strategy and run, compacts it concurrently with mutators writing, verifies every cycle, and
/// reports medians with the memcpy bound measured in the same run.
package struct CompactJob: Sendable {
  /// The valid heap sizes in MiB: one 2 MiB unit up to half this machine's memory.
  package static var heapMibRange: ClosedRange<Int> { 2...max(2, Heap.maxCapacity >> 20) }
  /// The valid mutator counts.
  package static let mutatorRange = 1...64
  /// The valid run counts.
  package static let runRange = 1...100
  /// The valid mutator block sizes in pages.
  package static let blockPagesRange = 1...512

  package var heapMib = 256
  package var mutators = 2
  package var mode = CompactMode.auto
  package var seed: UInt64 = 1
  package var faultMode = FaultMode.sigbus
  package var mutatorBlockPages = 16
  package var idleMutators = false
  package var runs = 3
  /// The valid GC run lengths in pages.
  package static var gcRunPagesRange: ClosedRange<Int> { 1...CompactionConfiguration.maxGCRunPages }
  package var gcRunPages = 64
  package var mutatorMapping = MutatorMapping.copy
  package var registerBeforeRemap = false
  package var minimumMoveRun = 16
  /// Automatic cycles run before the measured ones and left out of the medians (nil: the
  /// selector's own warm-up, ``StrategySelector/warmUpCycles``, when `auto` runs beside the fixed
  /// strategies; none when it runs alone).
  package var autoWarmUp: Int?
  /// Heaps backed by transparent huge pages (``Heap/hugePages``).
  package var hugePages = false
  /// The valid warm-up counts.
  package static let autoWarmUpRange = 0...100

  /// The cycle configuration for `strategy`.
  func configuration(_ strategy: MappingStrategy) -> CompactionConfiguration {
    CompactionConfiguration(
      strategy: strategy, faultMode: faultMode, seed: seed, mutatorBlockPages: mutatorBlockPages,
      idleMutators: idleMutators, gcRunPages: gcRunPages, mutatorMapping: mutatorMapping,
      registerBeforeRemap: registerBeforeRemap, minimumMoveRun: minimumMoveRun)
  }

  package init() {}

  /// Runs every cycle and returns the report; `progress` hears each step.
  package func run(progress: Progress) throws -> CompactReport {
    var strategies = mode.strategies
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
    // One selector for every automatic cycle: it learns across them, as it would across one heap's cycles.
    let selector = StrategySelector()
    // The selector's warm-up, left out of the medians: a heap's selector settles once, in its
    // first few cycles, and compares the strategies it does not run; the measured cycles then
    // show the choice it settled on, as a long-running heap's cycles would.
    let warmUp = strategies.contains(.automatic) ? (autoWarmUp ?? (strategies.count > 1 ? StrategySelector.warmUpCycles : 0)) : 0
    var warmUpChoices: [StrategyChoice] = []
    for cycle in 0..<warmUp {
      let label = "auto warm-up \(cycle + 1)/\(warmUp)"
      progress("\(label): building a \(heapMib) MiB heap (seed \(seed))")
      let heap = try Heap(capacity: heapMib << 20, mutators: mutators, hugePages: hugePages)
      try Workload(seed: seed).populate(heap)
      let compactor = try Compactor(heap: heap, configuration: configuration(.automatic), selector: selector)
      let result = try compactor.run { progress("\(label): \($0)") }
      if let choice = result.choice {
        progress("\(label): chose \(choice.strategy.rawValue): \(choice.reason)")
        warmUpChoices.append(choice)
      }
    }
    for run in 1...runs {
      for strategy in strategies {
        let label = "run \(run)/\(runs), \(strategy.rawValue)"
        progress("\(label): building a \(heapMib) MiB heap (seed \(seed))")
        let heap = try Heap(capacity: heapMib << 20, mutators: mutators, hugePages: hugePages)
        try Workload(seed: seed).populate(heap)
        let compactor = try Compactor(heap: heap, configuration: configuration(strategy), selector: selector)
        let result = try compactor.run { progress("\(label): \($0)") }
        if let choice = result.choice { progress("\(label): chose \(choice.strategy.rawValue): \(choice.reason)") }
        progress(
          "\(label): verified; compaction thread \(milliseconds(result.compactionWallNanoseconds)) ms,"
            + " pause \(milliseconds(result.pauseNanoseconds)) ms")
        results[strategy, default: []].append(result)
      }
    }
    progress("measuring the page routine alone (no ioctls, one thread)")
    let routineHeap = try Heap(capacity: heapMib << 20, mutators: mutators, hugePages: hugePages)
    try Workload(seed: seed).populate(routineHeap)
    let routine = try PageRoutineBenchmark.measure(routineHeap)
    // Measured again after the cycles; the better of the two is the bound (this shared machine's
    // bandwidth varies from run to run).
    progress("measuring memcpy bandwidth again")
    let memcpy = max(memcpyBefore, try MemcpyBaseline.gigabytesPerSecond())
    var report = CompactReport(
      heapMib: heapMib, mutators: mutators, idleMutators: idleMutators, blockPages: mutatorBlockPages,
      seed: seed, faultMode: faultMode, memcpyGBps: memcpy, results: results)
    report.pageRoutineGbps = Double(routine.liveBytes) / max(1, Double(routine.nanoseconds))
    report.pageRoutineMemcpyFraction = memcpy > 0 ? report.pageRoutineGbps / memcpy : 0
    report.modes[MappingStrategy.automatic.rawValue]?.warmUpCycles = warmUpChoices.map {
      CompactReport.Choice(strategy: $0.strategy.rawValue, reason: $0.reason)
    }
    report.hugePages = hugePages
    report.gcRunPages = gcRunPages
    report.minimumMoveRun = minimumMoveRun
    report.mutatorMapping = mutatorMapping.rawValue
    report.registerBeforeRemap = registerBeforeRemap
    return report
  }

  /// The page routine alone on this job's heap (no ioctls, no faults, one thread): live bytes,
  /// pages, and CPU nanoseconds of the best of `repetitions` passes. What `uffd compact
  /// --page-routine` prints; quick to run under `valgrind --tool=callgrind`, whose instruction
  /// counts stay repeatable on a loaded machine.
  package func pageRoutine(repetitions: Int) throws -> (liveBytes: Int, nanoseconds: Int64) {
    let heap = try Heap(capacity: heapMib << 20, mutators: mutators, hugePages: hugePages)
    try Workload(seed: seed).populate(heap)
    return try PageRoutineBenchmark.measure(heap, repetitions: repetitions)
  }

  private func milliseconds(_ nanoseconds: Int64) -> String {
    let tenths = (nanoseconds + 50_000) / 100_000
    return "\(tenths / 10).\(tenths % 10)"
  }
}
