#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// Page sizes userfaultfd works in.
public enum PageSize {
  /// The base page size (`sysconf(_SC_PAGESIZE)`, 4 KiB on x86_64). Every range passed to a
  /// userfaultfd operation is a multiple of it and aligned to it.
  public static let base: Int = Int(sysconf(Int32(_SC_PAGESIZE)))

  /// `base - 1`: the offset bits within a page.
  static let mask: UInt = UInt(base - 1)

  /// The transparent-huge-page (PMD) size: 2 MiB on x86_64 and on arm64 with 4 KiB pages. Ranges
  /// aligned to it can move as whole huge pages.
  public static let huge: Int = 2 << 20
}
