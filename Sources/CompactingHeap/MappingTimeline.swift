/// When the to-space pages were mapped over one cycle's concurrent phase, and by whom: the GC
/// thread's runs against the mutators' faults, in equal time bins from the phase's start (when
/// the mutators are released) to the last page mapped.
public struct MappingTimeline: Sendable, Hashable {
  /// The length of one bin, in nanoseconds (at least 1 µs).
  public var binNanoseconds: Int64 = 1000
  /// Pages the GC thread mapped in each bin.
  public var pagesByGC: [Int] = []
  /// Pages faulting mutators mapped in each bin.
  public var pagesByMutators: [Int] = []

  /// An empty timeline.
  public init() {}

  /// Bins the per-page records (``CompactionContext/recordMapped(_:byMutator:)``'s words) into
  /// `bins` bins.
  init(records: UnsafePointer<UInt32>, count: Int, bins: Int) {
    var latest = 0
    for index in 0..<count where records[index] != 0 { latest = max(latest, Int(records[index] >> 1) - 1) }
    let binMicroseconds = max(1, (latest + bins) / bins)
    binNanoseconds = Int64(binMicroseconds) * 1000
    pagesByGC = Array(repeating: 0, count: bins)
    pagesByMutators = Array(repeating: 0, count: bins)
    for index in 0..<count where records[index] != 0 {
      let bin = min(bins - 1, (Int(records[index] >> 1) - 1) / binMicroseconds)
      if records[index] & 1 != 0 { pagesByMutators[bin] += 1 } else { pagesByGC[bin] += 1 }
    }
  }
}
