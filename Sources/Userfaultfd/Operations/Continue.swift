import CUserfaultfd
import SystemPackage

extension Userfaultfd {
  /// Options for ``Userfaultfd/continue(_:length:options:)`` (`UFFDIO_CONTINUE_MODE_*`).
  public struct ContinueOptions: OptionSet, Sendable, Hashable {
    public let rawValue: UInt64
    /// Creates options from the kernel's bit mask.
    public init(rawValue: UInt64) { self.rawValue = rawValue }
    /// `UFFDIO_CONTINUE_MODE_DONTWAKE`: leave faulting threads asleep.
    public static let dontWake = ContinueOptions(rawValue: 1 << 0)
    /// `UFFDIO_CONTINUE_MODE_WP`: map the pages write-protected.
    public static let writeProtect = ContinueOptions(rawValue: 1 << 1)
  }

  /// Resolves minor faults: maps the pages already in the page cache behind `length` bytes at
  /// `start` (`UFFDIO_CONTINUE`). The range is shmem or hugetlbfs memory registered in
  /// ``RegisterMode/minor`` mode.
  public func `continue`(
    _ start: UnsafeMutableRawPointer, length: Int, options: ContinueOptions = []
  ) throws(UserfaultfdError) {
    let range = try PageRange(start, length: length, role: "range", operation: .continue)
    let fd = try fd(for: .continue)
    var arg = cuffd_continue(
      range: cuffd_range(start: UInt64(range.start), len: UInt64(length)),
      mode: options.rawValue, mapped: 0)
    let result = cuffd_ioctl_continue(fd, &arg)
    try checkProgress(result, errno: Errno.current, reported: arg.mapped, operation: .continue,
                      range: range)
  }
}
