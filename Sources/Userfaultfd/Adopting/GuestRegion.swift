/// One guest memory region as a VMM describes it in Firecracker's snapshot-resume handshake: the
/// region's address in the VMM, its size, where its content starts in the snapshot file, and its
/// page size. The JSON keys are Firecracker's (`base_host_virt_addr`, `size`, `offset`,
/// `page_size`, and the deprecated `page_size_kib`).
public struct GuestRegion: Codable, Sendable, Hashable {
  /// The region's first byte in the process that owns it.
  public var baseHostVirtAddr: UInt64
  /// Bytes in the region.
  public var size: UInt64
  /// Where the region's content starts in the snapshot file.
  public var offset: UInt64
  /// The region's page size in bytes (4 KiB, or 2 MiB for hugetlbfs-backed guest memory).
  public var pageSize: UInt64?
  /// The page size in KiB (older VMMs send only this).
  public var pageSizeKib: UInt64?

  enum CodingKeys: String, CodingKey {
    case baseHostVirtAddr = "base_host_virt_addr"
    case size
    case offset
    case pageSize = "page_size"
    case pageSizeKib = "page_size_kib"
  }

  /// A region of `size` bytes at `base`, whose content is at `offset` in the snapshot.
  public init(base: Address, size: Int, offset: Int, pageSize: Int = PageSize.base) {
    baseHostVirtAddr = UInt64(base.rawValue)
    self.size = UInt64(max(size, 0))
    self.offset = UInt64(max(offset, 0))
    self.pageSize = UInt64(max(pageSize, 0))
    pageSizeKib = UInt64(max(pageSize, 0) / 1024)
  }

  /// The page size this region is served in: `page_size`, else `page_size_kib`, else the base page.
  public var effectivePageSize: UInt64 {
    if let pageSize { return pageSize }
    if let pageSizeKib { return pageSizeKib.multipliedReportingOverflow(by: 1024).overflow ? 0 : pageSizeKib * 1024 }
    return UInt64(PageSize.base)
  }

  /// The region's first byte.
  public var base: Address { Address(rawValue: UInt(truncatingIfNeeded: baseHostVirtAddr)) }
}
