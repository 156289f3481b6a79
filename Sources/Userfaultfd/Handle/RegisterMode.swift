import CUserfaultfd
/// Which faults a registered range reports (`UFFDIO_REGISTER_MODE_*`).
public struct RegisterMode: OptionSet, Sendable, Hashable {
  /// The raw value, as the kernel interface spells it.
  public let rawValue: UInt64
  /// Creates a mode from the kernel's bit mask.
  public init(rawValue: UInt64) { self.rawValue = rawValue }

  /// `UFFDIO_REGISTER_MODE_MISSING`: faults on pages that are not present.
  public static let missing = RegisterMode(rawValue: CUFFD_REGISTER_MODE_MISSING)
  /// `UFFDIO_REGISTER_MODE_WP`: writes to pages write-protected with `UFFDIO_WRITEPROTECT`.
  public static let writeProtect = RegisterMode(rawValue: CUFFD_REGISTER_MODE_WP)
  /// `UFFDIO_REGISTER_MODE_MINOR`: faults on pages present in the page cache but not mapped
  /// (shmem, hugetlbfs); resolved with `UFFDIO_CONTINUE`.
  public static let minor = RegisterMode(rawValue: CUFFD_REGISTER_MODE_MINOR)
}
