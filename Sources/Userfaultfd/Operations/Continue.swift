import CUserfaultfd
import SystemPackage

extension Userfaultfd {
  /// Options for ``Userfaultfd/continue(_:length:options:)`` (`UFFDIO_CONTINUE_MODE_*`).
  public struct ContinueOptions: OptionSet, Sendable, Hashable {
    /// The raw value, as the kernel interface spells it.
    public let rawValue: UInt64
    /// Creates options from the kernel's bit mask.
    public init(rawValue: UInt64) { self.rawValue = rawValue }
    /// `UFFDIO_CONTINUE_MODE_DONTWAKE`: leave faulting threads asleep.
    public static let dontWake = ContinueOptions(rawValue: CUFFD_CONTINUE_MODE_DONTWAKE)
    /// `UFFDIO_CONTINUE_MODE_WP`: map the pages write-protected.
    public static let writeProtect = ContinueOptions(rawValue: CUFFD_CONTINUE_MODE_WP)
  }

  /// Resolves minor faults: maps the pages already in the page cache behind `length` bytes at
  /// `start` (`UFFDIO_CONTINUE`). The range is shmem or hugetlbfs memory registered in
  /// ``RegisterMode/minor`` mode.
  public func `continue`(
    _ start: UnsafeMutableRawPointer, length: Int, options: ContinueOptions = []
  ) throws(UserfaultfdError) {
    let range = try PageRange(start, length: length, role: .range, operation: .continue)
    _ = try fd(for: .continue)
    try continueCore(range.start, length: length, mode: options.rawValue).check(.continue, range: range)
  }
}
