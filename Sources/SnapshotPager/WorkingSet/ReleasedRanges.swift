import CUserfaultfd
import Userfaultfd

extension SnapshotServer {
  /// The most ranges one session hands back to the kernel; past it, released pages are served as
  /// zeros by the pager, one fault each (every unregistered range can split a VMA of the client,
  /// and a process has at most `vm.max_map_count` of them, 65,530 by default).
  static let maxHandedBackRanges = 1024

  /// Hands the pages of a REMOVE (`MADV_DONTNEED`, a balloon) back to the kernel: unregisters
  /// them from the userfaultfd (`UFFDIO_UNREGISTER` works on the client's memory through its
  /// userfaultfd, from this process), so the client's next touch of one is zero-filled by the
  /// kernel with no round trip to the pager (what Firecracker's handler does), and no replay or
  /// prefetch can copy snapshot data over it: a copy into an unregistered range fails with
  /// ENOENT, which the page map already knows to expect. Whole pages of each region only.
  /// Userfaultfd ranges unregistered this way stay so: a restarted pager finds them unregistered
  /// (Linux 4.3+ for UNREGISTER; REMOVE events need 4.11).
  func handBack(start: UInt, end: UInt) {
    state.withLock { serving in
      guard serving.handedBack < Self.maxHandedBackRanges else { return }
      for region in serving.map.regions where region.base < end && start < region.end {
        let size = UInt(region.pageSize)
        // Pages wholly inside the released range.
        let low = (max(start, region.base) + size - 1) / size * size
        let high = min(end, region.end) / size * size
        guard low < high else { continue }
        var range = cuffd_range(start: UInt64(low), len: UInt64(high - low))
        if cuffd_ioctl_unregister(uffd.coreDescriptor, &range) == 0 { serving.handedBack += 1 }
      }
    }
  }
}
