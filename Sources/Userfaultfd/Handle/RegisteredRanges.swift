/// The address ranges a handle has registered and not unregistered: sorted, disjoint, merged.
/// Kept so a fault server can release every waiter when it stops, and can refuse a resolution
/// whose source is itself a registered missing page (the kernel would fault on it inside the
/// server's own ioctl and wait for the server: a deadlock).
struct RegisteredRanges: Sendable {
  private(set) var ranges: [(start: UInt, end: UInt)] = []

  /// Adds `start..<end`, merging with neighbours.
  mutating func insert(_ start: UInt, _ end: UInt) {
    var lower = start
    var upper = end
    var kept: [(start: UInt, end: UInt)] = []
    kept.reserveCapacity(ranges.count + 1)
    for range in ranges {
      if range.end < lower || range.start > upper {
        kept.append(range)
      } else {
        lower = min(lower, range.start)
        upper = max(upper, range.end)
      }
    }
    kept.append((lower, upper))
    kept.sort { $0.start < $1.start }
    ranges = kept
  }

  /// Removes `start..<end`, splitting ranges that straddle it.
  mutating func remove(_ start: UInt, _ end: UInt) {
    var kept: [(start: UInt, end: UInt)] = []
    kept.reserveCapacity(ranges.count + 1)
    for range in ranges {
      if range.end <= start || range.start >= end {
        kept.append(range)
        continue
      }
      if range.start < start { kept.append((range.start, start)) }
      if range.end > end { kept.append((end, range.end)) }
    }
    ranges = kept
  }

  /// Whether `address` lies in a registered range. Allocation-free.
  func contains(_ address: UInt) -> Bool {
    var low = 0
    var high = ranges.count
    while low < high {
      let middle = (low + high) / 2
      if ranges[middle].end <= address {
        low = middle + 1
      } else if ranges[middle].start > address {
        high = middle
      } else {
        return true
      }
    }
    return false
  }
}
