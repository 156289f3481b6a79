import Synchronization
import Userfaultfd

/// How compacted pages are mapped into the heap.
public enum MappingStrategy: String, Sendable, CaseIterable {
  /// Compact into recycled dead from-space pages and UFFDIO_MOVE contiguous runs of them in: no
  /// allocation, no memcpy in the kernel, no madvise, RSS never doubles. A buffer and COPY early
  /// on, when no dead page is free yet; COPY for a page MOVE refuses with EBUSY.
  case move
  /// Compact into a buffer, UFFDIO_COPY contiguous runs in with one ioctl each (as ART's collector
  /// maps COPY), release from-space with MADV_DONTNEED in 8 MiB steps.
  case copy
  /// ``copy`` with one page per UFFDIO_COPY: the unbatched variant, kept for comparison.
  case copySinglePage = "copy-1"
  /// ``move`` or ``copy``, chosen per cycle by what they cost on this host with these mutators
  /// (a ``StrategySelector``: a start-up calibration, then each cycle's GC time per page and
  /// mutator stall p99, with hysteresis). COPY, without trying MOVE, where MOVE is unusable.
  /// The choice and its reason are in ``CompactionResult/choice``.
  case automatic = "auto"
}

/// How a faulting mutator maps the pages it compacts under the ``MappingStrategy/move`` strategy
/// (the GC thread maps with MOVE either way).
public enum MutatorMapping: String, Sendable, CaseIterable {
  /// Compact into a buffer and UFFDIO_COPY, and COPY a page the GC compacted but has not mapped
  /// yet from its staging page: no TLB flush, so no inter-processor interrupt lands on the other
  /// threads (each MOVE interrupts every other CPU running the process).
  case copy
  /// As ``copy`` while the GC thread is in the upper half of the heap, then as ``move`` (ART lets
  /// mutators COPY early in the phase, when concurrent MOVEs contend on from-space).
  case copyEarly = "copy-early"
  /// Compact into recycled dead from-space pages and UFFDIO_MOVE them in; MOVE a page the GC
  /// compacted but has not mapped yet.
  case move
}

/// How mutator faults reach the page-compaction routine.
public enum FaultMode: String, Sendable, CaseIterable {
  /// `UFFD_FEATURE_SIGBUS`: the faulting mutator compacts the page in its own signal handler
  /// (ART's production design; the fastest path).
  case sigbus
  /// A `FaultServer` thread compacts the faulting page and wakes the mutator.
  case thread
}

/// One compaction cycle's settings.
public struct CompactionConfiguration: Sendable {
  /// How pages are mapped.
  public var strategy: MappingStrategy
  /// How mutator faults are served.
  public var faultMode: FaultMode
  /// Seed of the mutators' choices.
  public var seed: UInt64
  /// Distinct words each mutator may log (its write log is allocated before the cycle): 1 to
  /// ``maxLoggedWordsPerMutator``.
  public var loggedWordsPerMutator: Int
  /// The largest ``loggedWordsPerMutator`` (16 Mi words: 256 MiB of log per mutator).
  public static let maxLoggedWordsPerMutator = 1 << 24
  /// A mutator's fault compacts the unprocessed pages around the faulting one within an aligned
  /// block of this many pages (1 to 512), mapped with one ioctl.
  public var mutatorBlockPages: Int
  /// Mutator threads run but never touch the heap: the compaction thread's cost alone (with the
  /// other CPUs busy in the same process, so TLB flushes still interrupt them). No faults.
  public var idleMutators: Bool
  /// The longest run of contiguous pages the GC thread maps with one ioctl (1 to
  /// ``maxGCRunPages``): 64 pages (256 KiB) by default; ART maps up to about 8 MiB at a time
  /// (2048 pages). Longer runs mean fewer TLB flushes under MOVE, but pages wait longer compacted
  /// and unmapped. ``MappingStrategy/copySinglePage`` maps one page per ioctl whatever this says.
  public var gcRunPages: Int
  /// The longest ``gcRunPages`` (8 MiB of 4 KiB pages).
  public static let maxGCRunPages = 2048
  /// How faulting mutators map pages under the MOVE strategy.
  public var mutatorMapping: MutatorMapping
  /// Under MOVE, the GC thread copies (UFFDIO_COPY from the staging pages) a run shorter than
  /// this many pages instead of moving it (1 to ``maxGCRunPages``; 1: always MOVE). Each MOVE
  /// flushes the TLB of every other CPU running the process; where that interrupt is slow (a VM:
  /// ~20 µs per MOVE measured on a 2-vCPU one, against ~1.5 µs to copy a page) a short run is
  /// cheaper to copy. Runs are short when mutators fault pages out of the GC's way. 16 by default.
  public var minimumMoveRun: Int
  /// Register the heap with the userfaultfd before moving its pages out (ART's order) instead of
  /// after. Either way no mutator runs in between (the pause is stop-the-world); registered first,
  /// the mremap must move page-table entries one by one, so the pause grows with the heap.
  public var registerBeforeRemap: Bool

