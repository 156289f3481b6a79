import CUserfaultfd
import SystemPackage

extension Userfaultfd {
  /// Options for ``Userfaultfd/copy(from:to:length:options:)`` (`UFFDIO_COPY_MODE_*`).
  public struct CopyOptions: OptionSet, Sendable, Hashable {
    /// The raw value, as the kernel interface spells it.
    public let rawValue: UInt64
    /// Creates options from the kernel's bit mask.
    public init(rawValue: UInt64) { self.rawValue = rawValue }
    /// `UFFDIO_COPY_MODE_DONTWAKE`: leave faulting threads asleep.
    public static let dontWake = CopyOptions(rawValue: CUFFD_COPY_MODE_DONTWAKE)
    /// `UFFDIO_COPY_MODE_WP`: map the new pages write-protected (range registered in WP mode).
    public static let writeProtect = CopyOptions(rawValue: CUFFD_COPY_MODE_WP)
  }

  /// Fills `length` bytes of missing pages at `destination` with a copy of `source`
  /// (`UFFDIO_COPY`). `source` may be any readable memory, registered or not.
  ///
  /// - Throws: `operationFailed` with `bytesDone` the bytes copied before the failure; EEXIST
  ///   when a destination page is already present.
  public func copy(
    from source: UnsafeRawPointer, to destination: UnsafeMutableRawPointer, length: Int,
    options: CopyOptions = []
  ) throws(UserfaultfdError) {
    let (origin, target) = try PageRange.pair(
      source: source, destination: destination, length: length, operation: .copy)
    _ = try fd(for: .copy)
    try copyCore(target.start, from: origin.start, length: length, mode: options.rawValue)
      .check(.copy, range: target, source: origin.start)
  }
}
