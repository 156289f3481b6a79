import CUserfaultfd

extension Userfaultfd {
  /// Write-protects `length` bytes at `start` (`UFFDIO_WRITEPROTECT` with `MODE_WP`): a later
  /// write blocks and raises a write-protect fault. The range must be registered in
  /// ``RegisterMode/writeProtect`` mode.
  public func writeProtect(_ start: UnsafeMutableRawPointer, length: Int) throws(UserfaultfdError) {
    try setWriteProtection(start, length: length, mode: CUFFD_WRITEPROTECT_MODE_WP)
  }

  /// Removes write protection from `length` bytes at `start` (`UFFDIO_WRITEPROTECT` without
  /// `MODE_WP`), and wakes the writers blocked on it unless `wake` is false
  /// (`MODE_DONTWAKE`).
  public func removeWriteProtection(
    _ start: UnsafeMutableRawPointer, length: Int, wake: Bool = true
  ) throws(UserfaultfdError) {
    try setWriteProtection(start, length: length, mode: wake ? 0 : CUFFD_WRITEPROTECT_MODE_DONTWAKE)
  }

  private func setWriteProtection(
    _ start: UnsafeMutableRawPointer, length: Int, mode: UInt64
  ) throws(UserfaultfdError) {
    let range = try PageRange(start, length: length, role: .range, operation: .writeProtect)
    let fd = try fd(for: .writeProtect)
    var arg = cuffd_writeprotect(
      range: cuffd_range(start: UInt64(range.start), len: UInt64(length)), mode: mode)
    try check(valueOrErrno(retryOnInterrupt: true) { cuffd_ioctl_writeprotect(fd, &arg) },
              operation: .writeProtect, range: range)
  }
}
