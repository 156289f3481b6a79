import Glibc
import Synchronization
import Userfaultfd

/// Everything the page-compaction and page-mapping code shares between the GC thread and faulting
/// mutators, as raw pointers and integers: trivially copyable, no reference counting, no
/// allocation, so the same code runs in a SIGBUS handler. ``CompactionResources`` owns the memory.
struct CompactionContext: @unchecked Sendable {
  // @unchecked: raw pointers into CompactionResources, which outlives the cycle; every shared
  // word they reach is an Atomic or is handed over by a page state's acquire/release.
  let layout: PageLayout
  /// From-space: the heap's old pages, at the same offsets.
  let from: UnsafeMutablePointer<UInt64>
  /// One ``PageState`` word per to-space page.
  let states: PageStates
  /// The next from-space page to try recycling (counts down; below 0 there is none).
  let recycleCursor: UnsafeMutablePointer<Atomic<Int>>
  /// The to-space page the GC thread is at: every page above it is mapped, so from-space pages
  /// above `lastSource[gcIndex]` are read by nobody any more.
  let gcIndex: UnsafeMutablePointer<Atomic<Int>>
  /// Buffers of `blockPages` pages for mutators (compact, then UFFDIO_COPY), each with a busy flag.
  let buffers: UnsafeMutablePointer<UInt64>
  let bufferBusy: UnsafeMutablePointer<Atomic<Bool>>
  let bufferCount: Int
  /// A mutator's fault compacts the unprocessed pages around it within an aligned block of this
  /// many pages, mapped with one ioctl: fewer faults (structures are allocated together) and
  /// fewer, longer runs for the GC's MOVEs.
  let blockPages: Int
  let counters: CycleCounters
  /// Every mutator fault's service time (SIGBUS handler entry to return; in thread mode, the
  /// fault server's resolution).
  let stalls: StallHistogram
  /// Per to-space page, when it was mapped and by whom (see ``recordMapped(_:byMutator:)``); 0 until
  /// then. Each page's word is written once, by the page's claimer, and read after the cycle.
  let mappedAt: UnsafeMutablePointer<UInt32>
  /// Per fault that waited for a page someone else was compacting or mapping
  /// (``PageState/Kind/processing`` or ``PageState/Kind/mapping``): how long it waited.
  let waits: StallHistogram
  /// Per fault whose service overlapped a map ioctl of the GC thread (see ``gcMapSequence``): its
  /// whole stall. Tells the stalls a GC MOVE (its TLB-flush interrupt, its page-table locks)
  /// lands in from the rest.
  let overlappingStalls: StallHistogram
  /// Per fault, the faulting thread's CPU time over it (``ThreadSchedule``): what the fault cost when it ran, without the time it spent off the CPU.
  let faultCPU: StallHistogram
  /// The stalls of the faults during which the thread was neither preempted nor gave up the CPU:
  /// the stall distribution as it would be on an idle machine.
  let stallsOnCPU: StallHistogram
  /// Odd while the GC thread is in a map ioctl: incremented before and after each.
  let gcMapSequence: UnsafeMutablePointer<Atomic<Int>>
  /// The GC thread's copy buffer (``PageState/Kind/buffered`` pages' slots).
  let gcBuffer: UnsafeMutablePointer<UInt64>
  /// The concurrent phase's start (CycleClock nanoseconds), for ``mappedAt``.
  let phaseStart: UnsafeMutablePointer<Atomic<Int>>
  /// The userfaultfd's descriptor (the handle outlives the cycle's resources).
  let uffd: Int32
  /// Nonzero under the MOVE strategy: compact into recycled pages and move them; otherwise
  /// buffer and COPY. A word, not a constant, because ``MappingStrategy/automatic`` decides once
  /// the mutators run (its calibration needs them running), before the GC thread starts; every
  /// use of it is correct with either value (a mutator's choice only picks how its pages map).
  let strategyWord: UnsafeMutablePointer<Atomic<Int>>
  /// Under MOVE, faulting mutators MOVE too once the GC thread's page is below this index, and
  /// COPY before (``MutatorMapping``: -1 never, `Int.max` always).
  let mutatorsMoveBelow: Int

