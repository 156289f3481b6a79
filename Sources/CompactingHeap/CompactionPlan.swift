import Userfaultfd

/// Where each to-space page's content comes from, computed before the pause from the live map,
/// and kept in raw memory so the page-compaction routine can run inside a signal handler.
final class CompactionPlan: @unchecked Sendable {
  // @unchecked: the storage is written in init and only read afterwards, by every thread.
  /// The view the page-compaction routine reads.
  let layout: PageLayout
  private let storage: UnsafeMutableRawPointer

  init(heap: Heap, map: LiveMap) {
    let page = PageSize.base
    let pageCount = (map.liveBytes + page - 1) / page
    let chunks = map.bitmap.count
    // One allocation: per chunk its bits and prefix side by side (one cache line for a reference's
    // forwarding address), then first object and last source page per to-space page.
    let bytes = (2 * chunks + 2 * max(pageCount, 1)) * 8
    storage = .allocate(byteCount: bytes, alignment: 64)
    let chunkInfo = storage.bindMemory(to: ChunkInfo.self, capacity: max(chunks, 1))
    let firstWord = (storage + 2 * chunks * 8).bindMemory(to: Int.self, capacity: max(pageCount, 1))
    let lastSource = (storage + (2 * chunks + max(pageCount, 1)) * 8)
      .bindMemory(to: Int.self, capacity: max(pageCount, 1))
    for chunk in 0..<chunks {
      (chunkInfo + chunk).initialize(to: ChunkInfo(bits: map.bitmap[chunk], before: map.prefix[chunk]))
    }
    firstWord.initialize(repeating: -1, count: max(pageCount, 1))
    lastSource.initialize(repeating: -1, count: max(pageCount, 1))
    heap.forEachObject { address in
      guard map.isLive(address) else { return }
      let bytes = heap.object(at: address).sizeInWords * ObjectLayout.wordSize
      let oldOffset = Int(address - heap.start)
      let newOffset = Int(map.newAddress(address) - heap.start)
      let sourceEnd = (oldOffset + bytes - 1) / page
      for target in (newOffset / page)...((newOffset + bytes - 1) / page) {
        if firstWord[target] < 0 { firstWord[target] = oldOffset / ObjectLayout.wordSize }
        lastSource[target] = max(lastSource[target], sourceEnd)
      }
    }
    layout = PageLayout(
      start: heap.start, pageSize: page, pageCount: pageCount,
      fromPages: (heap.top + page - 1) / page, chunks: chunkInfo, chunkCount: chunks,
      firstWord: firstWord, lastSource: lastSource)
  }

  deinit { storage.deallocate() }
}

/// The compaction plan as raw pointers and integers: trivially copyable, no reference counting,
/// so ``compactPage(_:fromSpace:into:)`` is safe to call from a SIGBUS handler.
struct PageLayout: @unchecked Sendable {
  // @unchecked: pointers into a CompactionPlan's storage, which is read-only after its init and
  // outlives every cycle that uses this view.
  /// The heap's first byte: to-space addresses are `start + offset`, from-space offsets match.
  let start: UInt
  /// Bytes per page.
  let pageSize: Int
  /// To-space pages holding compacted data.
  let pageCount: Int
  /// From-space pages holding old objects (live or dead).
  let fromPages: Int
  /// Per 512-byte chunk: its live-words bits and the live words before it.
  let chunks: UnsafePointer<ChunkInfo>
  let chunkCount: Int
  /// Per to-space page: old word index of the first live object overlapping it.
  let firstWord: UnsafePointer<Int>
  /// Per to-space page: the highest from-space page an object overlapping it occupies. The
  /// from-space pages above `lastSource[i]` are dead once every page above `i` is done.
  let lastSource: UnsafePointer<Int>

  var wordsPerPage: Int { pageSize / ObjectLayout.wordSize }

  /// Post-compaction byte offset of the live word at old word index `word`.
  @inline(__always)
  func newOffset(ofWord word: Int) -> Int {
    let chunk = word &>> ChunkInfo.wordShift, bit = UInt64(word & ChunkInfo.wordMask)
    let info = chunks[chunk]
    let before = (info.bits & ((1 &<< bit) &- 1)).nonzeroBitCount
    return (info.before &+ before) &* ObjectLayout.wordSize
  }

  /// Post-compaction address of a reference (an old address of a live object).
  @inline(__always)
  func forward(_ reference: UInt64) -> UInt64 {
    UInt64(start) &+ UInt64(newOffset(ofWord: Int(UInt(reference) &- start) &>> ObjectLayout.wordShift))
  }

  /// The first live word at or after old word index `word`, from the bitmap alone (never from
  /// from-space, whose dead pages may be recycled already), or -1.
  @inline(__always)
  func nextLiveWord(from word: Int) -> Int {
    var chunk = word &>> ChunkInfo.wordShift
    guard chunk < chunkCount else { return -1 }
    var bits = chunks[chunk].bits &>> UInt64(word & ChunkInfo.wordMask)
    if bits != 0 { return word &+ bits.trailingZeroBitCount }
    chunk &+= 1
    while chunk < chunkCount {
      bits = chunks[chunk].bits
      if bits != 0 { return chunk &<< ChunkInfo.wordShift &+ bits.trailingZeroBitCount }
      chunk &+= 1
    }
    return -1
  }
}

/// One 512-byte chunk of the heap in the live map: which words are live, and how many live words
/// come before it.
struct ChunkInfo {
  var bits: UInt64
  var before: Int

  /// Words per chunk: one bit each in ``bits``.
  static var words: Int { UInt64.bitWidth }
  /// `word >> wordShift` is a word's chunk, `word & wordMask` its bit.
  static var wordShift: Int { words.trailingZeroBitCount }
  static var wordMask: Int { words &- 1 }
}
