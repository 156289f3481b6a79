import Userfaultfd

/// The GC thread's side of the concurrent phase: every to-space page, top down.
///
/// - MOVE: compact into a recycled dead from-space page and leave it `processed`; pages whose
///   staging pages are contiguous form a run that one UFFDIO_MOVE maps (up to
///   ``maxPagesPerMove``). With no dead page free yet (early on), a buffer and UFFDIO_COPY.
/// - COPY: compact into a buffer, UFFDIO_COPY it, and release from-space with MADV_DONTNEED in
///   steps of at least 8 MiB once no page below needs it.
struct CompactionThread {
  /// The longest run mapped by one UFFDIO_MOVE (256 KiB): long enough to amortize the ioctl and
  /// its TLB flush, short enough that mutators rarely find pages compacted but not mapped.
  static let maxPagesPerMove = 64
  /// COPY releases from-space in steps of at least this many bytes (as ART does).
  static let releaseStep = 8 << 20

  let context: CompactionContext
  let fromSpace: AnonymousMemory
  let buffer: UnsafeMutablePointer<UInt64>

  /// A run of compacted, unmapped pages: to-space `low ..< low + count` from staging pages
  /// `stagingLow ..< stagingLow + count` (both grow downward as the GC goes).
  private struct Run {
    var low = 0, stagingLow = 0, count = 0
  }

  /// Compacts every to-space page, top down, and returns once every page is mapped.
  func run() {
    let layout = context.layout
    var run = Run()
    var reserved = (low: 0, count: 0)  // Dead from-space pages reserved, used from the top.
    var released = layout.fromPages  // COPY: from-space pages at and above this are released.
    for index in stride(from: layout.pageCount - 1, through: 0, by: -1) {
      context.gcIndex[0].store(index, ordering: .releasing)
      if context.useMove && reserved.count == 0 {
        reserved = context.reserveRecycledPages(upTo: Self.maxPagesPerMove)
      }
      let compacted = context.compactWithStateChange(index, claim: .processing) {
        context.counters.add(.pagesByGC)
        guard reserved.count > 0 else {
          // No dead page free yet (or COPY): a buffer, mapped at once.
          layout.compactPage(index, fromSpace: context.from, into: buffer)
          context.mapPages(at: index, count: 1, from: buffer, move: false)
          context.counters.add(.bufferPages)
          return .mapped
        }
        reserved.count -= 1
        let staging = reserved.low + reserved.count
        layout.compactPage(index, fromSpace: context.from, into: context.fromPage(staging))
        if run.count > 0 && run.low == index + 1 && run.stagingLow == staging + 1 && run.count < Self.maxPagesPerMove {
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
        // A mutator is compacting it: it reads from-space up to lastSource[index], so wait before
        // the GC moves on and lets the pages above that be recycled.
        BackOff.wait { context.states.load(index).kind == .mutatorProcessing }
      }
      if !context.useMove { released = releaseFromSpace(neededBelow: index, releasedFrom: released) }
    }
    mapProcessedRun(run)
    // Pages a mutator claimed after the GC passed are mapped by that mutator; wait for them.
    for index in 0..<layout.pageCount {
      BackOff.wait { context.states.load(index) != .mapped }
    }
  }

  /// COPY: gives back (MADV_DONTNEED) the from-space pages no page at or below `index` reads any
  /// more, in steps of at least ``releaseStep``; from-space from `releasedFrom` up is already
  /// released. Returns the new release boundary.
  private func releaseFromSpace(neededBelow index: Int, releasedFrom released: Int) -> Int {
    let layout = context.layout
    let pageBytes = layout.pageSize
    let needed = index > 0 ? layout.lastSource[index - 1] + 1 : 0
    guard needed < released && ((released - needed) * pageBytes >= Self.releaseStep || index == 0) else {
      return released
    }
    try? fromSpace.advise(.dontNeed, offset: needed * pageBytes, length: (released - needed) * pageBytes)
    return needed
  }

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
        context.mapPages(at: run.low + claimedLow, count: count,
                         from: context.fromPage(run.stagingLow + claimedLow), move: true)
        for index in (run.low + claimedLow)..<(run.low + offset) {
          context.states.publish(.mapped, at: index)
        }
        claimedLow = -1
      }
    }
  }
}
