import Userfaultfd
import Synchronization

/// What one mutator wrote during compaction: per word address, the value before its first write
/// and its last write.
struct MutatorLog: Sendable {
  var words: [UInt: (original: UInt64, last: UInt64)] = [:]
  var writes = 0
}

extension Compactor {
  /// A mutator: walks its own objects from its roots, reading references and writing payload
  /// words, until `done`. Touching a page not compacted yet faults into the compaction routine.
  static func mutate(heap: Heap, roots: [UInt], seed: UInt64, until done: StopFlag) -> MutatorLog {
    var log = MutatorLog()
    let live = roots.filter { $0 != 0 }
    guard !live.isEmpty else { return log }
    var random = SplitMix64(seed: seed)
    while !done.isSet {
      var address = live[Int(random.next() % UInt64(live.count))]
      for _ in 0..<16 {
        let object = heap.object(at: address)
        let size = object.sizeInWords, payload = object.payloadStart
        if payload < size {
          let word = payload + Int(random.next() % UInt64(size - payload))
          let wordAddress = address + UInt(word * ObjectLayout.wordSize)
          let value = random.next()
          let original = log.words[wordAddress]?.original ?? object.words[word]
          object.words[word] = value
          log.words[wordAddress] = (original, value)
          log.writes += 1
        }
        guard object.referenceCount > 0 else { break }
        let next = object.reference(Int(random.next() % UInt64(object.referenceCount)))
        guard next != 0 else { break }
        address = next
      }
    }
    return log
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

  static func pageHashes(_ words: [UInt64], count: Int) -> [UInt64] {
    words.withUnsafeBufferPointer { pageHashes($0, count: count) }
  }

  /// Every logged write present; with the originals put back, every page equal to the reference.
  static func verify(heap: Heap, plan: CompactionPlan, referencePages: [UInt64], logs: [MutatorLog]) throws(HeapError) -> Int {
    var writes = 0
    for log in logs {
      writes += log.writes
      for (address, values) in log.words {
        let word = heap.words + Int(address - heap.start) / ObjectLayout.wordSize
        guard word.pointee == values.last else {
          throw .verificationFailed(
            "a mutator's write at 0x\(String(address, radix: 16)) was lost (found \(word.pointee), wrote \(values.last))")
        }
        word.pointee = values.original
      }
    }
    let perPage = PageSize.base / ObjectLayout.wordSize
    let found = pageHashes(UnsafeBufferPointer(start: heap.words, count: plan.pageCount * perPage), count: plan.pageCount)
    if let page = zip(found, referencePages).enumerated().first(where: { $0.element.0 != $0.element.1 })?.offset {
      throw .verificationFailed(
        "page \(page) differs from the stop-the-world reference compaction (\(plan.pageCount) pages compacted)")
    }
    // Put the mutators' writes back: the heap is theirs.
    for log in logs {
      for (address, values) in log.words {
        (heap.words + Int(address - heap.start) / ObjectLayout.wordSize).pointee = values.last
      }
    }
    return writes
  }
}
