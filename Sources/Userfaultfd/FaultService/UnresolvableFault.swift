/// What fault service does with a fault it cannot fill: the resolver's answer failed (a source
/// that is a hole, unmapped, shared with a forked child, or itself a missing page), or it kept
/// failing with EAGAIN. Never a silent retry loop: the faulting thread would spin forever.
public enum UnresolvableFaultAction: Sendable, Hashable {
  /// Poison the page (`UFFDIO_POISON`, Linux 6.6+): the retried access raises SIGBUS, as a
  /// hardware memory error would, so the failure surfaces in the thread that needed the data.
  /// On a kernel without POISON this becomes ``zeroPage`` (decided when the server or region is
  /// set up, and reported there).
  case poison
  /// Map a zero page (`UFFDIO_ZEROPAGE`): the thread goes on, reading zeros. Choose this only
  /// when zeros are an acceptable answer for your data.
  case zeroPage

  /// This action as the running kernel can carry it out.
  package func effective(on uffd: Userfaultfd) -> UnresolvableFaultAction {
    self == .poison && !uffd.supportedFeatures.contains(.poison) ? .zeroPage : self
  }
}

/// One fault that fault service could not fill, and what it did instead.
public struct UnresolvedFault: Sendable, Hashable, CustomStringConvertible {
  /// The page that faulted.
  public let pageAddress: Address
  /// The errno of the last failed attempt (nil when the resolver itself declined).
  public let errno: Int32?
  /// What was done instead: the page was poisoned or zero-filled.
  public let action: UnresolvableFaultAction

  /// Creates a record.
  public init(pageAddress: Address, errno: Int32?, action: UnresolvableFaultAction) {
    self.pageAddress = pageAddress
    self.errno = errno
    self.action = action
  }

  public var description: String {
    let cause = errno.map { ErrnoName.of(.init(rawValue: $0)) } ?? "declined by the resolver"
    let done = action == .poison ? "poisoned (the access raises SIGBUS)" : "filled with zeros"
    return "fault at \(pageAddress) could not be resolved (\(cause)); the page was \(done)"
  }
}
