import CUserfaultfd

/// One mapping (VMA) of this process, as /proc/self/maps describes it. Looked up without
/// allocating (the C shim streams the file through a stack buffer), so it works under memory
/// pressure and on paths that must report a failure.
struct Mapping: Sendable, Equatable {
  let start: UInt
  let end: UInt
  let isReadable: Bool
  let isWritable: Bool
  let isExecutable: Bool
  let isShared: Bool
  let isAnonymous: Bool

  /// The mapping's protection, as mmap(2) and mprotect(2) spell it.
  var protection: AnonymousMemory.Protection {
    var protection: AnonymousMemory.Protection = []
    if isReadable { protection.insert(.read) }
    if isWritable { protection.insert(.write) }
    if isExecutable { protection.insert(.execute) }
    return protection
  }

  /// What UFFDIO_MOVE and the atomic copy fallback need of a source: private anonymous memory.
  var isPrivateAnonymous: Bool { isAnonymous && !isShared }

  /// The mapping containing `address`, or nil when none does (or /proc is unreadable).
  static func containing(_ address: UInt) -> Mapping? {
    var vma = cuffd_vma()
    guard cuffd_vma_lookup(address, &vma) == 1 else { return nil }
    return Mapping(
      start: vma.start, end: vma.end, isReadable: vma.readable != 0, isWritable: vma.writable != 0,
      isExecutable: vma.executable != 0, isShared: vma.shared != 0, isAnonymous: vma.anonymous != 0)
  }

  /// Why the kernel refused to read the source of `operation` at `source` with EFAULT, when it is
  /// a mapping whose protection forbids reading; nil otherwise (unmapped, or readable).
  static func unreadableSource(_ source: UInt, for operation: Operation) -> UserfaultfdError? {
    guard let origin = containing(source), !origin.isReadable else { return nil }
    return .invalidArgument(operation, .sourceNotReadable(Address(rawValue: source), origin.protection))
  }

  /// Why UFFDIO_MOVE refused `source` -> `destination` with EINVAL, when both are private anonymous
  /// mappings whose protections it does not take (different, or not writable); nil otherwise.
  static func unfitMoveProtections(_ source: UInt, _ destination: UInt) -> UserfaultfdError? {
    guard let origin = containing(source), let target = containing(destination),
          origin.isPrivateAnonymous, target.isPrivateAnonymous,
          origin.protection != target.protection || !origin.isWritable
    else { return nil }
    return .invalidArgument(.move, .moveProtections(source: origin.protection, destination: target.protection))
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