  /// Whether the cycle uses the MOVE strategy.
  @inline(__always)
  var useMove: Bool { strategyWord[0].load(ordering: .relaxed) != 0 }

  /// Sets the strategy (before the GC thread starts).
  func setUseMove(_ move: Bool) { strategyWord[0].store(move ? 1 : 0, ordering: .releasing) }

  /// Whether a faulting mutator maps with MOVE now.
  @inline(__always)
  var mutatorsMove: Bool { useMove && gcIndex[0].load(ordering: .relaxed) < mutatorsMoveBelow }

  @inline(__always)
  func fromPage(_ page: Int) -> UnsafeMutablePointer<UInt64> { from + page &* layout.wordsPerPage }

  @inline(__always)
  func toSpaceAddress(_ index: Int) -> UInt { layout.start &+ UInt(index &* layout.pageSize) }

  /// The GC thread's ``mapPages(at:count:from:move:)``, marked in ``gcMapSequence``.
  @inline(__always)
  func gcMapPages(at index: Int, count: Int, from source: UnsafeMutablePointer<UInt64>, move: Bool) {
    gcMapSequence[0].add(1, ordering: .releasing)
    mapPages(at: index, count: count, from: source, move: move)
    gcMapSequence[0].add(1, ordering: .releasing)
  }

  /// Slot `slot` of the GC thread's copy buffer.
  @inline(__always)
  func gcBufferSlot(_ slot: Int) -> UnsafeMutablePointer<UInt64> { gcBuffer + slot &* layout.wordsPerPage }

  /// Reserves up to `count` contiguous dead from-space pages to compact into, with one
  /// compare-exchange: returns the lowest and how many (0 when none is free yet). A page is dead
  /// when it lies above everything the unfinished to-space pages still read.
  @inline(__always)
  func reserveRecycledPages(upTo count: Int) -> (low: Int, count: Int) {
    let reserved = takeDeadPages { Swift.min(count, $0) }
    if reserved.count > 0 { counters.add(.recycledPages, reserved.count) }
    return reserved
  }

  /// Takes the dead from-space pages beyond `spare` still free to recycle, when there are at
  /// least `minimum` of them, from the top (the same cursor ``reserveRecycledPages(upTo:)`` takes
  /// from, so nobody recycles a page once it is taken): returns the lowest and how many (0: none).
  /// Under MOVE with mutators copying, more pages die than the GC recycles; these are released.
  @inline(__always)
  func takeSpareRecycledPages(keeping spare: Int, minimum: Int) -> (low: Int, count: Int) {
    takeDeadPages { free in free &- spare >= minimum ? free &- spare : 0 }
  }

  /// Takes `amount(free)` of the `free` dead pages from the top of the recycle cursor with one
  /// compare-exchange (retried if someone else took some first): the lowest taken and how many.
  @inline(__always)
  private func takeDeadPages(_ amount: (_ free: Int) -> Int) -> (low: Int, count: Int) {
    while true {
      let top = recycleCursor[0].load(ordering: .relaxed)
      let limit = layout.lastSource[gcIndex[0].load(ordering: .acquiring)]
      guard top > limit else { return (0, 0) }
      let taken = amount(top &- limit)
      guard taken > 0 else { return (0, 0) }
      if recycleCursor[0].compareExchange(expected: top, desired: top &- taken, ordering: .acquiringAndReleasing).exchanged {
        return (top &- taken &+ 1, taken)
      }
    }
  }

  /// Claims a mutator buffer (spins while all are busy, which needs more faulting threads than
  /// buffers).
  @inline(__always)
  func claimBuffer() -> Int {
    var backOff = BackOff()
    while true {
      for slot in 0..<bufferCount where !bufferBusy[slot].load(ordering: .relaxed) {
        if bufferBusy[slot].compareExchange(expected: false, desired: true, ordering: .acquiring).exchanged {
          return slot
        }
      }
      backOff.pause()
    }
  }

