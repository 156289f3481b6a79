#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import Synchronization
import Userfaultfd

/// How compacted pages are mapped into the heap.
public enum MappingStrategy: String, Sendable, CaseIterable {
  /// Compact into recycled dead from-space pages and UFFDIO_MOVE contiguous runs of them in: no
  /// allocation, no memcpy in the kernel, no madvise, RSS never doubles. A buffer and COPY early
  /// on, when no dead page is free yet; COPY for a page MOVE refuses with EBUSY.
  case move
  /// Compact into a buffer, UFFDIO_COPY it in, release from-space with MADV_DONTNEED in 8 MiB steps.
  case copy
}

/// How mutator faults reach the page-compaction routine.
public enum FaultMode: String, Sendable, CaseIterable {
  /// `UFFD_FEATURE_SIGBUS`: the faulting mutator compacts the page in its own signal handler
  /// (ART's production design; the fastest path).
  case sigbus
  /// A ``FaultServer`` thread compacts the faulting page and wakes the mutator.
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

  /// Creates a configuration.
  public init(strategy: MappingStrategy = .move, faultMode: FaultMode = .sigbus, seed: UInt64 = 1,
              loggedWordsPerMutator: Int = 1 << 16, mutatorBlockPages: Int = 16,
              idleMutators: Bool = false) {
    self.strategy = strategy
    self.faultMode = faultMode
    self.seed = seed
    self.loggedWordsPerMutator = loggedWordsPerMutator
    self.mutatorBlockPages = mutatorBlockPages
    self.idleMutators = idleMutators
  }
}

/// Runs concurrent compaction cycles on a ``Heap`` (ART's concurrent mark-compact shape, see
/// the README): stop-the-world mark and address computation; a short pause that
/// rewrites the roots, moves all the heap's pages to a from-space with `mremap(MREMAP_DONTUNMAP)`
/// and registers the emptied heap; then a GC thread fills the heap page by page, top down, while
/// mutators run, and a mutator touching a page not yet there faults into the same page-compaction
/// routine. Every cycle is verified before ``run()`` returns.
public final class Compactor: @unchecked Sendable {
  let heap: Heap
  let configuration: CompactionConfiguration

  /// Prepares to compact `heap`, whose roots belong to its mutators (one thread each).
  ///
  /// - Throws: ``HeapError/invalidConfiguration(_:)`` when the kernel lacks what the strategy or
  ///   fault mode needs (UFFDIO_MOVE, UFFD_FEATURE_SIGBUS) or the settings are out of range.
  public init(heap: Heap, configuration: CompactionConfiguration) throws(HeapError) {
    guard (1...CompactionConfiguration.maxLoggedWordsPerMutator).contains(configuration.loggedWordsPerMutator) else {
      throw .invalidConfiguration(
        "loggedWordsPerMutator must be 1 to \(CompactionConfiguration.maxLoggedWordsPerMutator),"
          + " got \(configuration.loggedWordsPerMutator)")
    }
    guard (1...512).contains(configuration.mutatorBlockPages) else {
      throw .invalidConfiguration("mutatorBlockPages must be between 1 and 512, got \(configuration.mutatorBlockPages)")
    }
    let offered: Features
    do {
      offered = try Userfaultfd.probeSupportedFeatures().features
    } catch {
      throw .system(error)
    }
    if configuration.strategy == .move && !(offered.contains(.move) && PageMover.moveVerdict.isUsable) {
      throw .invalidConfiguration(
        "the MOVE strategy needs UFFDIO_MOVE, which is not usable here (\(PageMover.moveVerdict)): use the COPY strategy")
    }
    if configuration.faultMode == .sigbus && !offered.contains(.sigbus) {
      throw .invalidConfiguration(
        "fault mode 'sigbus' needs UFFD_FEATURE_SIGBUS, which this kernel lacks: use fault mode 'thread'")
    }
    self.heap = heap
    self.configuration = configuration
  }

