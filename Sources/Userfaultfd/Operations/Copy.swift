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
  /// (`UFFDIO_COPY`). `source` may be any readable memory, registered or not, except a page that
  /// is missing in a range registered with this same handle in MISSING or MINOR mode: the kernel's
  /// read of it would raise a userfault on this handle and the call would wait for its resolution,
  /// so such a source is refused before the ioctl (a page another thread drops after that check
  /// can still make the call wait until this handle's fault handler fills it).
  ///
  /// - Throws: ``UserfaultfdError/invalidArgument(_:_:)`` for a bad range or
  ///   ``InvalidArgument/sourceIsMissingRegisteredPage(_:)`` (nothing copied); `operationFailed`
  ///   with `bytesDone` the bytes copied before the failure: EEXIST when a destination page is
  ///   already present, EFAULT when the source is not mapped (or, after some progress, not
  ///   readable); ``InvalidArgument/sourceNotReadable(_:_:)`` when the first source page's
  ///   protection forbids reading it (nothing copied).
  public func copy(
    from source: UnsafeRawPointer, to destination: UnsafeMutableRawPointer, length: Int,
    options: CopyOptions = []
  ) throws(UserfaultfdError) {
    let (origin, target) = try PageRange.pair(
      source: source, destination: destination, length: length, operation: .copy)
    _ = try fd(for: .copy)
    // The kernel reads the source only for a destination registered with this handle; anything
    // else it refuses before reading.
    if registeredPageSize(at: target.start) != nil { try requireNoMissingRegisteredPage(in: origin, for: .copy) }
    let answer = copyCore(target.start, from: origin.start, length: length, mode: options.rawValue)
    if answer.errno == .badAddress, answer.bytesDone == 0, let refusal = Mapping.unreadableSource(origin.start, for: .copy) {
      throw refusal
    }
    try answer.check(.copy, range: target, source: origin.start)
  }
}
