/// The page-compaction routine (ART: `CompactPage`): one to-space page built from the live
/// objects that land on it.
extension PageLayout {
  /// Compacts to-space page `index` into `buffer` (one page): copies the live words that land
  /// there from from-space, rewrites the reference fields among them, zeroes what is left. Reads
  /// only from-space and the plan; writes only `buffer`. Never touches to-space, so it cannot
  /// fault on a registered page (no cascading userfaults). Async-signal-safe.
  ///
  /// Two passes (profiled: one copy per object spent a third of the GC thread's time in memmove
  /// calls of ~200 bytes): first every run of adjacent live words with one copy, found in the
  /// live-words bitmap; then the objects, walked in the buffer where their headers now are.
  func compactPage(_ index: Int, fromSpace: UnsafePointer<UInt64>, into buffer: UnsafeMutablePointer<UInt64>) {
    let firstObject = firstWord[index]
    guard firstObject >= 0 else {
      buffer.update(repeating: 0, count: wordsPerPage)
      return
    }
    let pageStart = index &* pageSize
    // Word offset of the first object's start relative to this page (negative: it began on an
    // earlier page). Live words are dense in to-space, so the page holds the live words from
    // `firstObject - skipped` on, in order.
    let objectOffset = (newOffset(ofWord: firstObject) &- pageStart) &>> ObjectLayout.wordShift
    let filled = copyLiveWords(from: firstObject &+ Swift.max(0, -objectOffset), fromSpace: fromSpace,
                               into: buffer + Swift.max(0, objectOffset), count: wordsPerPage &- Swift.max(0, objectOffset))
    let used = Swift.max(0, objectOffset) &+ filled
    if used < wordsPerPage { (buffer + used).update(repeating: 0, count: wordsPerPage &- used) }
    forwardReferences(firstObject: firstObject, objectOffset: objectOffset, usedWords: used, fromSpace: fromSpace, in: buffer)
  }

  /// Copies up to `count` live words, from old word `word` (live) on, skipping dead words, into
  /// `target`: one copy per run of adjacent live words. Returns the words copied.
  @inline(__always)
  private func copyLiveWords(from word: Int, fromSpace: UnsafePointer<UInt64>, into target: UnsafeMutablePointer<UInt64>,
                             count: Int) -> Int {
    var copied = 0
    var runStart = word
    while copied < count && runStart >= 0 {
      let length = Swift.min(liveRunLength(at: runStart), count &- copied)
      (target + copied).update(from: fromSpace + runStart, count: length)
      copied &+= length
      runStart = nextLiveWord(from: runStart &+ length)
    }
    return copied
  }

  /// The number of adjacent live words from live word `word` on (the bitmap only).
  @inline(__always)
  private func liveRunLength(at word: Int) -> Int {
    var chunk = word &>> ChunkInfo.wordShift
    let bit = word & ChunkInfo.wordMask
    // Dead bits from `bit` up in this chunk, as ones.
    var dead = ~chunks[chunk].bits &>> UInt64(bit)
    if dead != 0 { return dead.trailingZeroBitCount }
    var length = ChunkInfo.words &- bit
    chunk &+= 1
    while chunk < chunkCount {
      dead = ~chunks[chunk].bits
      if dead != 0 { return length &+ dead.trailingZeroBitCount }
      length &+= ChunkInfo.words
      chunk &+= 1
    }
    return length
  }

  /// Rewrites the reference fields that lie in the page's first `usedWords` words. Objects are
  /// dense in the buffer from `objectOffset` (the first object's start, negative when it began on
  /// an earlier page, whose header is then read from from-space).
  @inline(__always)
  private func forwardReferences(firstObject: Int, objectOffset: Int, usedWords: Int, fromSpace: UnsafePointer<UInt64>,
                                 in buffer: UnsafeMutablePointer<UInt64>) {
    var offset = objectOffset
    var header = ObjectHeader(fromSpace[firstObject])
    while true {
      let low = Swift.max(offset, 0) &- offset
      let high = Swift.min(ObjectLayout.headerWords &+ header.referenceCount, usedWords &- offset)
      var field = Swift.max(ObjectLayout.headerWords, low)
      while field < high {
        let value = buffer[offset &+ field]
        if value != 0 { buffer[offset &+ field] = forward(value) }
        field &+= 1
      }
      offset &+= header.sizeInWords
      guard offset < usedWords, header.sizeInWords > 0 else { return }
      header = ObjectHeader(buffer[offset])
    }
  }
}
