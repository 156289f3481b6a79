import Userfaultfd

/// The GC thread's side of the concurrent phase: every to-space page, top down.
///
/// - MOVE: compact into a recycled dead from-space page and leave it `processed`; pages whose
///   staging pages are contiguous form a run that one UFFDIO_MOVE maps (up to
///   ``runPages``). With no dead page free yet (early on), a buffer and UFFDIO_COPY.
/// - COPY: compact contiguous pages into a buffer and map each run with one UFFDIO_COPY (up to
///   ``runPages`` pages, as ART's `MapMovingSpacePages` batches COPY too; one page per
///   ioctl for ``MappingStrategy/copySinglePage``), and release from-space with MADV_DONTNEED in
///   steps of at least 8 MiB once no page below needs it.
struct CompactionThread {
  /// COPY releases from-space in steps of at least this many bytes (as ART does).
  static let releaseStep = 8 << 20
  /// Base pages per 2 MiB huge page: from-space is released in whole huge pages.
  static var hugePagePages: Int { PageSize.huge / PageSize.base }
  /// Mutator-held pages the GC goes past before it waits for one.
  static let maxSkippedPages = 4096

  let context: CompactionContext
  let fromSpace: AnonymousMemory
  /// Room for ``runPages`` compacted pages waiting to be copied in as one run.
  let buffer: UnsafeMutablePointer<UInt64>
  /// The longest run one ioctl maps (``CompactionConfiguration/gcRunPages``): long enough to
  /// amortize the ioctl and, under MOVE, its TLB flush; short enough that mutators rarely find
  /// pages compacted but not mapped.
  let runPages: Int
  /// Pages per UFFDIO_COPY run: ``runPages``, or 1 for the one-page COPY variant.
  let copyRunPages: Int
  /// MOVE: runs shorter than this are copied from their staging pages instead
  /// (``CompactionConfiguration/minimumMoveRun``).
  let minimumMoveRun: Int

  /// A run of compacted, unmapped pages: to-space `low ..< low + count` from staging pages
  /// `stagingLow ..< stagingLow + count` (both grow downward as the GC goes).
  private struct Run {
    var low = 0, stagingLow = 0, count = 0
  }

  /// Compacted pages in ``buffer`` waiting for one UFFDIO_COPY: to-space `low ..< low + count`,
  /// filled top down, so page `low + k` sits at buffer slot `runPages - count + k`.
  private struct CopyRun {
    var low = 0, count = 0
  }

