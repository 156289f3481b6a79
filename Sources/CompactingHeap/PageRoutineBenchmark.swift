import Userfaultfd

/// The page-compaction routine alone (``PageLayout/compactPage(_:fromSpace:into:)``), without
/// ioctls, faults or other threads: every to-space page of a freshly marked heap compacted into a
/// 64-page buffer in turn (the GC's copy buffer, as under COPY), reading the heap itself as
/// from-space (the routine only reads it). What
/// `uffd compact` sets beside memcpy for the routine's own speed; the heap is left unchanged.
package enum PageRoutineBenchmark {
  /// Pages of the buffer the routine writes into, in turn (the GC's default run length).
  static var bufferPages: Int { 64 }

  /// Live bytes and the calling thread's CPU nanoseconds for the best of `repetitions` passes.
  package static func measure(_ heap: Heap, repetitions: Int = 3) throws(HeapError) -> (liveBytes: Int, nanoseconds: Int64) {
    let map = LiveMap(marking: heap)
    let plan = CompactionPlan(heap: heap, map: map)
    let layout = plan.layout
    let buffer: AnonymousMemory
    do {
      buffer = try AnonymousMemory(length: Self.bufferPages * layout.pageSize, populate: true)
    } catch {
      throw .system(error)
    }
    let pages = buffer.baseAddress.assumingMemoryBound(to: UInt64.self)
    let from = heap.memory.baseAddress.assumingMemoryBound(to: UInt64.self)
    var best = Int64.max
    for _ in 0..<Swift.max(1, repetitions) {
      let start = CycleClock.threadCPU()
      for index in 0..<layout.pageCount {
        let page = pages + (index % Self.bufferPages) * layout.wordsPerPage
        // Writes through a pointer into mmap'd memory: the optimizer cannot drop them.
        layout.compactPage(index, fromSpace: from, into: page)
      }
      best = Swift.min(best, CycleClock.threadCPU() - start)
    }
    return (map.liveBytes, best)
  }
}
