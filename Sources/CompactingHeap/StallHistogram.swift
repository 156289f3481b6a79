import Synchronization

/// How long mutators were stalled by faults in one cycle: each fault's service time, recorded
/// from SIGBUS handlers and the fault-server thread alike. Fixed log-linear buckets of raw
/// atomics (HdrHistogram's layout: a power-of-two bucket, then 16 linear sub-buckets, so any
/// value is kept within 1/16 of itself), because a signal handler can neither allocate nor lock.
struct StallHistogram: @unchecked Sendable {
  // @unchecked: a pointer to atomics CompactionResources owns for the cycle.
  static var subBucketBits: Int { 4 }
  static var subBuckets: Int { 1 << subBucketBits }
  /// Powers of two covered: up to 2^40 ns, about 18 minutes.
  static var buckets: Int { 40 }
  /// Atomics needed: the buckets, the total, and the maximum.
  static var slotCount: Int { buckets * subBuckets + 2 }

  let slots: UnsafeMutablePointer<Atomic<Int>>

  private var totalSlot: Int { Self.buckets * Self.subBuckets }
  private var maxSlot: Int { totalSlot + 1 }

  /// The slot of `nanoseconds`: values below 16 exactly, above that by their top 5 bits.
  @inline(__always)
  static func slot(of nanoseconds: Int) -> Int {
    let value = max(nanoseconds, 0)
    guard value >= subBuckets else { return value }
    let magnitude = Int.bitWidth - 1 - value.leadingZeroBitCount  // >= subBucketBits
    let bucket = min(magnitude - subBucketBits + 1, buckets - 1)
    let sub = (value >> (magnitude - subBucketBits)) & (subBuckets - 1)
    return bucket * subBuckets + sub
  }

  /// The largest value slot `slot` holds.
  static func upperBound(of slot: Int) -> Int {
    let bucket = slot / subBuckets, sub = slot % subBuckets
    guard bucket > 0 else { return sub }
    let magnitude = bucket + subBucketBits - 1
    return ((subBuckets + sub + 1) << (magnitude - subBucketBits)) - 1
  }

  /// Records one stall. Async-signal-safe.
  @inline(__always)
  func record(nanoseconds: Int) {
    slots[Self.slot(of: nanoseconds)].wrappingAdd(1, ordering: .relaxed)
    slots[totalSlot].wrappingAdd(max(nanoseconds, 0), ordering: .relaxed)
    var seen = slots[maxSlot].load(ordering: .relaxed)
    while nanoseconds > seen {
      let (exchanged, current) = slots[maxSlot].compareExchange(expected: seen, desired: nanoseconds, ordering: .relaxed)
      if exchanged { break }
      seen = current
    }
  }

  /// Stalls recorded.
  var count: Int { (0..<totalSlot).reduce(0) { $0 + slots[$1].load(ordering: .relaxed) } }
  /// Their sum.
  var totalNanoseconds: Int { slots[totalSlot].load(ordering: .relaxed) }
  /// The longest.
  var maxNanoseconds: Int { slots[maxSlot].load(ordering: .relaxed) }

  /// Stall counts in `buckets` powers of two of microseconds (see
  /// ``MutatorStall/countsByPowerOfTwoMicroseconds``), each slot placed by its upper bound.
  func countsByPowerOfTwoMicroseconds(buckets: Int) -> [Int] {
    var counts = Array(repeating: 0, count: buckets)
    for slot in 0..<totalSlot {
      let stalls = slots[slot].load(ordering: .relaxed)
      guard stalls > 0 else { continue }
      let microseconds = Self.upperBound(of: slot) / 1000
      let bucket = microseconds > 0 ? Int.bitWidth - 1 - microseconds.leadingZeroBitCount : 0
      counts[min(bucket, buckets - 1)] += stalls
    }
    return counts
  }

  /// The value at `percentile` (0-100): the upper bound of the bucket it falls in; 0 with none.
  func nanoseconds(atPercentile percentile: Double) -> Int {
    let total = count
    guard total > 0 else { return 0 }
    let rank = max(1, Int((percentile / 100 * Double(total)).rounded(.up)))
    var seen = 0
    for slot in 0..<totalSlot {
      seen += slots[slot].load(ordering: .relaxed)
      if seen >= rank { return min(Self.upperBound(of: slot), maxNanoseconds) }
    }
    return maxNanoseconds
  }
}
