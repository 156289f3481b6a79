/// The address ranges a handle has registered and not unregistered, with the page size of the
/// memory behind each (4 KiB, or 2 MiB / 1 GiB for hugetlbfs): sorted, disjoint, merged where
/// the page size agrees. Kept so a fault server can resolve each fault in its memory's page size,
/// release every waiter when it stops, and refuse a resolution whose source is itself a
/// registered missing page (the kernel would fault on it inside the server's own ioctl and wait
/// for the server: a deadlock).
struct RegisteredRanges: Sendable {
  struct Range: Sendable, Equatable {
    var start: UInt
    var end: UInt
    var pageSize: Int
    /// Registered in MISSING or MINOR mode: reading a page that is not mapped there raises a
    /// userfault on this handle (write-protect mode alone does not).
    var faultsWhenMissing: Bool
  }

  private(set) var ranges: [Range] = []

  /// Records `start..<end` of memory with pages of `pageSize` bytes as registered: a registration
  /// replaces the mode of whatever part was registered before (as the kernel does), and neighbours
  /// of the same page size and kind merge.
  mutating func insert(_ start: UInt, _ end: UInt, pageSize: Int = PageSize.base, faultsWhenMissing: Bool = true) {
    remove(start, end)
    ranges.append(Range(start: start, end: end, pageSize: pageSize, faultsWhenMissing: faultsWhenMissing))
    ranges.sort { $0.start < $1.start }
    var merged: [Range] = []
    merged.reserveCapacity(ranges.count)
    for range in ranges {
      if let last = merged.last, last.end == range.start, last.pageSize == range.pageSize,
         last.faultsWhenMissing == range.faultsWhenMissing {
        merged[merged.count - 1].end = range.end
      } else {
        merged.append(range)
      }
    }
    ranges = merged
  }

  /// Removes `start..<end`, splitting ranges that straddle it.
  mutating func remove(_ start: UInt, _ end: UInt) {
    var kept: [Range] = []
    kept.reserveCapacity(ranges.count + 1)
    for range in ranges {
      if range.end <= start || range.start >= end {
        kept.append(range)
        continue
      }
      if range.start < start {
        kept.append(Range(start: range.start, end: start, pageSize: range.pageSize, faultsWhenMissing: range.faultsWhenMissing))
      }
      if range.end > end {
        kept.append(Range(start: end, end: range.end, pageSize: range.pageSize, faultsWhenMissing: range.faultsWhenMissing))
      }
    }
    ranges = kept
  }

  /// The parts of `start..<end` registered in a mode where a missing page faults (MISSING or
  /// MINOR), in address order.
  func missingFaultingParts(of start: UInt, _ end: UInt) -> [(start: UInt, end: UInt)] {
    ranges.compactMap { range in
      guard range.faultsWhenMissing, range.end > start, range.start < end else { return nil }
      return (max(range.start, start), min(range.end, end))
    }
  }

  /// The index of the registered range holding `address`, or -1. Allocation-free, and free of
  /// optionals of this file's types: the fault server's serving thread calls it, and must not be
  /// the first to use a type (the runtime allocates its metadata then).
  func index(containing address: UInt) -> Int {
    var low = 0
    var high = ranges.count
    while low < high {
      let middle = (low + high) / 2
      if ranges[middle].end <= address {
        low = middle + 1
      } else if ranges[middle].start > address {
        high = middle
      } else {
        return middle
      }
    }
    return -1
  }

  /// The page size of the registered memory at `address`; 0 when it is not registered.
  func pageSize(at address: UInt) -> Int {
    let index = index(containing: address)
    return index >= 0 ? ranges[index].pageSize : 0
  }

  /// Whether `address` lies in a registered range. Allocation-free.
  func contains(_ address: UInt) -> Bool { index(containing: address) >= 0 }

  /// Whether `address` lies in a range where a missing page faults (MISSING or MINOR mode).
  /// Allocation-free.
  func faultsWhenMissing(at address: UInt) -> Bool {
    let index = index(containing: address)
    return index >= 0 && ranges[index].faultsWhenMissing
  }
}
