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

  /// The transparent-huge-page (PMD) size, from the kernel
  /// (`/sys/kernel/mm/transparent_hugepage/hpage_pmd_size`), else what one page of 8-byte page-table
  /// entries maps: 2 MiB on x86_64 and on arm64 with 4 KiB pages, 32 MiB with 16 KiB pages. Ranges
  /// aligned to it can move as whole huge pages.
  public static let huge: Int = {
    if let text = readSmallFile("/sys/kernel/mm/transparent_hugepage/hpage_pmd_size"),
       let size = Int(text.filter { !$0.isWhitespace }), size >= base, size & (size - 1) == 0 {
      return size
    }
    return base / 8 * base
  }()
}