  /// Creates a configuration.
  public init(strategy: MappingStrategy = .move, faultMode: FaultMode = .sigbus, seed: UInt64 = 1,
              loggedWordsPerMutator: Int = 1 << 16, mutatorBlockPages: Int = 16,
              idleMutators: Bool = false, gcRunPages: Int = 64, mutatorMapping: MutatorMapping = .copy,
              registerBeforeRemap: Bool = false, minimumMoveRun: Int = 16) {
    self.strategy = strategy
    self.faultMode = faultMode
    self.seed = seed
    self.loggedWordsPerMutator = loggedWordsPerMutator
    self.mutatorBlockPages = mutatorBlockPages
    self.idleMutators = idleMutators
    self.gcRunPages = gcRunPages
    self.mutatorMapping = mutatorMapping
    self.registerBeforeRemap = registerBeforeRemap
    self.minimumMoveRun = minimumMoveRun
  }
}

/// Runs concurrent compaction cycles on a ``Heap`` (ART's concurrent mark-compact shape, see
/// the README): stop-the-world mark and address computation; a short pause that
/// rewrites the roots, moves all the heap's pages to a from-space with `mremap(MREMAP_DONTUNMAP)`
/// and registers the emptied heap; then a GC thread fills the heap page by page, top down, while
/// mutators run, and a mutator touching a page not yet there faults into the same page-compaction
/// routine. Every cycle is verified before ``run(progress:)`` returns.
public final class Compactor: @unchecked Sendable {
  // @unchecked: immutable after init; run() drives one cycle at a time on the calling thread
  // (the Heap's rules apply to the heap it changes).
  let heap: Heap
  let configuration: CompactionConfiguration
  /// Chooses each cycle's strategy under ``MappingStrategy/automatic`` (nil otherwise).
  let selector: StrategySelector?
  /// Why MOVE cannot be used here; nil when it can.
  let moveUnusableBecause: String?

  /// Prepares to compact `heap`, whose roots belong to its mutators (one thread each).
  /// Under ``MappingStrategy/automatic`` `selector` chooses each cycle's strategy (one made here
  /// when nil; pass the same one to every compactor of a heap so it learns across them).
  ///
  /// - Throws: ``HeapError/invalidConfiguration(_:)`` when the kernel lacks what the strategy or
  ///   fault mode needs (UFFDIO_MOVE, UFFD_FEATURE_SIGBUS) or the settings are out of range.
  public init(heap: Heap, configuration: CompactionConfiguration, selector: StrategySelector? = nil) throws(HeapError) {
    guard (1...CompactionConfiguration.maxLoggedWordsPerMutator).contains(configuration.loggedWordsPerMutator) else {
      throw .invalidConfiguration(
        "loggedWordsPerMutator must be 1 to \(CompactionConfiguration.maxLoggedWordsPerMutator),"
          + " got \(configuration.loggedWordsPerMutator)")
    }
    guard (1...512).contains(configuration.mutatorBlockPages) else {
      throw .invalidConfiguration("mutatorBlockPages must be between 1 and 512, got \(configuration.mutatorBlockPages)")
    }
    guard (1...CompactionConfiguration.maxGCRunPages).contains(configuration.minimumMoveRun) else {
      throw .invalidConfiguration(
        "minimumMoveRun must be between 1 and \(CompactionConfiguration.maxGCRunPages), got \(configuration.minimumMoveRun)")
    }
    guard (1...CompactionConfiguration.maxGCRunPages).contains(configuration.gcRunPages) else {
      throw .invalidConfiguration(
        "gcRunPages must be between 1 and \(CompactionConfiguration.maxGCRunPages), got \(configuration.gcRunPages)")
    }
    let offered: Features
    do {
      offered = try Userfaultfd.probeSupportedFeatures().features
    } catch {
      throw .system(error)
    }
    let verdict = PageMover.moveVerdict
    let moveUnusableBecause: String? = !verdict.isUsable ? "\(verdict)"
      : !offered.contains(.move) ? "the userfaultfd does not offer UFFD_FEATURE_MOVE (Linux 6.8)" : nil
    if configuration.strategy == .move, let why = moveUnusableBecause {
      throw .invalidConfiguration("the MOVE strategy needs UFFDIO_MOVE, which is not usable here (\(why)): use the COPY strategy")
    }
    if configuration.faultMode == .sigbus && !offered.contains(.sigbus) {
      throw .invalidConfiguration(
        "fault mode 'sigbus' needs UFFD_FEATURE_SIGBUS, which this kernel lacks: use fault mode 'thread'")
    }
    self.heap = heap
    self.configuration = configuration
    self.moveUnusableBecause = moveUnusableBecause
    self.selector = configuration.strategy == .automatic ? selector ?? StrategySelector() : nil
  }

