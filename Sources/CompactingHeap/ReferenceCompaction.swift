/// Stop-the-world compaction into a separate image: the reference a concurrent compaction's
/// result must equal byte for byte, and the simplest correct compactor.
public enum ReferenceCompaction {
  /// Builds the compacted image of `heap` (live objects slid to the start, references rewritten)
  /// in a new buffer of `map.liveBytes` bytes, and the roots rewritten.
  public static func image(of heap: Heap, map: LiveMap) -> (words: [UInt64], roots: [[UInt]]) {
    var image = [UInt64](repeating: 0, count: map.liveBytes / ObjectLayout.wordSize)
    image.withUnsafeMutableBufferPointer { out in
      guard let base = out.baseAddress else { return }
      heap.forEachObject { address in
        guard map.isLive(address) else { return }
        let object = heap.object(at: address)
        let target = ObjectView(words: base + Int(map.newAddress(address) - heap.start) / ObjectLayout.wordSize)
        target.words.update(from: object.words, count: object.sizeInWords)
        for field in 0..<object.referenceCount {
          let reference = object.reference(field)
          target.setReference(field, to: reference == 0 ? 0 : map.newAddress(reference))
        }
      }
    }
    let roots = heap.roots.map { $0.map { $0 == 0 ? 0 : map.newAddress($0) } }
    return (image, roots)
  }

  /// Compacts `heap` in place, stop-the-world: writes the image over the heap, zeroes the tail,
  /// and rewrites the roots.
  public static func compactInPlace(_ heap: Heap) -> LiveMap {
    let map = LiveMap(marking: heap)
    let (image, roots) = self.image(of: heap, map: map)
    image.withUnsafeBufferPointer { source in
      if let base = source.baseAddress { heap.words.update(from: base, count: source.count) }
    }
    (heap.words + image.count).update(repeating: 0, count: heap.top / ObjectLayout.wordSize - image.count)
    heap.top = map.liveBytes
    heap.roots = roots
    return map
  }
}
