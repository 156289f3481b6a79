/// One session's recording: the snapshot pages its faults brought in, in first-touch order, and
/// the detector that says when the restore has settled. Lives in the server's serving state: a
/// fault appends to it under the lock it already holds (no system call, no search; the array's
/// capacity is reserved up front, so an append allocates only past it).
struct AccessTrace {
  /// Snapshot offsets divided by ``granule``, first touched first.
  private(set) var pages: [UInt64] = []
  let granule: Int
  var detector: SettleDetector
  /// When recording stopped: the trace is complete and taken (or about to be).
  var stopped = false

  init(detector: SettleDetector, expectedPages: Int, granule: Int = WorkingSet.defaultGranule) {
    self.detector = detector
    self.granule = granule
    pages.reserveCapacity(min(max(expectedPages, 256), 1 << 18))
  }

  /// Notes `count` pages of `pageSize` bytes from snapshot offset `fileOffset` brought in by a fault.
  mutating func record(fileOffset: Int, pages count: Int, pageSize: Int, at now: ContinuousClock.Instant) {
    guard !stopped, count > 0, pages.count + count <= WorkingSet.maxPages else { return }
    let first = UInt64(fileOffset / granule)
    let step = UInt64(max(1, pageSize / granule))
    for index in 0..<UInt64(count) { pages.append(first + index * step) }
    detector.observe(newPages: count, at: now)
  }

  /// Stops recording; the pages recorded (the trace keeps none).
  mutating func finish() -> [UInt64] {
    stopped = true
    defer { pages = [] }
    return pages
  }
}