  /// Runs one full cycle with the heap's mutators working throughout the concurrent phase, then
  /// verifies the result (throwing ``HeapError/verificationFailed(_:)`` if anything differs).
  /// `progress` hears each phase as it starts (on the calling thread, never inside a timed part).
  public func run(progress: (String) -> Void = { _ in }) throws(HeapError) -> CompactionResult {
    let usedBefore = heap.top
    try heap.validateRoots()
    progress("marking")
    let marked = mark()
    progress("reference compaction (for verification)")
    let expected = CycleVerification.Expected(heap: heap, map: marked.map, pageCount: marked.plan.layout.pageCount)
    // Under `automatic` the strategy is chosen once the mutators run; COPY until then.
    let cycle = try prepare(marked.plan, strategy: selector == nil ? configuration.strategy : .copy)
    progress("pause, then concurrent compaction with \(cycle.logs.count) mutators")
    let residentBefore = ProcessMemory.resident
    ProcessMemory.resetPeak()
    let pauseNanoseconds = try pause(cycle, roots: expected.roots)
    heap.top = marked.map.liveBytes
    var choice: StrategyChoice?
    let timing = try compactConcurrently(cycle) {
      guard let selector else { return configuration.strategy }
      let chosen = selector.choose(
        moveUnusableBecause: moveUnusableBecause, runningThreads: heap.roots.count, runPages: configuration.gcRunPages)
      choice = chosen
      return chosen.strategy
    }
    let strategy = choice?.strategy ?? configuration.strategy
    if let choice { progress("chose \(strategy.rawValue): \(choice.reason)") }
    let peak = ProcessMemory.peak
    progress("verifying")
    let writes = try verify(cycle, expected: expected)
    let counters = cycle.resources.context.counters
    let stall = Self.stall(cycle.resources.context.stalls)
    let pages = Swift.max(1, marked.plan.layout.pageCount)
    selector?.record(strategy, cost: StrategyCost(
      gcNanosecondsPerPage: Double(timing.cpu) / Double(pages),
      stallP99Nanoseconds: stall.count > 0 ? Double(stall.p99) : nil))
    return CompactionResult(
      strategy: strategy, choice: choice, faultMode: configuration.faultMode, liveBytes: marked.map.liveBytes,
      liveObjects: marked.map.liveObjects, usedBytesBefore: usedBefore, markNanoseconds: marked.nanoseconds,
      pauseNanoseconds: pauseNanoseconds, compactionWallNanoseconds: timing.wall,
      compactionCPUNanoseconds: timing.cpu, pagesByGC: counters.load(.pagesByGC),
      pagesByMutators: counters.load(.pagesByMutators), mutatorFaults: counters.load(.mutatorFaults),
      recycledPages: counters.load(.recycledPages), bufferPages: counters.load(.bufferPages),
      moveIoctls: counters.calls(.move), pagesMoved: counters.pages(.move),
      copyIoctls: counters.calls(.copy), pagesCopied: counters.pages(.copy),
      zeroPageIoctls: counters.calls(.zeroPage), busyFallbacks: counters.load(.busyFallbacks),
      errnoCounts: counters.errnoCounts(), mutatorWrites: writes, residentBefore: residentBefore,
      peakResident: peak, verified: true, mutatorStall: stall,
      releasedPages: counters.load(.releasedPages), intrudedPages: counters.load(.intrudedPages),
      movesAnsweredExisting: counters.load(.movesAnsweredExisting),
      mutatorWait: Self.stall(cycle.resources.context.waits),
      mutatorStallOverlappingGCMapping: Self.stall(cycle.resources.context.overlappingStalls), waitsOnProcessing: counters.load(.waitsOnProcessing),
      waitsOnMapping: counters.load(.waitsOnMapping),
      mutatorFaultCPU: Self.stall(cycle.resources.context.faultCPU),
      mutatorStallOnCPU: Self.stall(cycle.resources.context.stallsOnCPU),
      preemptedFaults: counters.load(.preemptedFaults),
      involuntarySwitchesInFaults: counters.load(.involuntarySwitchesInFaults),
      blockedFaults: counters.load(.blockedFaults),
      timeline: MappingTimeline(
        records: cycle.resources.context.mappedAt, count: marked.plan.layout.pageCount, bins: Self.timelineBins))
  }

