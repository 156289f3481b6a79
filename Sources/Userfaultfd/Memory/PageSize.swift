import Glibc

/// A page geometry: the base page and the PMD (huge page) size. The running kernel's is
/// ``PageSize/current``; others exist for tests of boundary arithmetic (arm64 with 16 KiB pages has
/// 32 MiB PMDs).
public struct PageGeometry: Sendable, Hashable {
  /// The base page size in bytes (a power of two).
  public let base: Int
  /// The PMD size in bytes (a power of two, a multiple of `base`).
  public let huge: Int

  /// A geometry; nil unless both are powers of two with `huge` a multiple of `base`.
  public init?(base: Int, huge: Int) {
    guard base > 0, huge >= base, base & (base - 1) == 0, huge & (huge - 1) == 0 else { return nil }
    self.base = base
    self.huge = huge
  }

  fileprivate init(trusted base: Int, huge: Int) {
    self.base = base
    self.huge = huge
  }

  /// Bytes from `address` to the next `huge` boundary (a whole `huge` when aligned).
  public func bytesToHugeBoundary(from address: UInt) -> Int {
    huge - Int(address & UInt(huge - 1))
  }

  /// The length of the next step of a logical move at `address` with `remaining` bytes to go and
  /// at most `maxPages` pages per ioctl: never across a huge-page boundary of the source, so
  /// aligned huge pages move whole.
  public func stepLength(at address: UInt, remaining: Int, maxPages: Int) -> Int {
    min(remaining, maxPages * base, bytesToHugeBoundary(from: address))
  }
}

/// Page sizes userfaultfd works in.
public enum PageSize {
  /// This machine's geometry.
  public static var current: PageGeometry {
    // The kernel's values always satisfy the checks; x86_64's are the fallback.
    PageGeometry(base: base, huge: huge) ?? PageGeometry(trusted: 4096, huge: 2 << 20)
  }

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