  @inline(__always)
  func buffer(_ slot: Int) -> UnsafeMutablePointer<UInt64> { buffers + slot &* blockPages &* layout.wordsPerPage }

  @inline(__always)
  func releaseBuffer(_ slot: Int) { bufferBusy[slot].store(false, ordering: .releasing) }

  /// Notes that pages `range` were just mapped, by a mutator's fault or by the GC thread: the
  /// microsecond since the phase started, shifted left once, plus one; the low bit says
  /// "mutator". One clock read per call (a run or a fault). Async-signal-safe.
  @inline(__always)
  func recordMapped(_ range: Range<Int>, byMutator: Bool) {
    let elapsed = Swift.max(0, Int(CycleClock.now()) &- phaseStart[0].load(ordering: .relaxed)) / 1000
    let word = UInt32(truncatingIfNeeded: Swift.min(elapsed, Int(UInt32.max >> 2)) &+ 1) &<< 1 | (byMutator ? 1 : 0)
    for index in range { mappedAt[index] = word }
  }

  // MARK: Claim, compact, publish

  /// Claims to-space page `index` (``PageState/Kind/unprocessed`` to `claim`), runs `compact`,
  /// and publishes the state it returns: the one way a page gets compacted, by the GC thread and
  /// by a faulting mutator alike (ART's `DoPageCompactionWithStateChange`). False, with nothing
  /// done, when someone else claimed the page first.
  @inline(__always)
  func compactWithStateChange(_ index: Int, claim: PageState, _ compact: () -> PageState) -> Bool {
    guard states.claim(index, from: .unprocessed, to: claim) else { return false }
    states.publish(compact(), at: index)
    return true
  }

  // MARK: The mutator side

  /// Makes the to-space page holding `address` present: compacts it here if nobody has started,
  /// maps it if the GC compacted it and has not mapped it yet, waits while someone else is at it.
  /// Async-signal-safe: called from SIGBUS handlers and from the fault-server thread.
  func resolveFault(at address: UInt) {
    // Read outside the timed window, so the stall does not include these two system calls.
    let scheduleBefore = ThreadSchedule.now()
    let start = CycleClock.now()
    var waitingSince: Int64 = 0  // When it began waiting on someone else's page; 0: never.
    let sequence = gcMapSequence[0].load(ordering: .acquiring)
    defer {
      let end = CycleClock.now()
      let scheduleAfter = ThreadSchedule.now()
      stalls.record(nanoseconds: Int(end - start))
      faultCPU.record(nanoseconds: scheduleAfter.cpuNanoseconds &- scheduleBefore.cpuNanoseconds)
      let preempted = scheduleAfter.involuntarySwitches &- scheduleBefore.involuntarySwitches
      let blocked = scheduleAfter.voluntarySwitches &- scheduleBefore.voluntarySwitches
      if preempted > 0 {
        counters.add(.preemptedFaults)
        counters.add(.involuntarySwitchesInFaults, preempted)
      }
      if blocked > 0 { counters.add(.blockedFaults) }
      if preempted == 0 && blocked == 0 { stallsOnCPU.record(nanoseconds: Int(end - start)) }
      if waitingSince != 0 { waits.record(nanoseconds: Int(end - waitingSince)) }
      // A GC map ioctl was running when the fault began, or began or ended during it.
      if sequence & 1 == 1 || gcMapSequence[0].load(ordering: .acquiring) != sequence {
        overlappingStalls.record(nanoseconds: Int(end - start))
      }
    }
    counters.add(.mutatorFaults)
    let index = Int(bitPattern: (address &- layout.start)) / layout.pageSize
    guard index >= 0, index < layout.pageCount else {
      // Past the compacted data: nothing lives there; give the thread a zero page.
      zeroPage(at: address & ~UInt(layout.pageSize &- 1))
      return
    }
    var backOff = BackOff()
    while true {
      let state = states.load(index)
      switch state.kind {
      case .unprocessed:
        let compacted = compactWithStateChange(index, claim: .mutatorProcessing) {
          // Take the unprocessed pages next to it in its block too.
          let blockStart = index &- index % blockPages
          let blockEnd = Swift.min(blockStart &+ blockPages, layout.pageCount)
          var low = index, high = index &+ 1
          while high < blockEnd && states.claim(high, from: .unprocessed, to: .mutatorProcessing) { high &+= 1 }
          while low > blockStart && states.claim(low &- 1, from: .unprocessed, to: .mutatorProcessing) { low &-= 1 }
          compactForMutator(low, count: high &- low)
          recordMapped(low..<high, byMutator: true)
          for page in low..<high where page != index { states.publish(.mapped, at: page) }
          counters.add(.pagesByMutators, high &- low)
          return .mapped
        }
        if compacted { return }
      case .processed:
        guard states.claim(index, from: state, to: .mapping) else { continue }
        // COPY leaves the staging page behind (dead, released with from-space): no TLB flush.
        mapPages(at: index, count: 1, from: fromPage(state.staging), move: mutatorsMove)
        recordMapped(index..<(index &+ 1), byMutator: true)
        states.publish(.mapped, at: index)
        return
      case .buffered:
        // In the GC's copy buffer, waiting for the rest of its run: copy this page now rather
        // than wait for the GC to compact the run and copy it in (the GC skips it, and reuses
        // the slot only once it is mapped).
        guard states.claim(index, from: state, to: .mapping) else { continue }
        mapPages(at: index, count: 1, from: gcBufferSlot(state.staging), move: false)
        recordMapped(index..<(index &+ 1), byMutator: true)
        states.publish(.mapped, at: index)
        return
      case .mapped:
        return
      case .processing, .mapping:
        // The GC compacting one page, or someone mapping it with one ioctl.
        if waitingSince == 0 {
          waitingSince = CycleClock.now()
          counters.add(state.kind == .processing ? .waitsOnProcessing : .waitsOnMapping)
        }
        backOff.pause()
      case .mutatorProcessing:
        backOff.pause()  // Another mutator compacting it: a few microseconds.
      }
    }
  }

