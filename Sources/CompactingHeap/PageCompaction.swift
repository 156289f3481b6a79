/// The page-compaction routine (ART: `CompactPage`): one to-space page built from the live
/// objects that land on it.
extension PageLayout {
  /// Compacts to-space page `index` into `buffer` (one page): copies the parts of the live objects
  /// that land there from from-space, rewrites their reference fields, zeroes what is left. Reads
  /// only from-space and the plan; writes only `buffer`. Never touches to-space, so it cannot
  /// fault on a registered page (no cascading userfaults). Async-signal-safe.
  func compactPage(_ index: Int, fromSpace: UnsafePointer<UInt64>, into buffer: UnsafeMutablePointer<UInt64>) {
    let shift = ObjectLayout.wordShift
    let pageStart = index &* pageSize, pageEnd = pageStart &+ pageSize
    var word = firstWord[index]
    var newStart = newOffset(ofWord: word)
    var filled = pageStart
    while word >= 0 && newStart < pageEnd {
      let object = fromSpace + word
      let header = ObjectHeader(object[0])
      let newEnd = newStart &+ header.sizeInWords &* ObjectLayout.wordSize
      // The part of the object on this page: words first ..< first + count.
      let low = Swift.max(newStart, pageStart), high = Swift.min(newEnd, pageEnd)
      let first = (low &- newStart) &>> shift, count = (high &- low) &>> shift
      let target = buffer + ((low &- pageStart) &>> shift)
      target.update(from: object + first, count: count)
      // Reference fields are words 2 ..< 2 + references; rewrite those inside this page.
      let referenceLow = Swift.max(ObjectLayout.headerWords, first)
      let referenceHigh = Swift.min(ObjectLayout.headerWords &+ header.referenceCount, first &+ count)
      var field = referenceLow
      while field < referenceHigh {
        let value = object[field]
        if value != 0 { target[field &- first] = forward(value) }
        field &+= 1
      }
      filled = high
      guard newEnd < pageEnd else { break }
      word = nextLiveWord(from: word &+ header.sizeInWords)
      newStart = newEnd  // Dense: the next live object follows at once.
    }
    if filled < pageEnd {
      (buffer + ((filled &- pageStart) &>> shift)).update(repeating: 0, count: (pageEnd &- filled) &>> shift)
    }
  }
}
