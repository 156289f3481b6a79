/// Checks a compacted heap: dense, increasing addresses; every reference at a valid header; the
/// graph hash as before.
public enum Verification {
  /// Throws ``HeapError/verificationFailed(_:)`` saying what is wrong, or returns the hash.
  public static func check(_ heap: Heap, expected: GraphHash) throws(HeapError) -> GraphHash {
    var headers = Set<UInt>()
    var offset = 0
    while offset < heap.top {
      let object = heap.object(at: heap.start + UInt(offset))
      guard object.sizeInWords >= ObjectLayout.headerWords + object.referenceCount, object.id != 0 else {
        throw .verificationFailed("no valid object header at offset \(offset): the heap is not densely packed")
      }
      headers.insert(heap.start + UInt(offset))
      offset += object.sizeInWords * ObjectLayout.wordSize
    }
    guard offset == heap.top else {
      throw .verificationFailed("objects end at offset \(offset), not at the heap top \(heap.top)")
    }
    var bad = 0
    heap.forEachObject { address in
      let object = heap.object(at: address)
      for field in 0..<object.referenceCount where object.reference(field) != 0 {
        if !headers.contains(object.reference(field)) { bad += 1 }
      }
    }
    for root in heap.roots.joined() where root != 0 && !headers.contains(root) { bad += 1 }
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