  /// A mutator's compaction of pages `low ..< low + count`: when mutators MOVE, into recycled
  /// pages and one MOVE as far as dead pages are free; the rest into a buffer and one COPY.
  private func compactForMutator(_ low: Int, count: Int) {
    var done = 0
    if mutatorsMove {
      let recycled = reserveRecycledPages(upTo: count)
      for offset in 0..<recycled.count {
        layout.compactPage(low &+ offset, fromSpace: from, into: fromPage(recycled.low &+ offset))
      }
      if recycled.count > 0 { mapPages(at: low, count: recycled.count, from: fromPage(recycled.low), move: true) }
      done = recycled.count
    }
    guard done < count else { return }
    let slot = claimBuffer()
    let pages = buffer(slot)
    for offset in done..<count {
      layout.compactPage(low &+ offset, fromSpace: from, into: pages + (offset &- done) &* layout.wordsPerPage)
    }
    mapPages(at: low &+ done, count: count &- done, from: pages, move: false)
    releaseBuffer(slot)
  }
}

/// Owns the raw memory a ``CompactionContext`` points into, for one cycle.
final class CompactionResources: @unchecked Sendable {
  // @unchecked: allocates and frees the raw memory; everything shared is reached through
  // `context` (see its rules); the pointers themselves never change.
  let context: CompactionContext
  private let states: UnsafeMutablePointer<Atomic<UInt64>>
  private let pageCount: Int
  private let atomics: UnsafeMutablePointer<Atomic<Int>>
  private let atomicCount: Int
  private let busy: UnsafeMutablePointer<Atomic<Bool>>
  private let bufferCount: Int
  private let mappedAt: UnsafeMutablePointer<UInt32>
  /// Page-aligned (UFFDIO_COPY wants an aligned source) and populated before the cycle.
  private let bufferMemory: AnonymousMemory
  /// The GC thread's copy buffer (``CompactionContext/gcBuffer``), the same way.
  let gcBufferMemory: AnonymousMemory

