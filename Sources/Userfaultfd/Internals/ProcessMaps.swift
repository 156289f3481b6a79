import CUserfaultfd

/// One mapping (VMA) of this process, as /proc/self/maps describes it. Looked up without
/// allocating (the C shim streams the file through a stack buffer), so it works under memory
/// pressure and on paths that must report a failure.
struct Mapping: Sendable, Equatable {
  let start: UInt
  let end: UInt
  let isReadable: Bool
  let isWritable: Bool
  let isShared: Bool
  let isAnonymous: Bool

  /// What UFFDIO_MOVE and the atomic copy fallback need of a source: private anonymous memory.
  var isPrivateAnonymous: Bool { isAnonymous && !isShared }

  /// The mapping containing `address`, or nil when none does (or /proc is unreadable).
  static func containing(_ address: UInt) -> Mapping? {
    var vma = cuffd_vma()
    guard cuffd_vma_lookup(address, &vma) == 1 else { return nil }
    return Mapping(
      start: vma.start, end: vma.end, isReadable: vma.readable != 0, isWritable: vma.writable != 0,
      isShared: vma.shared != 0, isAnonymous: vma.anonymous != 0)
  }

  /// Whether the mapping containing `address` is KSM-mergeable (VmFlags `mg`); nil when unknown.
  static func isMergeable(_ address: UInt) -> Bool? {
    switch cuffd_vma_has_flag(address, "mg") {
    case 1: return true
    case 0: return false
    default: return nil
    }
  }
}
