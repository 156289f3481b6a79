/// How a logical move (``PageMover/move(from:to:length:policy:)``) treats pages the kernel will
/// not move zero-copy.
public struct MovePolicy: Sendable, Hashable {
  /// What to do with a source page that is a hole (never touched, or already moved).
  public enum Holes: Sendable, Hashable {
    /// Stop at the first hole and report it (the kernel's ENOENT).
    case fail
    /// Skip holes: the destination page stays missing, and the report counts the hole.
    case skip
  }

  /// What to do with a source page the kernel refuses with EBUSY (not exclusively mapped).
  public enum BusyPages: Sendable, Hashable {
    /// Zero-copy only: stop at the first busy page and say why it was busy.
    case fail
    /// Copy it to the destination and remove it from the source, atomically with respect to
    /// concurrent writers (see ``PageMover``).
    case copy
  }

  /// Source holes.
  public var holes: Holes
  /// Busy source pages.
  public var busyPages: BusyPages
  /// Wake threads faulting on the destination as pages arrive (false: `DONTWAKE`, call
  /// ``Userfaultfd/wake(_:length:)`` yourself).
  public var wake: Bool
  /// Record per-page outcomes in ``MoveReport/runs`` (run-length encoded).
  public var recordPages: Bool
  /// The most pages one ioctl moves: 1 to 262,144 (``validPagesPerIoctl``; 1 GiB of 4 KiB
  /// pages). Ioctls are also cut at huge-page (PMD) boundaries of the source, so aligned
  /// transparent huge pages move as whole PMDs.
  public var maxPagesPerIoctl: Int

  /// The values ``maxPagesPerIoctl`` may take.
  public static let validPagesPerIoctl = 1...262_144
  /// Check each aligned 2 MiB step against /proc/kpageflags to count whole-PMD huge-page moves in
  /// ``MoveReport/hugePageMoves`` (two extra reads per 2 MiB; needs CAP_SYS_ADMIN, else zero).
  public var inspectHugePages: Bool
  /// Check, before anything moves, that no destination page is populated (one read of
  /// /proc/self/pagemap), so bad input leaves the source untouched.
  public var checkDestinationEmpty: Bool

  /// Creates a policy; the defaults are the kernel's strict semantics.
  public init(
    holes: Holes = .fail, busyPages: BusyPages = .fail, wake: Bool = true, recordPages: Bool = false,
    maxPagesPerIoctl: Int = PageSize.huge / PageSize.base, inspectHugePages: Bool = false,
    checkDestinationEmpty: Bool = true
  ) {
    self.inspectHugePages = inspectHugePages
    self.holes = holes
    self.busyPages = busyPages
    self.wake = wake
    self.recordPages = recordPages
    self.maxPagesPerIoctl = maxPagesPerIoctl
    self.checkDestinationEmpty = checkDestinationEmpty
  }

  /// Zero-copy only; stops at the first hole or busy page.
  public static let strict = MovePolicy()
  /// Zero-copy only; holes are skipped and reported.
  public static let allowSourceHoles = MovePolicy(holes: .skip)
  /// Zero-copy where possible; busy pages are copied atomically; holes skipped.
  public static let copyFallback = MovePolicy(holes: .skip, busyPages: .copy)
}
