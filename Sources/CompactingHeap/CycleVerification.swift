import Userfaultfd

/// The checks after every concurrent cycle (listed in the README): every
/// logged mutator write present; with the original values put back, every page equal byte for
/// byte to a stop-the-world reference compaction of the same heap, new addresses dense and
/// increasing, every reference at a valid header, and the object-graph hash as before.
enum CycleVerification {
  /// What the cycle must produce, computed before the pause.
  struct Expected {
    /// The roots rewritten to their new addresses (installed in the pause).
    let roots: [[UInt]]
    /// One hash per to-space page of the reference compaction (the image itself is dropped, so
    /// it does not count against the cycle's memory).
    let pageHashes: [UInt64]
    /// The graph hash of the live objects before compaction.
    let graph: GraphHash

    init(heap: Heap, map: LiveMap, pageCount: Int) {
      graph = Verification.hash(heap, map: map)
      let reference = ReferenceCompaction.image(of: heap, map: map)
      pageHashes = reference.words.withUnsafeBufferPointer { CycleVerification.pageHashes($0, count: pageCount) }
      roots = reference.roots
    }
  }

  /// One hash per page of `words` (zero-padded to whole pages).
  static func pageHashes(_ words: UnsafeBufferPointer<UInt64>, count: Int) -> [UInt64] {
    let perPage = PageSize.base / ObjectLayout.wordSize
    return (0..<count).map { page in
      var hash: UInt64 = 0xCBF2_9CE4_8422_2325
      for index in (page * perPage)..<((page + 1) * perPage) {
        hash = (hash ^ (index < words.count ? words[index] : 0)) &* 0x0000_0100_0000_01B3
        hash ^= hash >> 29
      }
      return hash
    }
  }

  /// Runs every check; returns the number of mutator writes verified.
  static func verify(heap: Heap, expected: Expected, logs: [WriteLog]) throws(HeapError) -> Int {
    for log in logs {
      try log.forEach { entry throws(HeapError) in
        let word = heap.words + Int(entry.address - heap.start) / ObjectLayout.wordSize
        guard word.pointee == entry.last else {
          throw .verificationFailed(
            "a mutator's write at 0x\(String(entry.address, radix: 16)) was lost (found \(word.pointee), wrote \(entry.last))")
        }
        word.pointee = entry.original
      }
    }
    let perPage = PageSize.base / ObjectLayout.wordSize
    let pageCount = expected.pageHashes.count
    let found = pageHashes(UnsafeBufferPointer(start: heap.words, count: pageCount * perPage), count: pageCount)
    if let page = zip(found, expected.pageHashes).enumerated().first(where: { $0.element.0 != $0.element.1 })?.offset {
      throw .verificationFailed(
        "page \(page) of \(pageCount) differs from the stop-the-world reference compaction")
    }
    _ = try Verification.check(heap, expected: expected.graph)
    // Put the mutators' writes back: the heap is theirs.
    var writes = 0
    for log in logs {
      writes += log.writes
      try log.forEach { entry throws(HeapError) in
        (heap.words + Int(entry.address - heap.start) / ObjectLayout.wordSize).pointee = entry.last
      }
    }
    return writes
  }
}