  /// Time bins in ``CompactionResult/timeline``.
  static var timelineBins: Int { 60 }
  /// Powers of two of microseconds in ``MutatorStall/countsByPowerOfTwoMicroseconds`` (1 µs to 16 ms and over).
  static var stallBuckets: Int { 15 }

  private static func stall(_ histogram: StallHistogram) -> MutatorStall {
    var stall = MutatorStall()
    stall.p50 = Int64(histogram.nanoseconds(atPercentile: 50))
    stall.p99 = Int64(histogram.nanoseconds(atPercentile: 99))
    stall.p999 = Int64(histogram.nanoseconds(atPercentile: 99.9))
    stall.max = Int64(histogram.maxNanoseconds)
    stall.total = Int64(histogram.totalNanoseconds)
    stall.count = histogram.count
    stall.countsByPowerOfTwoMicroseconds = histogram.countsByPowerOfTwoMicroseconds(buckets: stallBuckets)
    return stall
  }

  /// Everything one cycle's concurrent phase uses, allocated and touched before the pause.
  private struct Cycle {
    let uffd: Userfaultfd
    let fromSpace: AnonymousMemory
    let resources: CompactionResources
    let logs: [WriteLog]
    let delivery: FaultDelivery
  }

  /// Phase 1, stop-the-world (the mutators have not started): mark the live objects and compute
  /// where each to-space page's content comes from.
  private func mark() -> (map: LiveMap, plan: CompactionPlan, nanoseconds: Int64) {
    let start = CycleClock.now()
    let map = LiveMap(marking: heap)
    let plan = CompactionPlan(heap: heap, map: map)
    return (map, plan, CycleClock.now() - start)
  }

  /// Phase 2: the userfaultfd, from-space, the shared page states and buffers, the mutators' write
  /// logs and the fault delivery, all before the pause so nothing allocates inside it.
  private func prepare(_ plan: CompactionPlan, strategy: MappingStrategy) throws(HeapError) -> Cycle {
    let uffd: Userfaultfd
    let fromSpace: AnonymousMemory
    let resources: CompactionResources
    do {
      uffd = configuration.faultMode == .sigbus
        ? try Userfaultfd(features: [.sigbus]) : try Userfaultfd(options: .nonBlocking)
      fromSpace = try AnonymousMemory(length: heap.capacity, alignment: PageSize.huge)
      resources = try CompactionResources(
        layout: plan.layout, fromSpace: fromSpace, uffd: uffd,
        strategy: strategy, mutatorMapping: configuration.mutatorMapping,
        buffers: heap.roots.count + 1,
        blockPages: configuration.mutatorBlockPages, gcRunPages: configuration.gcRunPages)
    } catch {
      throw .system(error)
    }
    let logs = heap.roots.map { _ in WriteLog(capacity: 2 * configuration.loggedWordsPerMutator) }
    let delivery = try FaultDelivery(mode: configuration.faultMode, uffd: uffd, resources: resources)
    return Cycle(
      uffd: uffd, fromSpace: fromSpace, resources: resources, logs: logs, delivery: delivery)
  }

