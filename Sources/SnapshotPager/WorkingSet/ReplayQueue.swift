/// A working set being replayed into one session: its entries in recorded order and how far replay
/// has got. Entries are resolved to pages of the session's page map as replay reaches them (a
/// binary search each), so neither the handshake nor the first fault waits for the whole set.
struct ReplayQueue {
  /// The working set.
  let source: WorkingSet
  /// The next entry of the working set to look at.
  var cursor = 0
  /// The last page taken (consecutive 4 KiB entries of one huge page resolve to one page).
  var lastPage = -1
  /// Pages taken whose copy must be tried again (a REMOVE was pending).
  var retry: [Int] = []
  /// Reused for each step's pages (no allocation per step).
  var scratch: [Int] = []
  /// Regions by snapshot offset, for the entries' lookups (built on the first step).
  var byOffset: [Int]?
  /// Pages copied by replay, pages skipped (already present or released), entries no region covers.
  var replayed = 0
  var skipped = 0
  var uncovered = 0
  /// When replay found nothing left.
  var finishedAt: ContinuousClock.Instant?

  /// The most bytes one replay step copies (each ioctl copies at most this much): a demand fault
  /// that arrives meanwhile waits for at most one step.
  static let stepBytes = 2 << 20
  /// How long after a session starts replay begins when no fault has come: a restore's first
  /// fault is served before any replay copy.
  static let startDelay = Duration.milliseconds(5)

  init(_ workingSet: WorkingSet) {
    source = workingSet
    scratch.reserveCapacity(512)
  }

  var isFinished: Bool { finishedAt != nil }

  /// The page of `map` holding entry `index` of the working set, nil when no region covers it.
  mutating func page(ofEntry index: Int, in map: RestorePageMap) -> Int? {
    if byOffset == nil {
      byOffset = map.regions.indices.sorted { map.regions[$0].fileOffset < map.regions[$1].fileOffset }
    }
    guard let byOffset else { return nil }
    let (offset, overflow) = source.pages[index].multipliedReportingOverflow(by: UInt64(source.granule))
    guard !overflow, offset <= UInt64(Int.max) else { return nil }
    let fileOffset = Int(offset)
    var low = 0, high = byOffset.count
    while low < high {
      let middle = (low + high) / 2
      let region = map.regions[byOffset[middle]]
      if region.fileOffset + region.pageCount * region.pageSize <= fileOffset { low = middle + 1 } else { high = middle }
    }
    guard low < byOffset.count else { return nil }
    let region = map.regions[byOffset[low]]
    guard region.fileOffset <= fileOffset, fileOffset < region.fileOffset + region.pageCount * region.pageSize else { return nil }
    return region.firstPage + (fileOffset - region.fileOffset) / region.pageSize
  }
}
