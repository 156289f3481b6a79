import CUserfaultfd
import SystemPackage

extension Userfaultfd {
  /// Options for ``Userfaultfd/zeroPage(_:length:options:)`` (`UFFDIO_ZEROPAGE_MODE_*`).
  public struct ZeroPageOptions: OptionSet, Sendable, Hashable {
    /// The raw value, as the kernel interface spells it.
    public let rawValue: UInt64
    /// Creates options from the kernel's bit mask.
    public init(rawValue: UInt64) { self.rawValue = rawValue }
    /// `UFFDIO_ZEROPAGE_MODE_DONTWAKE`: leave faulting threads asleep.
    public static let dontWake = ZeroPageOptions(rawValue: CUFFD_ZEROPAGE_MODE_DONTWAKE)
  }

  /// Maps the shared zero page at `length` bytes of missing pages at `start` (`UFFDIO_ZEROPAGE`).
  /// A later write faults again (into an ordinary anonymous page, not back to this userfaultfd).
  public func zeroPage(
    _ start: UnsafeMutableRawPointer, length: Int, options: ZeroPageOptions = []
  ) throws(UserfaultfdError) {
    let range = try PageRange(start, length: length, role: .range, operation: .zeroPage)
    _ = try fd(for: .zeroPage)
    try zeroPageCore(range.start, length: length, mode: options.rawValue).check(.zeroPage, range: range)
  }
}
