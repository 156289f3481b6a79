import Glibc

/// Reads `/proc/self/pagemap`: one 64-bit entry per virtual page (Documentation/admin-guide/mm/
/// pagemap.rst). Reading never faults pages in, so it is safe on registered ranges.
struct PageMap: ~Copyable {
  /// One page's entry.
  struct Entry: Equatable {
    let raw: UInt64
    /// Bit 63: a page is mapped.
    var isPresent: Bool { raw & (1 << 63) != 0 }
    /// Bit 62: the page is swapped out.
    var isSwapped: Bool { raw & (1 << 62) != 0 }
    /// Bit 55: the page was written since the process's soft-dirty bits were last cleared
    /// (`CONFIG_MEM_SOFT_DIRTY`; always clear on kernels built without it).
    var isSoftDirty: Bool { raw & (1 << 55) != 0 }
    /// Bit 56: the page is mapped by this process only.
    var isExclusive: Bool { raw & (1 << 56) != 0 }
    /// Neither present nor swapped: a hole.
    var isHole: Bool { !isPresent && !isSwapped }
    /// Bits 0-54: the page frame number (zero unless CAP_SYS_ADMIN).
    var frame: UInt64 { raw & ((1 << 55) - 1) }
  }

  private let fd: Int32

  /// Opens the pagemap, or nil when /proc is unavailable.
  init?() {
    let fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return nil }
    self.fd = fd
  }

  deinit { _ = close(fd) }

  /// The entry of the one page at `address`, read without allocating; nil on a read error.
  func entry(at address: UInt) -> Entry? {
    var raw: UInt64 = 0
    let offset = off_t(address / UInt(PageSize.base)) * 8
    guard pread(fd, &raw, 8, offset) == 8 else { return nil }
    return Entry(raw: raw)
  }

  /// The entries for `count` pages starting at `address` (page-aligned), or nil on a read error.
  /// Read straight into the array's storage: this runs once per logical move, over every page.
  func entries(at address: UInt, count: Int) -> [Entry]? {
    guard count > 0 else { return [] }
    let offset = off_t(address / UInt(PageSize.base)) * 8
    let wanted = count * MemoryLayout<Entry>.stride
    var complete = false
    let entries = [Entry](unsafeUninitializedCapacity: count) { buffer, initialized in
      let raw = UnsafeMutableRawBufferPointer(buffer)
      var done = 0
      while done < wanted, let base = raw.baseAddress {
        let n = pread(fd, base + done, wanted - done, offset + off_t(done))
        if n < 0 && errno == EINTR { continue }
        if n <= 0 { break }
        done += n
      }
      complete = done == wanted
      if !complete { raw.initializeMemory(as: UInt8.self, repeating: 0) }
      initialized = count
    }
    return complete ? entries : nil
  }

  /// Whether the page frame `frame` is part of a transparent huge page (`/proc/kpageflags` bit 22,
  /// KPF_THP). Nil when kpageflags is unreadable (it needs CAP_SYS_ADMIN).
  static func isTransparentHugePage(frame: UInt64) -> Bool? {
    guard frame != 0 else { return nil }
    let fd = open("/proc/kpageflags", O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return nil }
    defer { _ = close(fd) }
    var flags: UInt64 = 0
    guard pread(fd, &flags, 8, off_t(frame) * 8) == 8 else { return nil }
    return flags & (1 << 22) != 0
  }
}
