import ArgumentParser
import CompactingHeap
import UffdTools

/// `uffd compact`: the project's main job (``CompactJob``); this only parses and calls.
struct CompactCommand: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "compact",
    abstract: "Concurrent heap compaction with mutators writing, MOVE vs COPY, every cycle verified.",
    discussion: """
      Each run builds the same heap from the seed, once per strategy, and compacts it the way \
      Android ART's concurrent mark-compact collector does (the CompactingHeap documentation: \
      The compaction design). The default mode, auto, chooses MOVE or batched COPY per cycle \
      from what they cost here (a calibration, then each cycle's GC time and mutator stalls) and \
      says why; MOVE is never tried where it is unusable. A failed verification is an error and \
      a non-zero exit. Progress goes to standard error; the table or JSON to standard output.
      """)

  @Option(parsing: .unconditional, help: "Heap size in MiB (the workload fills 90% of it, about 60% of that garbage).")
  var heapMib = 256
  @Option(parsing: .unconditional, help: "Mutator threads reading and writing their objects during compaction (1-64).")
  var mutators = 2
  @Option(help: "Strategies to run: auto (MOVE or COPY chosen per cycle from their measured costs), move, copy, copy-1, both (move and copy), all (move, copy, copy-1 and auto, interleaved).")
  var mode = CompactMode.auto
  @Option(parsing: .unconditional, help: "Workload seed: the same seed builds the same heap.")
  var seed: UInt64 = 1
  @Option(help: "How mutator faults are served: in the faulting thread (sigbus) or by a fault-server thread.")
  var faultMode = FaultMode.sigbus
  @Option(parsing: .unconditional, help: "A mutator's fault compacts the unprocessed pages around it within an aligned block of this many pages (1-512), mapped with one ioctl.")
  var mutatorBlockPages = 16
  @Flag(help: "Mutators spin without touching the heap: the compaction thread's cost alone, no faults.")
  var idleMutators = false
  @Option(parsing: .unconditional, help: "The longest run of pages the GC thread maps with one ioctl (1-2048; ART maps up to about 8 MiB, 2048 pages).")
  var gcRunPages = 64
  @Option(help: "How faulting mutators map pages under MOVE: copy (no TLB flush), copy-early (COPY while the GC is in the upper half), move.")
  var mutatorMapping = MutatorMapping.copy
  @Option(parsing: .unconditional, help: "Under MOVE, the GC copies runs shorter than this many pages instead of moving them (1-2048; 1: always MOVE).")
  var minimumMoveRun = 16
  @Flag(help: "Register the heap before moving its pages out (ART's order; the pause then grows with the heap).")
  var registerBeforeRemap = false
  @Option(help: "Also draw the median runs as SVG into this file: pages mapped over time by the GC thread vs by mutators, and the mutator stall histogram.")
  var svg: String?
  @Flag(help: "Run ART's techniques on and off instead (a row per variant, each against batched COPY): each row sets the strategy, run lengths, mutator mapping and pause order (some rows the block size).")
  var variants = false
  @Option(parsing: .unconditional, help: "Automatic cycles run before the measured ones, left out of the medians (0-100; default: the selector's warm-up, \(StrategySelector.warmUpCycles) cycles, when auto runs beside other strategies, 0 when alone).")
  var autoWarmUp: Int?
  @Flag(help: "Back the heap with transparent huge pages (MADV_HUGEPAGE): from-space is then given back in 2 MiB pages, far cheaper for the GC thread.")
  var hugePages = false
  @Flag(help: "Time only the page-compaction routine on the heap (no ioctls, no faults, one thread), --runs passes, and print its rate: for profiling.")
  var pageRoutine = false
  @Option(parsing: .unconditional, help: "Cycles per strategy (1-100, strategies interleaved); the table shows medians.")
  var runs = 3
  @OptionGroup var output: OutputOptions

  func validate() throws {
    try check(heapMib, in: CompactJob.heapMibRange, "--heap-mib", why: "from one 2 MiB unit to half this machine's memory")
    try check(mutators, in: CompactJob.mutatorRange, "--mutators")
    try check(mutatorBlockPages, in: CompactJob.blockPagesRange, "--mutator-block-pages")
    try check(runs, in: CompactJob.runRange, "--runs")
    if let autoWarmUp { try check(autoWarmUp, in: CompactJob.autoWarmUpRange, "--auto-warm-up") }
    try check(gcRunPages, in: CompactJob.gcRunPagesRange, "--gc-run-pages")
    try check(minimumMoveRun, in: CompactJob.gcRunPagesRange, "--minimum-move-run")
    if variants && svg != nil {
      throw ValidationError("--svg draws one run per strategy; --variants has no picture: drop one of them")
    }
  }

  func run() throws {
    var job = CompactJob()
    job.heapMib = heapMib
    job.mutators = mutators
    job.mode = mode
    job.seed = seed
    job.faultMode = faultMode
    job.mutatorBlockPages = mutatorBlockPages
    job.idleMutators = idleMutators
    job.runs = runs
    job.gcRunPages = gcRunPages
    job.mutatorMapping = mutatorMapping
    job.registerBeforeRemap = registerBeforeRemap
    job.minimumMoveRun = minimumMoveRun
    job.autoWarmUp = autoWarmUp
    job.hugePages = hugePages
    if pageRoutine {
      let routine = try job.pageRoutine(repetitions: runs)
      let gbps = Double(routine.liveBytes) / Swift.max(1, Double(routine.nanoseconds))
      print("page routine: \(routine.liveBytes) live bytes in \(routine.nanoseconds / 1000) µs of CPU (best of \(runs)): \(gbps) GB/s")
      return
    }
    if variants {
      let report = try CompactVariantsJob(base: job).run(progress: Progress("compact"))
      print(output.json ? try JSONOutput.string(report) : report.table)
      return
    }
    let report = try job.run(progress: Progress("compact"))
    print(output.json ? try JSONOutput.string(report) : report.table)
    if let svg {
      try CompactPicture.write(report, to: svg)
    }
  }
}
