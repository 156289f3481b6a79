import Userfaultfd

/// Where each to-space page's content comes from, computed before the pause from the live map.
struct CompactionPlan: Sendable {
  let start: UInt
  let map: LiveMap
  /// Pages of compacted (to-space) data.
  let pageCount: Int
  /// Old address of the first live object overlapping each to-space page.
  let firstObject: [UInt]
  /// Highest from-space page index any object overlapping each to-space page occupies: the
  /// from-space pages above it are no longer needed once the pages up to it are done.
  let lastSource: [Int]

  init(heap: Heap, map: LiveMap) {
    let page = PageSize.base
    start = heap.start
    self.map = map
    pageCount = (map.liveBytes + page - 1) / page
    var first = [UInt](repeating: 0, count: pageCount)
    var last = [Int](repeating: -1, count: pageCount)
    heap.forEachObject { address in
      guard map.isLive(address) else { return }
      let bytes = heap.object(at: address).sizeInWords * ObjectLayout.wordSize
      let newOffset = Int(map.newAddress(address) - heap.start)
      let sourceEnd = (Int(address - heap.start) + bytes - 1) / page
      for target in (newOffset / page)...((newOffset + bytes - 1) / page) {
        if first[target] == 0 { first[target] = address }
        last[target] = max(last[target], sourceEnd)
      }
    }
    firstObject = first
    lastSource = last
  }

  /// The next live object's old address after the object ending at `end` (old address), found
  /// in the bitmap, never by reading from-space (whose dead pages may have been recycled).
  func nextLive(after end: UInt) -> UInt? {
    var word = Int(end - start) / ObjectLayout.wordSize
    let chunks = map.bitmap.count
    while word / LiveMap.chunkWords < chunks {
      let chunk = word / LiveMap.chunkWords
      let bits = map.bitmap[chunk] >> UInt64(word % LiveMap.chunkWords)
      if bits != 0 {
        return start + UInt((word + bits.trailingZeroBitCount) * ObjectLayout.wordSize)
      }
      word = (chunk + 1) * LiveMap.chunkWords
    }
    return nil
  }

  /// Compacts to-space page `index` into `buffer` (one page): copies the parts of the live objects
  /// that land there from from-space and rewrites their reference fields. Reads only from-space
  /// (`fromSpace`, the old heap's pages, at the same offsets) and writes only `buffer`.
  func compactPage(_ index: Int, fromSpace: UnsafeMutablePointer<UInt64>, into buffer: UnsafeMutablePointer<UInt64>) {
    let page = PageSize.base
    let wordsPerPage = page / ObjectLayout.wordSize
    buffer.update(repeating: 0, count: wordsPerPage)
    let pageStart = index * page, pageEnd = pageStart + page
    var address = firstObject[index]
    while true {
      let object = ObjectView(words: fromSpace + Int(address - start) / ObjectLayout.wordSize)
      let size = object.sizeInWords
      let newOffset = Int(map.newAddress(address) - start)
      guard newOffset < pageEnd else { return }
      let references = ObjectLayout.headerWords..<(ObjectLayout.headerWords + object.referenceCount)
      let from = max(newOffset, pageStart), to = min(newOffset + size * ObjectLayout.wordSize, pageEnd)
      var offset = from
      while offset < to {
        let word = (offset - newOffset) / ObjectLayout.wordSize
        var value = object.words[word]
        if references.contains(word) && value != 0 { value = UInt64(map.newAddress(UInt(value))) }
        buffer[(offset - pageStart) / ObjectLayout.wordSize] = value
        offset += ObjectLayout.wordSize
      }
      guard let next = nextLive(after: address + UInt(size * ObjectLayout.wordSize)) else { return }
      address = next
    }
  }
}
