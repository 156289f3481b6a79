#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import Synchronization
import Userfaultfd

/// Everything the page-compaction and page-mapping code shares between the GC thread and faulting
/// mutators, as raw pointers and integers: trivially copyable, no reference counting, no
/// allocation, so the same code runs in a SIGBUS handler. ``CompactionResources`` owns the memory.
struct CompactionContext: @unchecked Sendable {
  let layout: PageLayout
  /// From-space: the heap's old pages, at the same offsets.
  let from: UnsafeMutablePointer<UInt64>
  /// One ``PageState`` word per to-space page.
  let states: UnsafeMutablePointer<Atomic<UInt64>>
  /// The next from-space page to try recycling (counts down; below 0 there is none).
  let recycleCursor: UnsafeMutablePointer<Atomic<Int>>
  /// The to-space page the GC thread is at: every page above it is mapped, so from-space pages
  /// above `lastSource[gcIndex]` are read by nobody any more.
  let gcIndex: UnsafeMutablePointer<Atomic<Int>>
  /// Page-sized buffers for mutators (compact, then UFFDIO_COPY), each with a busy flag.
  let buffers: UnsafeMutablePointer<UInt64>
  let bufferBusy: UnsafeMutablePointer<Atomic<Bool>>
  let bufferCount: Int
  let counters: CycleCounters
  /// The userfaultfd's descriptor.
  let uffd: Int32
  /// MOVE strategy: compact into recycled pages and move them; otherwise buffer and COPY.
  let useMove: Bool

  @inline(__always)
  func fromPage(_ page: Int) -> UnsafeMutablePointer<UInt64> { from + page &* layout.wordsPerPage }

  @inline(__always)
  func toSpaceAddress(_ index: Int) -> UInt { layout.start &+ UInt(index &* layout.pageSize) }

  /// Takes a dead from-space page to compact into, or returns -1 when none is free yet. A page is
  /// dead when it lies above everything the unfinished to-space pages still read.
  @inline(__always)
  func takeRecycledPage() -> Int {
    while true {
      let candidate = recycleCursor[0].load(ordering: .relaxed)
      guard candidate >= 0 else { return -1 }
      let index = gcIndex[0].load(ordering: .acquiring)
      guard candidate > layout.lastSource[index] else { return -1 }
      if recycleCursor[0].compareExchange(expected: candidate, desired: candidate &- 1, ordering: .acquiringAndReleasing).exchanged {
        counters.add(.recycledPages)
        return candidate
      }
    }
  }

  /// Claims a mutator buffer (spins while all are busy, which needs more faulting threads than
  /// buffers).
  @inline(__always)
  func claimBuffer() -> Int {
    while true {
      for slot in 0..<bufferCount where !bufferBusy[slot].load(ordering: .relaxed) {
        if bufferBusy[slot].compareExchange(expected: false, desired: true, ordering: .acquiring).exchanged {
          return slot
        }
      }
      sched_yield()
    }
  }

  @inline(__always)
  func buffer(_ slot: Int) -> UnsafeMutablePointer<UInt64> { buffers + slot &* layout.wordsPerPage }

  @inline(__always)
  func releaseBuffer(_ slot: Int) { bufferBusy[slot].store(false, ordering: .releasing) }

  // MARK: The mutator side

