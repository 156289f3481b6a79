/// Checks a compacted heap: dense, increasing addresses; every reference at a valid header; the
/// graph hash as before.
public enum Verification {
  /// Throws ``HeapError/verificationFailed(_:)`` saying what is wrong, or returns the hash.
  public static func check(_ heap: Heap, expected: GraphHash) throws(HeapError) -> GraphHash {
    // One bit per word: set where an object header starts.
    var headers = [UInt64](repeating: 0, count: heap.top / ObjectLayout.wordSize / 64 + 1)
    func isHeader(_ address: UInt) -> Bool {
      guard address >= heap.start, address < heap.start + UInt(heap.top), address % UInt(ObjectLayout.wordSize) == 0
      else { return false }
      let word = Int(address - heap.start) / ObjectLayout.wordSize
      return headers[word / 64] & (1 << UInt64(word % 64)) != 0
    }
    var offset = 0
    while offset < heap.top {
      let object = heap.object(at: heap.start + UInt(offset))
      guard object.sizeInWords >= ObjectLayout.headerWords + object.referenceCount, object.id != 0,
            offset + object.sizeInWords * ObjectLayout.wordSize <= heap.top
      else {
        throw .verificationFailed("no valid object header at offset \(offset): the heap is not densely packed")
      }
      let word = offset / ObjectLayout.wordSize
      headers[word / 64] |= 1 << UInt64(word % 64)
      offset += object.sizeInWords * ObjectLayout.wordSize
    }
    var bad = 0
    heap.forEachObject { address in
      let object = heap.object(at: address)
      for field in 0..<object.referenceCount where object.reference(field) != 0 {
        if !isHeader(object.reference(field)) { bad += 1 }
      }
    }
    for root in heap.roots.joined() where root != 0 && !isHeader(root) { bad += 1 }
    guard bad == 0 else { throw .verificationFailed("\(bad) references do not point at an object header") }
    let hash = GraphHash.of(heap: heap, length: heap.top) { _ in true }
    guard hash == expected else {
      throw .verificationFailed("object graph changed: expected \(expected), found \(hash)")
    }
    return hash
  }

  /// The graph hash of `heap`'s live objects per `map` (before compaction).
  public static func hash(_ heap: Heap, map: LiveMap) -> GraphHash {
    GraphHash.of(heap: heap, length: heap.top) { map.isLive($0) }
  }
}
