import Userfaultfd

/// Pages one session serves instead of the snapshot's (hypeman's per-session overlay): restore-time
/// writes of one clone, say its network identity, without touching the snapshot every clone shares.
/// Base pages (4 KiB), keyed by their offset in the snapshot file; the bytes live in one private
/// anonymous mapping the copies read from.
package final class SessionOverlay: Sendable {
  /// The most overlay pages a session may carry (16 MiB of base pages).
  package static let maxPages = 4096

  private let slots: [Int: Int]  // snapshot offset -> page slot in `memory`
  private let memory: AnonymousMemory
  /// Pages in the overlay.
  package var count: Int { slots.count }

  /// An overlay from `pages` (snapshot offset, exactly one base page of bytes each).
  ///
  /// - Throws: `UserfaultfdError.invalidArgument` for an offset that is negative or not a
  ///   multiple of the base page, a page that is not exactly one base page, a repeated offset, or
  ///   more than ``maxPages`` pages.
  package init(pages: [(offset: Int, bytes: [UInt8])]) throws(UserfaultfdError) {
    guard !pages.isEmpty, pages.count <= Self.maxPages else {
      throw .invalidArgument(.serve, .outOfRange(parameter: "overlay pages", value: pages.count, valid: 1...Self.maxPages))
    }
    var slots: [Int: Int] = [:]
    for (slot, page) in pages.enumerated() {
      guard page.offset >= 0, page.offset % PageSize.base == 0 else {
        throw .invalidArgument(.serve, .offsetMisaligned(offset: page.offset, pageSize: PageSize.base))
      }
      guard page.bytes.count == PageSize.base else {
        throw .invalidArgument(.serve, .lengthMismatch(expected: PageSize.base, actual: page.bytes.count))
      }
      guard slots.updateValue(slot, forKey: page.offset) == nil else {
        throw .invalidArgument(.serve, .badRegions("overlay page at offset \(page.offset) is given twice"))
      }
    }
    let memory = try AnonymousMemory(length: pages.count * PageSize.base)
    for (slot, page) in pages.enumerated() {
      page.bytes.withUnsafeBytes { bytes in
        if let from = bytes.baseAddress { (memory.baseAddress + slot * PageSize.base).copyMemory(from: from, byteCount: PageSize.base) }
      }
    }
    self.slots = slots
    self.memory = memory
  }

  /// The address of this session's content for the base page at snapshot offset `offset`, if any.
  func source(at offset: Int) -> UInt? {
    guard let slot = slots[offset] else { return nil }
    return Address(memory.baseAddress).rawValue + UInt(slot * PageSize.base)
  }

  /// How many of `pages` pages from snapshot offset `offset` come before the first overlay page
  /// (at least one: the caller has checked that the first is not one).
  func pagesBeforeOverlay(from offset: Int, pages: Int, pageSize: Int) -> Int {
    for index in 1..<max(pages, 1) where source(at: offset + index * pageSize) != nil { return index }
    return max(pages, 1)
  }

  /// Overlay pages must lie in base-page regions: a 2 MiB page is installed whole.
  func check(against map: RestorePageMap) throws(UserfaultfdError) {
    for offset in slots.keys {
      for region in map.regions where region.fileOffset <= offset && offset < region.fileOffset + region.pageCount * region.pageSize {
        guard region.pageSize == PageSize.base else {
          throw .invalidArgument(.serve, .badRegions(
            "overlay page at offset \(offset) falls in a region of \(region.pageSize)-byte pages; overlays are \(PageSize.base)-byte pages"))
        }
      }
    }
  }
}

/// Hears the service time of every fault a server answers (the pager's latency histogram). Called
/// on the serving thread with the server's state locked: it must be quick and must not call back
/// into the server.
package protocol FaultObserver: Sendable {
  /// One fault was answered `nanoseconds` after it was read.
  func faultServed(nanoseconds: UInt64)
}
