#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import Synchronization
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

  func run() {
    let layout = context.layout
    let pageBytes = layout.pageSize
    var run = Run()
    var reserved = (low: 0, count: 0)  // Dead from-space pages reserved, used from the top.
    var released = layout.fromPages  // COPY: from-space pages at and above this are released.
    for index in stride(from: layout.pageCount - 1, through: 0, by: -1) {
      context.gcIndex[0].store(index, ordering: .releasing)
      let state = context.states + index
      if state.pointee.compareExchange(expected: PageState.unprocessed, desired: PageState.processing, ordering: .acquiring).exchanged {
        if context.useMove && reserved.count == 0 {
          reserved = context.reserveRecycledPages(upTo: Self.maxPagesPerMove)
        }
        if reserved.count > 0 {
          reserved.count -= 1
          let staging = reserved.low + reserved.count
          layout.compactPage(index, fromSpace: context.from, into: context.fromPage(staging))
          state.pointee.store(PageState.processed(staging: staging), ordering: .releasing)
          if run.count > 0 && run.low == index + 1 && run.stagingLow == staging + 1 && run.count < Self.maxPagesPerMove {
            run.low = index
            run.stagingLow = staging
            run.count += 1
          } else {
            flush(run)
            run = Run(low: index, stagingLow: staging, count: 1)
          }
        } else {
          layout.compactPage(index, fromSpace: context.from, into: buffer)
          context.mapPages(at: index, count: 1, from: buffer, move: false)
          state.pointee.store(PageState.mapped, ordering: .releasing)
          context.counters.add(.bufferPages)
        }
        context.counters.add(.pagesByGC)
      } else {
        // A mutator is compacting it: it reads from-space up to lastSource[index], so wait before
        // the GC moves on and lets the pages above that be recycled.
        while PageState.kind(state.pointee.load(ordering: .acquiring)) == PageState.mutatorProcessing { sched_yield() }
      }
      if !context.useMove {
        let needed = index > 0 ? layout.lastSource[index - 1] + 1 : 0
        if needed < released && ((released - needed) * pageBytes >= Self.releaseStep || index == 0) {
          try? fromSpace.advise(.dontNeed, offset: needed * pageBytes, length: (released - needed) * pageBytes)
          released = needed
        }
      }
    }
    flush(run)
    // Pages a mutator claimed after the GC passed are mapped by that mutator; wait for them.
    for index in 0..<layout.pageCount {
      while context.states[index].load(ordering: .acquiring) != PageState.mapped { sched_yield() }
    }
  }

  /// Maps a run with as few UFFDIO_MOVEs as possible: pages a faulting mutator claimed meanwhile
  /// (and moved itself) split it.
  private func flush(_ run: Run) {
    guard run.count > 0 else { return }
    var claimedLow = -1  // Lowest page of the current claimed stretch, scanning upward.
    for offset in 0...run.count {
      let claimed: Bool
      if offset < run.count {
        let index = run.low + offset
        claimed = context.states[index].compareExchange(
          expected: PageState.processed(staging: run.stagingLow + offset), desired: PageState.mapping,
          ordering: .acquiring).exchanged
      } else {
        claimed = false
      }
      if claimed {
        if claimedLow < 0 { claimedLow = offset }
      } else if claimedLow >= 0 {
        let count = offset - claimedLow
        context.mapPages(at: run.low + claimedLow, count: count,
                         from: context.fromPage(run.stagingLow + claimedLow), move: true)
        for index in (run.low + claimedLow)..<(run.low + offset) {
          context.states[index].store(PageState.mapped, ordering: .releasing)
        }
        claimedLow = -1
      }
    }
  }
}
