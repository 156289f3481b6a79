/// A working set turned into one session's pages: global page indices of its page map in recorded
/// order, and how far replay has got. Built lazily on the serving loop (the handshake never pays
/// for it).
struct ReplayQueue {
  /// The working set, until the queue is built from it.
  var source: WorkingSet?
  /// Page indices in recorded order (pages of the working set no region covers are left out).
  var pages: [Int] = []
  /// The next entry of ``pages`` to look at.
  var cursor = 0
  /// Pages taken from ``pages`` whose copy must be tried again (a REMOVE was pending).
  var retry: [Int] = []
  /// Reused for each step's pages (no allocation per step).
  var scratch: [Int] = []
  /// Pages copied by replay, pages skipped (already present or released), entries no region covers.
  var replayed = 0
  var skipped = 0
  var uncovered = 0
  /// When the session began and when replay found nothing left.
  var finishedAt: ContinuousClock.Instant?

  /// The most bytes one replay step copies (each ioctl copies at most this much): a demand fault
  /// that arrives meanwhile waits for at most one step.
  static let stepBytes = 2 << 20

  init(_ workingSet: WorkingSet) { source = workingSet }

  var isFinished: Bool { finishedAt != nil }

  /// Resolves the working set against `map` (once).
  mutating func build(against map: RestorePageMap) {
    guard let set = source else { return }
    source = nil
    // Regions by file offset, for a binary search per entry.
    let byOffset = map.regions.indices.sorted { map.regions[$0].fileOffset < map.regions[$1].fileOffset }
    pages.reserveCapacity(set.pages.count)
    var last = -1
    for entry in set.pages {
      let (offset, overflow) = entry.multipliedReportingOverflow(by: UInt64(set.granule))
      guard !overflow, offset <= UInt64(Int.max) else { uncovered += 1; continue }
      let fileOffset = Int(offset)
      var low = 0, high = byOffset.count
      while low < high {
        let middle = (low + high) / 2
        let region = map.regions[byOffset[middle]]
        if region.fileOffset + region.pageCount * region.pageSize <= fileOffset { low = middle + 1 } else { high = middle }
      }
      guard low < byOffset.count, map.regions[byOffset[low]].fileOffset <= fileOffset else { uncovered += 1; continue }
      let index = byOffset[low]
      let region = map.regions[index]
      let page = region.firstPage + (fileOffset - region.fileOffset) / region.pageSize
      if page == last { continue }  // 4 KiB entries of one huge page
      last = page
      pages.append(page)
    }
    scratch.reserveCapacity(512)
  }
}
