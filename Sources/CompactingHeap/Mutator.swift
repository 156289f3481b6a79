import Synchronization

/// What one mutator wrote during compaction: per word, the value before its first write and its
/// last write. A fixed-capacity open-addressing table allocated and touched before the cycle, so
/// logging neither allocates while pages fault nor counts against the cycle's peak RSS.
final class WriteLog: @unchecked Sendable {
  // @unchecked: a log is written by its one mutator thread during the cycle and read by the
  // verifying thread after that thread has been joined.
  struct Entry {
    var address: UInt  // 0: empty slot
    var original: UInt64
    var last: UInt64
  }

  /// Slots (a power of two); at most half are used.
  let capacity: Int
  private let entries: UnsafeMutablePointer<Entry>
  /// Distinct words written.
  private(set) var count = 0
  /// Writes made.
  private(set) var writes = 0

  init(capacity: Int) {
    var slots = 1
    while slots < Swift.max(capacity, 2) { slots <<= 1 }
    self.capacity = slots
    entries = .allocate(capacity: slots)
    entries.initialize(repeating: Entry(address: 0, original: 0, last: 0), count: slots)
  }

  deinit { entries.deallocate() }

  /// Whether new words can still be logged.
  var hasRoom: Bool { count * 2 < capacity }

  private func slot(for address: UInt) -> Int {
    var slot = Int(truncatingIfNeeded: (UInt64(address) &* SplitMix64.golden) &>> 20) & (capacity - 1)
    while entries[slot].address != 0 && entries[slot].address != address { slot = (slot + 1) & (capacity - 1) }
    return slot
  }

  /// Writes `value` to the heap word at `address` and logs it; when the table is full and the word
  /// is new, writes to an already-logged word picked by `pick` instead, so every write is logged.
  func write(_ value: UInt64, at address: UInt, pick: UInt64) {
    var slot = slot(for: address)
    if entries[slot].address == 0 {
      if hasRoom {
        let word = UnsafeMutablePointer<UInt64>(bitPattern: address)
        entries[slot] = Entry(address: address, original: word?.pointee ?? 0, last: value)
        count += 1
      } else {
        slot = Int(truncatingIfNeeded: pick) & (capacity - 1)
        while entries[slot].address == 0 { slot = (slot + 1) & (capacity - 1) }
      }
    }
    UnsafeMutablePointer<UInt64>(bitPattern: entries[slot].address)?.pointee = value
    entries[slot].last = value
    writes += 1
  }

  /// Calls `body` with every logged word.
  func forEach(_ body: (Entry) throws(HeapError) -> Void) throws(HeapError) {
    for slot in 0..<capacity where entries[slot].address != 0 { try body(entries[slot]) }
  }
}

/// Tells the mutators the concurrent phase is over.
final class StopFlag: Sendable {
  private let flag = Atomic<Bool>(false)
  func set() { flag.store(true, ordering: .releasing) }
  var isSet: Bool { flag.load(ordering: .acquiring) }
}

/// A mutator: walks its own objects from its roots, reading references and writing payload words,
/// until told to stop. Touching a page not compacted yet faults into the compaction routine.
enum Mutator {
  static func run(heap: Heap, roots: [UInt], seed: UInt64, log: WriteLog, idle: Bool, until done: StopFlag) {
    if idle {
      // Busy on another CPU without touching the heap: TLB flushes still interrupt it.
      while !done.isSet {}
      return
    }
    let live = roots.filter { $0 != 0 }
    guard !live.isEmpty else { return }
    let words = heap.words, start = heap.start
    var random = SplitMix64(seed: seed)
    repeat {  // At least one walk, however short the cycle.
      var address = live[Int(random.next() % UInt64(live.count))]
      for _ in 0..<16 {
        let object = ObjectView(words: words + Int(address - start) / ObjectLayout.wordSize)
        let size = object.sizeInWords, payload = object.payloadStart
        if payload < size {
          let word = payload + Int(random.next() % UInt64(size - payload))
          log.write(random.next(), at: address + UInt(word * ObjectLayout.wordSize), pick: random.next())
        }
        guard object.referenceCount > 0 else { break }
        let next = object.reference(Int(random.next() % UInt64(object.referenceCount)))
        guard next != 0 else { break }
        address = next
      }
    } while !done.isSet
  }
}
