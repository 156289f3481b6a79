import Userfaultfd

/// What a snapshot server knows about every page it serves: untouched (its content is still in the
/// snapshot only), being copied by a prefetcher (in flight), served, released by the client
/// (`MADV_DONTNEED`, a balloon: the next fault gets zeros, never stale snapshot data), or
/// zero-filled. Regions are validated once and kept sorted.
struct RestorePageMap {
  enum State: UInt8 {
    case untouched, served, released, zeroFilled
    /// Claimed by a prefetch copy running outside the session lock: no one else copies it, and a
    /// fault on it waits for that copy (which wakes the faulting thread).
    case inFlight

    /// Not resident yet and not released: untouched or in flight.
    var isPending: Bool { self == .untouched || self == .inFlight }
  }

  /// One validated region: addresses, page size and file offset as plain integers.
  struct Region {
    let base: UInt
    let end: UInt
    let pageSize: Int
    let fileOffset: Int
    /// Index of the region's first page in ``RestorePageMap/states`` (set once the regions are
    /// sorted by address).
    var firstPage = 0
    var pageCount: Int { Int((end - base) / UInt(pageSize)) }
  }

  private(set) var regions: [Region] = []
  private(set) var states: [State] = []
  /// Pages still untouched or in flight: 0 means every page is resident or released.
  private(set) var untouched = 0

  /// Validates `regions` against a snapshot of `snapshotLength` bytes: page sizes that are powers
  /// of two from the base page to 1 GiB, bases, sizes and offsets aligned to them, every region
  /// inside the snapshot and the address space, none overlapping. Checked arithmetic throughout.
  init(_ guestRegions: [GuestRegion], snapshotLength: Int) throws(UserfaultfdError) {
    guard !guestRegions.isEmpty else { throw .invalidArgument(.serve, .badRegions("the client sent no region")) }
    guard guestRegions.count <= 4096 else {
      throw .invalidArgument(.serve, .badRegions("\(guestRegions.count) regions: at most 4096 are served"))
    }
    var pages = 0
    var built: [Region] = []
    for (index, region) in guestRegions.enumerated() {
      func bad(_ why: String) -> UserfaultfdError { .invalidArgument(.serve, .badRegions("region \(index): \(why)")) }
      let page = region.effectivePageSize
      guard page >= UInt64(PageSize.base), page <= 1 << 30, page & (page - 1) == 0 else {
        throw bad("page size \(page) is not a power of two from \(PageSize.base) to 1 GiB")
      }
      guard region.size > 0, region.size % page == 0, region.baseHostVirtAddr % page == 0, region.offset % page == 0 else {
        throw bad("base 0x\(String(region.baseHostVirtAddr, radix: 16)), size \(region.size) and offset \(region.offset) must be positive multiples of the page size \(page)")
      }
      let (fileEnd, fileOverflow) = region.offset.addingReportingOverflow(region.size)
      guard !fileOverflow, fileEnd <= UInt64(snapshotLength) else {
        throw bad("bytes \(region.offset)..<\(fileOverflow ? UInt64.max : fileEnd) are beyond the \(snapshotLength)-byte snapshot")
      }
      let (end, overflow) = region.baseHostVirtAddr.addingReportingOverflow(region.size)
      guard !overflow, end <= UInt64(UInt.max) else { throw bad("wraps past the end of the address space") }
      let count = Int(region.size / page)
      built.append(Region(
        base: UInt(region.baseHostVirtAddr), end: UInt(end), pageSize: Int(page), fileOffset: Int(region.offset)))
      pages += count
      guard pages <= 1 << 28 else { throw bad("more than 2^28 pages in all") }
    }
    built.sort { $0.base < $1.base }
    // Page indices follow the sorted order.
    var first = 0
    for index in built.indices {
      built[index].firstPage = first
      first += built[index].pageCount
    }
    regions = built
    for (previous, next) in zip(regions, regions.dropFirst()) where next.base < previous.end {
      throw .invalidArgument(.serve, .badRegions("regions at 0x\(String(previous.base, radix: 16)) and 0x\(String(next.base, radix: 16)) overlap"))
    }
    states = [State](repeating: .untouched, count: pages)
    untouched = pages
  }

  /// The region holding `address` (an index into ``regions``), by binary search.
  func region(containing address: UInt) -> Int? {
    var low = 0, high = regions.count
    while low < high {
      let middle = (low + high) / 2
      if regions[middle].end <= address { low = middle + 1 } else { high = middle }
    }
    return low < regions.count && regions[low].base <= address ? low : nil
  }

  /// The global index of the page holding `address` in region `region`.
  func page(of address: UInt, in region: Int) -> Int {
    let r = regions[region]
    return r.firstPage + Int((address - r.base) / UInt(r.pageSize))
  }

  /// The address of global page `page` of region `region`.
  func address(ofPage page: Int, in region: Int) -> UInt {
    let r = regions[region]
    return r.base + UInt(page - r.firstPage) * UInt(r.pageSize)
  }

  /// The snapshot offset of global page `page` of region `region`.
  func fileOffset(ofPage page: Int, in region: Int) -> Int {
    let r = regions[region]
    return r.fileOffset + (page - r.firstPage) * r.pageSize
  }

  /// How many pages from `page` on (at most `limit`, within its region) are untouched.
  func untouchedRun(from page: Int, in region: Int, limit: Int) -> Int {
    let end = min(regions[region].firstPage + regions[region].pageCount, page + limit)
    var next = page
    while next < end && states[next] == .untouched { next += 1 }
    return next - page
  }

  mutating func mark(_ pages: Range<Int>, _ state: State) {
    let pending = state.isPending
    for page in pages {
      let was = states[page].isPending
      if was != pending { untouched += pending ? 1 : -1 }
      states[page] = state
    }
  }

  /// Settles the pages of `pages` still in flight to `state` (a prefetch copy's end); a page
  /// that changed meanwhile keeps its state.
  mutating func settle(_ pages: Range<Int>, _ state: State) {
    for page in pages where states[page] == .inFlight { mark(page..<(page + 1), state) }
  }

  /// Marks every page overlapping `start ..< end` released; returns how many were.
  mutating func release(start: UInt, end: UInt) -> Int {
    guard start < end else { return 0 }
    var released = 0
    for (index, region) in regions.enumerated() where region.base < end && start < region.end {
      let low = max(start, region.base), high = min(end, region.end)
      let first = page(of: low, in: index)
      let last = page(of: high - 1, in: index)
      mark(first..<(last + 1), .released)
      released += last + 1 - first
    }
    return released
  }
}
