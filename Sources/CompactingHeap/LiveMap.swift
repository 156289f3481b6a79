/// Marking and post-compaction addresses (ART's design, summarised in the README): a
/// live-words bitmap (one bit per 8-byte word; one UInt64 per 512-byte chunk) and, per chunk, the
/// live words before it. An object's new address is `start + 8 × (chunk prefix + live words before
/// it in its chunk)`: a pure slide toward the start, order preserved.
public struct LiveMap: Sendable {
  /// Heap start address.
  public let start: UInt
  /// One word per 512-byte chunk: bit i = word i of the chunk is live.
  var bitmap: [UInt64]
  /// Live words before each chunk (exclusive prefix sum).
  var prefix: [Int]
  /// Live objects and bytes.
  public private(set) var liveObjects = 0
  /// Live bytes: the compacted heap's size.
  public private(set) var liveBytes = 0

  /// Words per chunk.
  static var chunkWords: Int { ChunkInfo.words }

  /// Marks everything reachable from `heap`'s roots (stop-the-world), then computes the prefix sums.
  public init(marking heap: Heap) {
    start = heap.start
    let chunks = (heap.top / ObjectLayout.wordSize + Self.chunkWords - 1) / Self.chunkWords
    bitmap = Array(repeating: 0, count: chunks)
    prefix = Array(repeating: 0, count: chunks + 1)
    // Roots outside the heap are skipped rather than trusted (``Heap/validateRoots()`` reports them).
    let end = heap.start + UInt(heap.top)
    var stack: [UInt] = heap.roots.flatMap { $0 }.filter { $0 >= heap.start && $0 < end }
    while let address = stack.popLast() {
      guard !isLive(address) else { continue }
      let object = heap.object(at: address)
      let first = Int(address - start) / ObjectLayout.wordSize
      // A header that does not fit the heap is not an object (a bad root): skip it, never trap.
      guard object.sizeInWords > 0, object.sizeInWords <= heap.top / ObjectLayout.wordSize - first else { continue }
      setLive(words: first..<(first + object.sizeInWords))
      liveObjects += 1
      liveBytes += object.sizeInWords * ObjectLayout.wordSize
      for field in 0..<object.referenceCount {
        let target = object.reference(field)
        if target >= heap.start && target < end && !isLive(target) { stack.append(target) }
      }
    }
    var running = 0
    for chunk in 0..<chunks {
      prefix[chunk] = running
      running += bitmap[chunk].nonzeroBitCount
    }
    prefix[chunks] = running
  }

  /// Whether the word at `address` is live.
  @inline(__always)
  public func isLive(_ address: UInt) -> Bool {
    let word = Int(address - start) / ObjectLayout.wordSize
    return bitmap[word / Self.chunkWords] & (1 << UInt64(word % Self.chunkWords)) != 0
  }

  private mutating func setLive(words range: Range<Int>) {
    var word = range.lowerBound
    while word < range.upperBound {
      let chunk = word / Self.chunkWords, bit = word % Self.chunkWords
      let count = min(Self.chunkWords - bit, range.upperBound - word)
      let mask: UInt64 = count == Self.chunkWords ? ~0 : ((1 << UInt64(count)) - 1) << UInt64(bit)
      bitmap[chunk] |= mask
      word += count
    }
  }

  /// The post-compaction address of the live object at `address`.
  @inline(__always)
  public func newAddress(_ address: UInt) -> UInt {
    let word = Int(address - start) / ObjectLayout.wordSize
    let chunk = word / Self.chunkWords, bit = UInt64(word % Self.chunkWords)
    let before = (bitmap[chunk] & ((1 << bit) &- 1)).nonzeroBitCount
    return start + UInt((prefix[chunk] + before) * ObjectLayout.wordSize)
  }
}