  /// Compacts every to-space page, top down, and returns once every page is mapped.
  func run() {
    let layout = context.layout
    var run = Run()
    var copyRun = CopyRun()
    var reserved = (low: 0, count: 0)  // Dead from-space pages reserved, used from the top.
    var released = layout.fromPages  // COPY: from-space pages at and above this are released.
    var skipped = SkippedPages(capacity: Self.maxSkippedPages)
    for index in stride(from: layout.pageCount - 1, through: 0, by: -1) {
      // Nothing above the highest page still being compacted reads from-space any more.
      let pending = skipped.highestUnfinished(in: context.states)
      context.gcIndex[0].store(Swift.max(index, pending), ordering: .releasing)
      if context.useMove && reserved.count == 0 {
        reserved = context.reserveRecycledPages(upTo: runPages)
      }
      let compacted = context.compactWithStateChange(index, claim: .processing) {
        context.counters.add(.pagesByGC)
        guard reserved.count > 0 else {
          // No dead page free yet (or COPY): into the buffer, copied in with its run. It is
          // `buffered` until then: a mutator touching it copies it from the buffer itself rather
          // than wait for the rest of the run to be compacted and copied.
          if copyRun.count > 0 && (copyRun.low != index + 1 || copyRun.count == copyRunPages) {
            mapCopyRun(copyRun)
            copyRun = CopyRun()
          }
          copyRun.low = index
          copyRun.count += 1
          let slot = runPages - copyRun.count
          layout.compactPage(index, fromSpace: context.from, into: bufferSlot(slot))
          context.counters.add(.bufferPages)
          return .buffered(slot: slot)
        }
        reserved.count -= 1
        let staging = reserved.low + reserved.count
        layout.compactPage(index, fromSpace: context.from, into: context.fromPage(staging))
        if run.count > 0 && run.low == index + 1 && run.stagingLow == staging + 1 && run.count < runPages {
          run.low = index
          run.stagingLow = staging
          run.count += 1
        } else {
          mapProcessedRun(run)
          run = Run(low: index, stagingLow: staging, count: 1)
        }
        return .processed(staging: staging)
      }
      if !compacted {
        // A mutator is compacting it. Pages waiting in the copy buffer go in first (the mutator
        // may be waiting for one of them in another fault). Then the GC goes on below it: the
        // mutator reads from-space up to lastSource[index], so until it is done ``gcIndex`` stays
        // at this page and nothing it may read is recycled or released. (A mutator preempted
        // mid-fault used to hold the GC for a scheduler tick, ~4 ms, on an oversubscribed machine.)
        mapCopyRun(copyRun)
        copyRun = CopyRun()
        if context.states.load(index).kind == .mutatorProcessing && !skipped.append(index) {
          BackOff.wait { context.states.load(index).kind == .mutatorProcessing }  // Full: wait.
        }
      }
      if context.useMove {
        releaseSpareRecycledPages()
      } else {
        // The pages below this one, and any a mutator still holds, read from-space.
        released = releaseFromSpace(upTo: Swift.max(index - 1, skipped.highest), releasedFrom: released, last: index == 0)
      }
    }
    mapProcessedRun(run)
    mapCopyRun(copyRun)
    // Pages a mutator claimed after the GC passed are mapped by that mutator; wait for them.
    for index in 0..<layout.pageCount {
      BackOff.wait { context.states.load(index) != .mapped }
    }
  }

  @inline(__always)
  private func bufferSlot(_ slot: Int) -> UnsafeMutablePointer<UInt64> { buffer + slot &* context.layout.wordsPerPage }

  /// Copies a run of buffered pages in with one UFFDIO_COPY and publishes them mapped. Pages a
  /// faulting mutator claimed meanwhile (to copy them from the buffer itself) split the run; the
  /// GC waits for those to be mapped (one one-page ioctl each) before it reuses their slots.
  private func mapCopyRun(_ run: CopyRun) {
    guard run.count > 0 else { return }
    let firstSlot = runPages - run.count
    var claimedLow = -1  // Lowest page of the current claimed stretch, scanning upward.
    var taken = false  // Whether a mutator claimed any.
    for offset in 0...run.count {
      let claimed = offset < run.count
        && context.states.claim(run.low + offset, from: .buffered(slot: firstSlot + offset), to: .mapping)
      if claimed {
        if claimedLow < 0 { claimedLow = offset }
        continue
      }
      if offset < run.count { taken = true }
      guard claimedLow >= 0 else { continue }
      context.gcMapPages(at: run.low + claimedLow, count: offset - claimedLow, from: bufferSlot(firstSlot + claimedLow), move: false)
      context.recordMapped((run.low + claimedLow)..<(run.low + offset), byMutator: false)
      for index in (run.low + claimedLow)..<(run.low + offset) { context.states.publish(.mapped, at: index) }
      claimedLow = -1
    }
    guard taken else { return }
    for index in run.low..<(run.low + run.count) {
      BackOff.wait { context.states.load(index).kind == .mapping }
    }
  }

