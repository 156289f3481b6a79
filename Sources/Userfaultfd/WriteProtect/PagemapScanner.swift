import CUserfaultfd
import Glibc

/// `PAGEMAP_SCAN` on `/proc/self/pagemap` (Linux 6.7+) for a range registered with
/// `UFFD_FEATURE_WP_ASYNC`: finds the written pages and re-protects them in one walk.
///
/// Every call passes `PM_SCAN_CHECK_WPASYNC` (without it a range not registered for async tracking
/// is silently skipped, or reported all written) and follows `walk_end`, which can stop short of
/// the end although every range found was returned. Not thread-safe: its owner serialises calls.
final class PagemapScanner {
  private let fd: Int32
  /// The output vector, allocated once: a collection allocates only the result array.
  private let vector: UnsafeMutableBufferPointer<cuffd_page_region>

  /// Regions per ioctl. A full vector is fine (the walk stops there and the rest stays written
  /// for the next call); 512 x 24 bytes keeps calls few for scattered writes.
  static let vectorLength = 512

  /// Opens the pagemap of this process, or of process `pid` (which needs ptrace read access to it:
  /// root, or the same user where the ptrace scope allows).
  init(pid: Int32? = nil) throws(UserfaultfdError) {
    let path = pid.map { "/proc/\($0)/pagemap" } ?? "/proc/self/pagemap"
    let fd = try valueOrErrno(retryOnInterrupt: true) { open(path, O_RDONLY | O_CLOEXEC) }
      .get(systemCall: "open(\(path))")
    self.fd = fd
    vector = .allocate(capacity: Self.vectorLength)
    vector.initialize(repeating: cuffd_page_region(start: 0, end: 0, categories: 0))
  }

  deinit {
    _ = close(fd)
    vector.deallocate()
  }

  /// Finds the pages in `start ..< end` written since they were last protected, and protects them
  /// again (`PM_SCAN_WP_MATCHING`), page by page under the page-table lock: a write after a page
  /// was reported faults and is found next time. Returns the written runs, merged.
  func collectWritten(_ start: UInt, _ end: UInt) throws(UserfaultfdError) -> [Range<Address>] {
    var runs: [Range<Address>] = []
    try walk(start, end) { runs = $0 }
    return runs
  }

  /// Protects every page in `start ..< end` through the same walk, discarding what it reports.
  func protectAll(_ start: UInt, _ end: UInt) throws(UserfaultfdError) {
    try walk(start, end) { _ in }
  }

  private func walk(
    _ start: UInt, _ end: UInt, _ deliver: ([Range<Address>]) -> Void
  ) throws(UserfaultfdError) {
    var cursor = start
    var batch: [Range<Address>] = []
    while cursor < end {
      var arg = cuffd_pm_scan_arg(
        size: UInt64(MemoryLayout<cuffd_pm_scan_arg>.size),
        flags: CUFFD_PM_SCAN_WP_MATCHING | CUFFD_PM_SCAN_CHECK_WPASYNC,
        start: UInt64(cursor), end: UInt64(end), walk_end: 0,
        vec: UInt64(UInt(bitPattern: vector.baseAddress)), vec_len: UInt64(Self.vectorLength),
        max_pages: 0, category_inverted: 0, category_mask: CUFFD_PAGE_IS_WRITTEN,
        category_anyof_mask: 0, return_mask: CUFFD_PAGE_IS_WRITTEN)
      let found: Int32
      switch valueOrErrno(retryOnInterrupt: true, { cuffd_ioctl_pagemap_scan(fd, &arg) }) {
      case .success(let count): found = count
      case .failure(let error):
        throw .operationFailed(OperationFailure(
          operation: .pagemapScan, errno: error, destination: Address(rawValue: cursor),
          length: Int(end - cursor), bytesDone: Int(cursor - start)))
      }
      for index in 0..<Int(min(found, Int32(Self.vectorLength))) {
        let region = vector[index]
        appendRun(&batch, UInt(region.start), UInt(region.end))
      }
      let walkEnd = UInt(arg.walk_end)
      // The kernel always moves walk_end forward on success; a walk that did not is refused
      // rather than looped on.
      guard walkEnd > cursor else {
        throw .notSupported(.pagemapScan, "PAGEMAP_SCAN made no progress at \(hex(cursor)) (walk_end \(hex(walkEnd)))")
      }
      cursor = walkEnd
    }
    deliver(batch)
  }
}
