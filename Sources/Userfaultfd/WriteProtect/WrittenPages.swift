/// The pages a ``DirtyTracker`` found written since the previous collection: sorted, disjoint,
/// adjacent runs merged.
public struct WrittenPages: Sendable, Hashable {
  /// The written runs, each a whole number of the tracker's pages.
  public let ranges: [Range<Address>]
  /// The tracking granularity: the base page, or the huge page size on hugetlbfs.
  public let pageSize: Int

  /// Creates a result from sorted, disjoint runs.
  public init(ranges: [Range<Address>], pageSize: Int) {
    self.ranges = ranges
    self.pageSize = pageSize
  }

  /// How many pages were written.
  public var pageCount: Int { ranges.reduce(0) { $0 + ($1.upperBound - $1.lowerBound) / pageSize } }

  /// How many bytes were written (whole pages).
  public var byteCount: Int { pageCount * pageSize }

  /// Whether no page was written.
  public var isEmpty: Bool { ranges.isEmpty }

  /// Whether the page holding `address` was written.
  public func contains(_ address: Address) -> Bool {
    // Binary search: the runs are sorted and disjoint.
    var low = 0, high = ranges.count
    while low < high {
      let middle = (low + high) / 2
      if ranges[middle].upperBound <= address {
        low = middle + 1
      } else {
        high = middle
      }
    }
    return low < ranges.count && ranges[low].contains(address)
  }
}

/// Appends `[start, end)` to sorted `runs`, merging it with the last run when they touch.
func appendRun(_ runs: inout [Range<Address>], _ start: UInt, _ end: UInt) {
  guard start < end else { return }
  if let last = runs.last, last.upperBound.rawValue == start {
    runs[runs.count - 1] = last.lowerBound..<Address(rawValue: end)
  } else {
    runs.append(Address(rawValue: start)..<Address(rawValue: end))
  }
}