  /// COPY: gives back (MADV_DONTNEED) the from-space pages no to-space page up to `stillReading`
  /// (-1: none) reads any more, in steps of at least ``releaseStep`` (any size when `last`);
  /// from-space from `releasedFrom` up is already released. Returns the new release boundary.
  private func releaseFromSpace(upTo stillReading: Int, releasedFrom released: Int, last: Bool) -> Int {
    let layout = context.layout
    let pageBytes = layout.pageSize
    var needed = stillReading >= 0 ? layout.lastSource[stillReading] + 1 : 0
    // Up to a huge-page boundary: releasing part of a 2 MiB page (``Heap/hugePages``) would split
    // it and free it page by page again; the rest goes with the next step.
    if !last { needed = (needed + Self.hugePagePages - 1) / Self.hugePagePages * Self.hugePagePages }
    guard needed < released && ((released - needed) * pageBytes >= Self.releaseStep || last) else {
      return released
    }
    try? fromSpace.advise(.dontNeed, offset: needed * pageBytes, length: (released - needed) * pageBytes)
    context.counters.add(.releasedPages, released - needed)
    return needed
  }

  /// MOVE: gives back (MADV_DONTNEED) dead from-space pages nobody will recycle, in steps of at
  /// least ``releaseStep``, keeping ``spareRecycledPages(runPages:)`` for the GC's next runs:
  /// pages mutators COPY in use no recycled page, so without this from-space would stay resident
  /// to the end of the cycle beside the pages they allocate.
  private func releaseSpareRecycledPages() {
    let pageBytes = context.layout.pageSize
    let spare = context.takeSpareRecycledPages(
      keeping: Self.spareRecycledPages(runPages: runPages), minimum: Self.releaseStep / pageBytes)
    guard spare.count > 0 else { return }
    try? fromSpace.advise(.dontNeed, offset: spare.low * pageBytes, length: spare.count * pageBytes)
    context.counters.add(.releasedPages, spare.count)
  }

  /// Dead pages kept free for recycling under MOVE: two runs, at least 128 (as ART keeps).
  static func spareRecycledPages(runPages: Int) -> Int { Swift.max(128, 2 * runPages) }

  /// Maps a run of processed pages with as few UFFDIO_MOVEs as possible (ART:
  /// `MapMovingSpacePages`): pages a faulting mutator claimed meanwhile (and moved itself) split it.
  private func mapProcessedRun(_ run: Run) {
    guard run.count > 0 else { return }
    var claimedLow = -1  // Lowest page of the current claimed stretch, scanning upward.
    for offset in 0...run.count {
      let claimed = offset < run.count
        && context.states.claim(
          run.low + offset, from: .processed(staging: run.stagingLow + offset), to: .mapping)
      if claimed {
        if claimedLow < 0 { claimedLow = offset }
      } else if claimedLow >= 0 {
        let count = offset - claimedLow
        // A short run is copied from its staging pages: one MOVE's TLB flush interrupts every
        // other CPU running the process, which costs more than copying a few pages.
        context.gcMapPages(at: run.low + claimedLow, count: count,
                         from: context.fromPage(run.stagingLow + claimedLow), move: count >= minimumMoveRun)
        context.recordMapped((run.low + claimedLow)..<(run.low + offset), byMutator: false)
        for index in (run.low + claimedLow)..<(run.low + offset) {
          context.states.publish(.mapped, at: index)
        }
        claimedLow = -1
      }
    }
  }
}

/// The pages the GC went past while a mutator was compacting them, highest first (the GC's index
/// only falls). Preallocated: appending never allocates.
private struct SkippedPages {
  private var pages: [Int]
  private var first = 0, count = 0

  init(capacity: Int) { pages = Array(repeating: -1, count: capacity) }

  /// The highest skipped page, finished or not; -1 with none.
  var highest: Int { count > 0 ? pages[first] : -1 }

  /// Adds `index` (lower than every page already in); false when full.
  mutating func append(_ index: Int) -> Bool {
    guard count < pages.count else { return false }
    pages[(first + count) % pages.count] = index
    count += 1
    return true
  }

  /// Drops finished pages from the top and returns the highest page a mutator is still
  /// compacting; -1 with none. (A finished page below an unfinished one stays until that one is
  /// done: only the highest matters.)
  mutating func highestUnfinished(in states: PageStates) -> Int {
    while count > 0 && states.load(pages[first]).kind != .mutatorProcessing {
      first = (first + 1) % pages.count
      count -= 1
    }
    return highest
  }
}
