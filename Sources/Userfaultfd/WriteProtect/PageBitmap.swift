/// One bit per page of a range, allocated once: setting and clearing never allocate.
struct PageBitmap: Sendable {
  private(set) var words: [UInt64]
  let pageCount: Int

  init(pageCount: Int) {
    self.pageCount = pageCount
    words = [UInt64](repeating: 0, count: (pageCount + 63) / 64)
  }

  mutating func set(_ page: Int) {
    guard page >= 0, page < pageCount else { return }
    words[page >> 6] |= 1 << UInt64(page & 63)
  }

  mutating func set(_ pages: Range<Int>) {
    for page in pages.clamped(to: 0..<pageCount) { set(page) }
  }

  mutating func clear(_ pages: Range<Int>) {
    for page in pages.clamped(to: 0..<pageCount) { words[page >> 6] &= ~(1 << UInt64(page & 63)) }
  }

  func contains(_ page: Int) -> Bool {
    guard page >= 0, page < pageCount else { return false }
    return words[page >> 6] & (1 << UInt64(page & 63)) != 0
  }

  var isEmpty: Bool { words.allSatisfy { $0 == 0 } }

  mutating func clearAll() {
    for index in words.indices { words[index] = 0 }
  }

  /// The runs of set pages, as page-index ranges, in order.
  func runs() -> [Range<Int>] {
    var runs: [Range<Int>] = []
    var runStart = -1
    for (index, word) in words.enumerated() {
      if word == 0 && runStart < 0 { continue }
      if word == ~0 && runStart >= 0 { continue }
      for bit in 0..<64 {
        let page = index * 64 + bit
        guard page < pageCount else { break }
        let isSet = word & (1 << UInt64(bit)) != 0
        if isSet && runStart < 0 { runStart = page }
        if !isSet && runStart >= 0 {
          runs.append(runStart..<page)
          runStart = -1
        }
      }
    }
    if runStart >= 0 { runs.append(runStart..<pageCount) }
    return runs
  }

  /// The union of two bitmaps of the same range.
  func union(_ other: PageBitmap) -> PageBitmap {
    var result = self
    for index in result.words.indices where index < other.words.count {
      result.words[index] |= other.words[index]
    }
    return result
  }
}