  /// Phase 3, the pause: rewrite the roots, move every page to from-space in one mremap, register
  /// the emptied heap. Returns its length. On failure every page is put back and the roots restored.
  ///
  /// By default the mremap comes first: on a range registered without EVENT_REMAP the kernel moves
  /// page tables entry by entry (it must clear uffd bits), so the pause would grow with the heap;
  /// unregistered and 2 MiB-aligned, whole page tables move. That order is safe because nothing
  /// touches the heap in the pause (the mutators are stopped; here they have not started). Had
  /// something touched it (I/O into the heap), the page it got is found when that page is mapped
  /// (EEXIST where only the claimer maps) and overwritten in place: ``CompactionResult/intrudedPages``.
  /// ``CompactionConfiguration/registerBeforeRemap`` takes ART's order instead.
  private func pause(_ cycle: Cycle, roots: [[UInt]]) throws(HeapError) -> Int64 {
    let start = CycleClock.now()
    let originalRoots = heap.roots
    heap.roots = roots
    do throws(UserfaultfdError) {
      if configuration.registerBeforeRemap {
        try cycle.delivery.register(heap.memory.baseAddress, length: heap.capacity)
        do {
          try heap.memory.movePages(to: cycle.fromSpace)
        } catch {
          cycle.delivery.close()  // Nothing moved: the heap is as it was, unregistered.
          throw error
        }
      } else {
        try heap.memory.movePages(to: cycle.fromSpace)
        do {
          try cycle.delivery.register(heap.memory.baseAddress, length: heap.capacity)
        } catch {
          try? cycle.fromSpace.movePages(to: heap.memory)  // Put every page back: nothing lost.
          throw error
        }
      }
    } catch {
      heap.roots = originalRoots
      throw .system(error)
    }
    return CycleClock.now() - start
  }

  /// Phase 4: the mutators run while the GC thread compacts every page; returns the GC thread's
  /// wall and CPU time. Ends with every page mapped, the mutators joined and the heap unregistered.
  /// `strategy` is asked once every mutator runs, just before the GC starts (its time counts as
  /// the GC's: under `automatic` the first cycle calibrates there, with the mutators running).
  private func compactConcurrently(_ cycle: Cycle, strategy: () -> MappingStrategy) throws(HeapError) -> (wall: Int64, cpu: Int64) {
    let context = cycle.resources.context
    context.phaseStart[0].store(Int(CycleClock.now()), ordering: .relaxed)  // Before any mutator runs.
    let done = StopFlag()
    func compactor(_ strategy: MappingStrategy) -> CompactionThread {
      CompactionThread(
        context: context, fromSpace: cycle.fromSpace, buffer: context.gcBuffer, runPages: configuration.gcRunPages,
        copyRunPages: strategy == .copySinglePage ? 1 : configuration.gcRunPages,
        minimumMoveRun: configuration.minimumMoveRun)
    }
    var threads: [DedicatedThread] = []
    let idle = configuration.idleMutators
    let running = Atomic<Int>(0)
    for (mutator, log) in cycle.logs.enumerated() {
      let roots = heap.roots[mutator]
      let seed = configuration.seed &+ UInt64(mutator) &* SplitMix64.golden
      do {
        threads.append(try DedicatedThread { [heap] in
          running.add(1, ordering: .releasing)
          Mutator.run(heap: heap, roots: roots, seed: seed, log: log, idle: idle, until: done)
        })
      } catch {
        // The GC still has to fill the heap before anyone can be released.
        compactor(context.useMove ? .move : .copy).run()
        done.set()
        threads.forEach { $0.join() }
        cycle.delivery.close()
        throw .system(error)
      }
    }
    // Compaction starts with every mutator running, as it would in an application.
    BackOff.wait { running.load(ordering: .acquiring) < threads.count }
    let wallStart = CycleClock.now()
    let cpuStart = CycleClock.threadCPU()
    let chosen = strategy()
    context.setUseMove(chosen == .move)
    compactor(chosen).run()
    let cpu = CycleClock.threadCPU() - cpuStart
    let wall = CycleClock.now() - wallStart
    done.set()
    threads.forEach { $0.join() }
    cycle.delivery.close()  // Unregisters the heap: it is ordinary memory again.
    return (wall, cpu)
  }

  /// Phase 5: every page mapped, every object where the reference compaction put it, every
  /// mutator write present. Returns the writes verified.
  private func verify(_ cycle: Cycle, expected: CycleVerification.Expected) throws(HeapError) -> Int {
    let counters = cycle.resources.context.counters
    let failures = counters.load(.failures)
    guard failures == 0 else {
      let errnos = counters.errnoCounts().map { "\($0.key): \($0.value)" }.sorted().joined(separator: ", ")
      throw .compactionFailed("\(failures) pages could not be mapped (\(errnos))")
    }
    return try CycleVerification.verify(heap: heap, expected: expected, logs: cycle.logs)
  }
}