  init(layout: PageLayout, fromSpace: AnonymousMemory, uffd: Userfaultfd, strategy: MappingStrategy,
       mutatorMapping: MutatorMapping, buffers: Int, blockPages: Int, gcRunPages: Int = 1) throws(UserfaultfdError) {
    pageCount = Swift.max(layout.pageCount, 1)
    bufferCount = Swift.max(buffers, 1)
    bufferMemory = try AnonymousMemory(length: bufferCount * blockPages * layout.pageSize, populate: true)
    gcBufferMemory = try AnonymousMemory(length: Swift.max(gcRunPages, 1) * layout.pageSize, populate: true)
    states = .allocate(capacity: pageCount)
    for index in 0..<pageCount { (states + index).initialize(to: Atomic(PageState.unprocessed.rawValue)) }
    mappedAt = .allocate(capacity: pageCount)
    mappedAt.initialize(repeating: 0, count: pageCount)
    atomicCount = 5 + CycleCounters.slotCount + 5 * StallHistogram.slotCount
    atomics = .allocate(capacity: atomicCount)
    for index in 0..<atomicCount { (atomics + index).initialize(to: Atomic(0)) }
    atomics[0].store(layout.fromPages - 1, ordering: .relaxed)  // The recycle cursor.
    atomics[1].store(Swift.max(layout.pageCount - 1, 0), ordering: .relaxed)  // The GC's page.
    busy = .allocate(capacity: bufferCount)
    for index in 0..<bufferCount { (busy + index).initialize(to: Atomic(false)) }
    context = CompactionContext(
      layout: layout, from: fromSpace.baseAddress.assumingMemoryBound(to: UInt64.self),
      states: PageStates(words: states), recycleCursor: atomics, gcIndex: atomics + 1,
      buffers: bufferMemory.baseAddress.assumingMemoryBound(to: UInt64.self), bufferBusy: busy,
      bufferCount: bufferCount, blockPages: blockPages, counters: CycleCounters(slots: atomics + 2),
      stalls: StallHistogram(slots: atomics + 2 + CycleCounters.slotCount), mappedAt: mappedAt,
      waits: StallHistogram(slots: atomics + 3 + CycleCounters.slotCount + StallHistogram.slotCount),
      overlappingStalls: StallHistogram(slots: atomics + 4 + CycleCounters.slotCount + 2 * StallHistogram.slotCount),
      faultCPU: StallHistogram(slots: atomics + 5 + CycleCounters.slotCount + 3 * StallHistogram.slotCount),
      stallsOnCPU: StallHistogram(slots: atomics + 5 + CycleCounters.slotCount + 4 * StallHistogram.slotCount),
      gcMapSequence: atomics + 4 + CycleCounters.slotCount + 3 * StallHistogram.slotCount,
      gcBuffer: gcBufferMemory.baseAddress.assumingMemoryBound(to: UInt64.self),
      phaseStart: atomics + 2 + CycleCounters.slotCount + StallHistogram.slotCount, uffd: uffd.coreDescriptor,
      strategyWord: atomics + 3 + CycleCounters.slotCount + 2 * StallHistogram.slotCount, mutatorsMoveBelow: Self.mutatorsMoveBelow(mutatorMapping, pageCount: layout.pageCount))
    context.setUseMove(strategy == .move)
  }

  private static func mutatorsMoveBelow(_ mapping: MutatorMapping, pageCount: Int) -> Int {
    switch mapping {
    case .copy: -1
    case .copyEarly: pageCount / 2  // The GC goes top down: the second half of its pages.
    case .move: Int.max
    }
  }

  deinit {
    states.deinitialize(count: pageCount)
    states.deallocate()
    atomics.deinitialize(count: atomicCount)
    atomics.deallocate()
    busy.deinitialize(count: bufferCount)
    busy.deallocate()
    mappedAt.deallocate()
  }
}