  /// Makes the to-space page holding `address` present: compacts it here if nobody has started,
  /// maps it if the GC compacted it and has not mapped it yet, waits while someone else is at it.
  /// Async-signal-safe: called from SIGBUS handlers and from the fault-server thread.
  func resolveFault(at address: UInt) {
    counters.add(.mutatorFaults)
    let index = Int(bitPattern: (address &- layout.start)) / layout.pageSize
    guard index >= 0, index < layout.pageCount else {
      // Past the compacted data: nothing lives there; give the thread a zero page.
      zeroPage(at: address & ~UInt(layout.pageSize &- 1))
      return
    }
    while true {
      let state = states[index].load(ordering: .acquiring)
      switch PageState.kind(state) {
      case PageState.unprocessed:
        guard states[index].compareExchange(
          expected: state, desired: PageState.mutatorProcessing, ordering: .acquiring).exchanged
        else { continue }
        compactForMutator(index)
        states[index].store(PageState.mapped, ordering: .releasing)
        counters.add(.pagesByMutators)
        return
      case PageState.processed:
        guard states[index].compareExchange(
          expected: state, desired: PageState.mapping, ordering: .acquiring).exchanged
        else { continue }
        mapPages(at: index, count: 1, from: fromPage(PageState.staging(state)), move: true)
        states[index].store(PageState.mapped, ordering: .releasing)
        return
      case PageState.mapped:
        return
      default:
        sched_yield()  // Someone is compacting or mapping it: a few microseconds.
      }
    }
  }

  /// A mutator's compaction of page `index`: into a recycled page and MOVE when one is free,
  /// else into a buffer and COPY.
  private func compactForMutator(_ index: Int) {
    if useMove {
      let recycled = takeRecycledPage()
      if recycled >= 0 {
        layout.compactPage(index, fromSpace: from, into: fromPage(recycled))
        mapPages(at: index, count: 1, from: fromPage(recycled), move: true)
        return
      }
    }
    let slot = claimBuffer()
    layout.compactPage(index, fromSpace: from, into: buffer(slot))
    mapPages(at: index, count: 1, from: buffer(slot), move: false)
    releaseBuffer(slot)
  }
}

/// Owns the raw memory a ``CompactionContext`` points into, for one cycle.
final class CompactionResources: @unchecked Sendable {
  let context: CompactionContext
  private let states: UnsafeMutablePointer<Atomic<UInt64>>
  private let pageCount: Int
  private let atomics: UnsafeMutablePointer<Atomic<Int>>
  private let atomicCount: Int
  private let busy: UnsafeMutablePointer<Atomic<Bool>>
  private let bufferCount: Int
  /// Page-aligned (UFFDIO_COPY wants an aligned source) and populated before the cycle.
  private let bufferMemory: AnonymousMemory

  init(layout: PageLayout, fromSpace: AnonymousMemory, uffd: Int32, strategy: MappingStrategy,
       buffers: Int) throws(UserfaultfdError) {
    pageCount = Swift.max(layout.pageCount, 1)
    bufferCount = Swift.max(buffers, 1)
    bufferMemory = try AnonymousMemory(length: bufferCount * layout.pageSize, populate: true)
    states = .allocate(capacity: pageCount)
    for index in 0..<pageCount { (states + index).initialize(to: Atomic(PageState.unprocessed)) }
    atomicCount = 2 + CycleCounters.slotCount
    atomics = .allocate(capacity: atomicCount)
    for index in 0..<atomicCount { (atomics + index).initialize(to: Atomic(0)) }
    atomics[0].store(layout.fromPages - 1, ordering: .relaxed)  // The recycle cursor.
    atomics[1].store(Swift.max(layout.pageCount - 1, 0), ordering: .relaxed)  // The GC's page.
    busy = .allocate(capacity: bufferCount)
    for index in 0..<bufferCount { (busy + index).initialize(to: Atomic(false)) }
    context = CompactionContext(
      layout: layout, from: fromSpace.baseAddress.assumingMemoryBound(to: UInt64.self),
      states: states, recycleCursor: atomics, gcIndex: atomics + 1,
      buffers: bufferMemory.baseAddress.assumingMemoryBound(to: UInt64.self), bufferBusy: busy,
      bufferCount: bufferCount, counters: CycleCounters(slots: atomics + 2), uffd: uffd,
      useMove: strategy == .move)
  }

  deinit {
    states.deinitialize(count: pageCount)
    states.deallocate()
    atomics.deinitialize(count: atomicCount)
    atomics.deallocate()
    busy.deinitialize(count: bufferCount)
    busy.deallocate()
  }
}