  /// Runs one full cycle with the heap's mutators working throughout the concurrent phase, then
  /// verifies the result (throwing ``HeapError/verificationFailed(_:)`` if anything differs).
  /// `progress` hears each phase as it starts (on the calling thread, never inside a timed part).
  public func run(progress: (String) -> Void = { _ in }) throws(HeapError) -> CompactionResult {
    let page = PageSize.base
    let usedBefore = heap.top
    try heap.validateRoots()
    // 1. Mark and plan (stop-the-world; the mutators have not started).
    progress("marking")
    let markStart = CycleClock.now()
    let map = LiveMap(marking: heap)
    let plan = CompactionPlan(heap: heap, map: map)
    let markNanoseconds = CycleClock.now() - markStart
    progress("reference compaction (for verification)")
    let expected = CycleVerification.Expected(heap: heap, map: map, pageCount: plan.layout.pageCount)

    // 2. Everything the concurrent phase needs, allocated and touched before the pause.
    let uffd: Userfaultfd
    let fromSpace: AnonymousMemory
    let resources: CompactionResources
    let gcBuffer: AnonymousMemory
    do {
      uffd = configuration.faultMode == .sigbus
        ? try Userfaultfd(features: [.sigbus]) : try Userfaultfd(options: .nonBlocking)
      fromSpace = try AnonymousMemory(length: heap.capacity, alignment: PageSize.huge)
      resources = try CompactionResources(
        layout: plan.layout, fromSpace: fromSpace, uffd: uffd.fileDescriptor.rawValue,
        strategy: configuration.strategy, buffers: heap.roots.count + 1,
        blockPages: configuration.mutatorBlockPages)
      gcBuffer = try AnonymousMemory(length: page, populate: true)
    } catch {
      throw .system(error)
    }
    let context = resources.context
    let logs = heap.roots.map { _ in WriteLog(capacity: 2 * configuration.loggedWordsPerMutator) }
    let delivery = try FaultDelivery(mode: configuration.faultMode, uffd: uffd, resources: resources)
    progress("pause, then concurrent compaction with \(logs.count) mutators")
    let residentBefore = ProcessMemory.resident
    ProcessMemory.resetPeak()

    // 3. The pause: roots, move every page to from-space in one mremap, register. The mremap
    //    comes first: on a range registered without EVENT_REMAP the kernel moves page tables entry
    //    by entry (it must clear uffd bits), so the pause would grow with the heap; unregistered and
    //    2 MiB-aligned, whole page tables move. No mutator runs in between, so none can touch the
    //    emptied heap before it is registered.
    let pauseStart = CycleClock.now()
    let originalRoots = heap.roots
    heap.roots = expected.roots
    do throws(UserfaultfdError) {
      try heap.memory.movePages(to: fromSpace)
      do {
        try delivery.register(heap.memory.baseAddress, length: heap.capacity)
      } catch {
        try? fromSpace.movePages(to: heap.memory)  // Put every page back: nothing lost.
        throw error
      }
    } catch {
      heap.roots = originalRoots
      throw .system(error)
    }
    let pauseNanoseconds = CycleClock.now() - pauseStart
    heap.top = map.liveBytes

    // 4. Mutators work while the GC thread compacts.
    let done = StopFlag()
    let gc = CompactionThread(
      context: context, fromSpace: fromSpace, buffer: gcBuffer.baseAddress.assumingMemoryBound(to: UInt64.self))
    var threads: [DedicatedThread] = []
    let idle = configuration.idleMutators
    let running = Atomic<Int>(0)
    for (mutator, log) in logs.enumerated() {
      let roots = heap.roots[mutator]
      let seed = configuration.seed &+ UInt64(mutator) &* 0x9E37_79B9
      do {
        threads.append(try DedicatedThread { [heap] in
          running.add(1, ordering: .releasing)
          Mutator.run(heap: heap, roots: roots, seed: seed, log: log, idle: idle, until: done)
        })
      } catch {
        // The GC still has to fill the heap before anyone can be released.
        gc.run()
        done.set()
        threads.forEach { $0.join() }
        delivery.close()
        throw .system(error)
      }
    }
    // Compaction starts with every mutator running, as it would in an application.
    while running.load(ordering: .acquiring) < threads.count { sched_yield() }
    let wallStart = CycleClock.now()
    let cpuStart = CycleClock.threadCPU()
    gc.run()
    let compactionCPU = CycleClock.threadCPU() - cpuStart
    let compactionWall = CycleClock.now() - wallStart
    done.set()
    threads.forEach { $0.join() }
    delivery.close()  // Unregisters the heap: it is ordinary memory again.
    let peak = ProcessMemory.peak

    // 5. Verify.
    progress("verifying")
    let counters = context.counters
    let failures = counters.load(.failures)
    guard failures == 0 else {
      throw .compactionFailed(
        "\(failures) pages could not be mapped (\(counters.errnoCounts().map { "\($0.key): \($0.value)" }.sorted().joined(separator: ", ")))")
    }
    let writes = try CycleVerification.verify(heap: heap, expected: expected, logs: logs)
    return CompactionResult(
      strategy: configuration.strategy, faultMode: configuration.faultMode, liveBytes: map.liveBytes,
      liveObjects: map.liveObjects, usedBytesBefore: usedBefore, markNanoseconds: markNanoseconds,
      pauseNanoseconds: pauseNanoseconds, compactionWallNanoseconds: compactionWall,
      compactionCPUNanoseconds: compactionCPU, pagesByGC: counters.load(.pagesByGC),
      pagesByMutators: counters.load(.pagesByMutators), mutatorFaults: counters.load(.mutatorFaults),
      recycledPages: counters.load(.recycledPages), bufferPages: counters.load(.bufferPages),
      moveIoctls: counters.calls(.move), pagesMoved: counters.pages(.move),
      copyIoctls: counters.calls(.copy), pagesCopied: counters.pages(.copy),
      zeroPageIoctls: counters.calls(.zeroPage), busyFallbacks: counters.load(.busyFallbacks),
      errnoCounts: counters.errnoCounts(), mutatorWrites: writes, residentBefore: residentBefore,
      peakResident: peak, verified: true)
  }
}
