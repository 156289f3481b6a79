import CUserfaultfd
/// A set of userfaultfd ioctls, as the kernel reports them: the bit for `_UFFDIO_X` is set when
/// `UFFDIO_X` may be used (`uffdio_api.ioctls`, `uffdio_register.ioctls`).
public struct Ioctls: OptionSet, Sendable, Hashable, CustomStringConvertible {
  /// The raw value, as the kernel interface spells it.
  public let rawValue: UInt64
  /// Creates a set from the kernel's bit mask.
  public init(rawValue: UInt64) { self.rawValue = rawValue }

  /// `UFFDIO_REGISTER` (bit `_UFFDIO_REGISTER` = 0).
  public static let register = Ioctls(rawValue: 1 << UInt64(CUFFD__UFFDIO_REGISTER))
  /// `UFFDIO_UNREGISTER` (bit 1).
  public static let unregister = Ioctls(rawValue: 1 << UInt64(CUFFD__UFFDIO_UNREGISTER))
  /// `UFFDIO_WAKE` (bit 2).
  public static let wake = Ioctls(rawValue: 1 << UInt64(CUFFD__UFFDIO_WAKE))
  /// `UFFDIO_COPY` (bit 3).
  public static let copy = Ioctls(rawValue: 1 << UInt64(CUFFD__UFFDIO_COPY))
  /// `UFFDIO_ZEROPAGE` (bit 4).
  public static let zeroPage = Ioctls(rawValue: 1 << UInt64(CUFFD__UFFDIO_ZEROPAGE))
  /// `UFFDIO_MOVE` (bit 5). Reported for any non-hugetlb range: it alone does not prove MOVE
  /// works on that memory (shmem is refused with EINVAL).
  public static let move = Ioctls(rawValue: 1 << UInt64(CUFFD__UFFDIO_MOVE))
  /// `UFFDIO_WRITEPROTECT` (bit 6).
  public static let writeProtect = Ioctls(rawValue: 1 << UInt64(CUFFD__UFFDIO_WRITEPROTECT))
  /// `UFFDIO_CONTINUE` (bit 7).
  public static let `continue` = Ioctls(rawValue: 1 << UInt64(CUFFD__UFFDIO_CONTINUE))
  /// `UFFDIO_POISON` (bit 8).
  public static let poison = Ioctls(rawValue: 1 << UInt64(CUFFD__UFFDIO_POISON))
  /// `UFFDIO_API` (bit `_UFFDIO_API` = 0x3F).
  public static let api = Ioctls(rawValue: 1 << UInt64(CUFFD__UFFDIO_API))

  /// Every ioctl with its lower-case name (the C constant without `UFFDIO_`).
  public static let allNamed: [(ioctl: Ioctls, name: String)] = [
    (.register, "register"), (.unregister, "unregister"), (.wake, "wake"), (.copy, "copy"),
    (.zeroPage, "zeropage"), (.move, "move"), (.writeProtect, "writeprotect"),
    (.continue, "continue"), (.poison, "poison"), (.api, "api"),
  ]

  /// The lower-case names of the ioctls in this set.
  public var names: [String] { Self.allNamed.filter { contains($0.ioctl) }.map(\.name) }

  public var description: String { "[" + names.joined(separator: ", ") + "]" }
}
