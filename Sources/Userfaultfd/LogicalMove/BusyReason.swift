/// Why the kernel refused to move a page zero-copy (EBUSY), found from /proc/self/pagemap and the
/// mapping's VmFlags in /proc/self/smaps.
public enum BusyReason: String, Sendable, Hashable, CustomStringConvertible {
  /// Mapped by another process too: a forked child shares it copy-on-write.
  case sharedWithForkedChild = "shared-with-forked-child"
  /// The mapping is KSM-mergeable and the page is shared: merged by KSM.
  case mergedByKSM = "merged-by-ksm"
  /// Exclusively mapped yet refused: most likely pinned (O_DIRECT, io_uring, RDMA, vfio).
  case likelyPinned = "likely-pinned"
  /// Swapped out, and the swap entry is shared.
  case swappedOut = "swapped-out"
  /// The page could not be examined.
  case unknown = "unknown"

  /// What to do about it.
  public var remedy: String {
    switch self {
    case .sharedWithForkedChild:
      return "apply MADV_DONTFORK or MADV_WIPEONFORK to the source before forking, or use the"
        + " copy-fallback policy"
    case .mergedByKSM:
      return "disable KSM on the source (MADV_UNMERGEABLE) or use the copy-fallback policy"
    case .likelyPinned:
      return "wait for the I/O that pins the page to finish, or use the copy-fallback policy"
    case .swappedOut:
      return "fault the page in first (MADV_POPULATE_WRITE) or use the copy-fallback policy"
    case .unknown:
      return "use the copy-fallback policy"
    }
  }

  public var description: String {
    switch self {
    case .sharedWithForkedChild: return "source page shared with a forked child"
    case .mergedByKSM: return "source page merged by KSM"
    case .likelyPinned: return "source page exclusively mapped but refused: likely pinned"
    case .swappedOut: return "source page swapped out and its swap entry shared"
    case .unknown: return "source page busy for an unknown reason"
    }
  }

  /// Examines the page at `address` to say why a move was refused.
  static func diagnose(_ address: UInt) -> BusyReason {
    // One 8-byte read and a streamed /proc/self/smaps: nothing allocated, since this runs after a
    // refusal and possibly under memory pressure.
    guard let map = PageMap(), let entry = map.entry(at: address) else { return .unknown }
    if entry.isSwapped { return .swappedOut }
    guard entry.isPresent else { return .unknown }
    if entry.isExclusive { return .likelyPinned }
    if Mapping.isMergeable(address) == true { return .mergedByKSM }
    return .sharedWithForkedChild
  }
}
