/// A hash of the live object graph that ignores addresses: for each live object in address order,
/// its id, payload, and the ids of its referents. Equal before and after a correct compaction.
public struct GraphHash: Sendable, Hashable, CustomStringConvertible {
  /// The hash value.
  public let value: UInt64
  /// Objects hashed.
  public let objects: Int

  /// Hashes the objects of `heap` that `isLive` accepts, walking `start ..< start + length`.
  static func of(heap: Heap, length: Int, isLive: (UInt) -> Bool) -> GraphHash {
    var hash: UInt64 = 0xCBF2_9CE4_8422_2325
    var objects = 0
    func mix(_ value: UInt64) {
      hash = (hash ^ value) &* 0x0000_0100_0000_01B3
      hash ^= hash >> 29
    }
    var offset = 0
    while offset < length {
      let address = heap.start + UInt(offset)
      let object = heap.object(at: address)
      if isLive(address) {
        objects += 1
        mix(object.id)
        for field in 0..<object.referenceCount {
          let target = object.reference(field)
          mix(target == 0 ? 0 : heap.object(at: target).id)
        }
        for index in object.payloadStart..<object.sizeInWords { mix(object.words[index]) }
      }
      offset += object.sizeInWords * ObjectLayout.wordSize
    }
    return GraphHash(value: hash, objects: objects)
  }

  public var description: String { "\(objects) objects, hash 0x\(String(value, radix: 16))" }
}
