import CUserfaultfd
/// An event read from a userfaultfd (`struct uffd_msg`).
public enum Event: Sendable {
  /// A thread touched a registered page (`UFFD_EVENT_PAGEFAULT`). It sleeps until the page is
  /// resolved and woken.
  case pageFault(PageFault)
  /// The process forked (`UFFD_EVENT_FORK`, feature ``Features/eventFork``); the handle serves
  /// the child's copy of the registered ranges. The forking thread waits until this is read.
  case fork(child: Userfaultfd)
  /// A registered range was moved by mremap (`UFFD_EVENT_REMAP`, ``Features/eventRemap``).
  case remap(from: Address, to: Address, length: Int)
  /// Pages in `start..<end` were dropped by MADV_DONTNEED / MADV_REMOVE (`UFFD_EVENT_REMOVE`,
  /// ``Features/eventRemove``); range operations there fail with EAGAIN until this is read.
  case remove(start: Address, end: Address)
  /// `start..<end` was unmapped (`UFFD_EVENT_UNMAP`, ``Features/eventUnmap``).
  case unmap(start: Address, end: Address)
  /// An event code this package does not know (a newer kernel).
  case unrecognized(code: UInt8)
}

/// A page fault: where, and what kind.
public struct PageFault: Sendable, Hashable {
  /// The faulting address, rounded down to the page unless ``Features/exactAddress`` is on.
  public let address: Address
  /// What kind of fault.
  public let flags: Flags
  /// The faulting thread's id, when ``Features/threadID`` was negotiated.
  public let threadID: Int32?

  /// Creates a page-fault record.
  public init(address: Address, flags: Flags, threadID: Int32?) {
    self.address = address
    self.flags = flags
    self.threadID = threadID
  }

  /// The page containing ``address``.
  public var pageAddress: Address { address.roundedDown() }

  /// Page-fault flags (`UFFD_PAGEFAULT_FLAG_*`).
  public struct Flags: OptionSet, Sendable, Hashable {
    /// The raw value, as the kernel interface spells it.
    public let rawValue: UInt64
    /// Creates flags from the kernel's bit mask.
    public init(rawValue: UInt64) { self.rawValue = rawValue }
    /// `UFFD_PAGEFAULT_FLAG_WRITE`: the access was a write.
    public static let write = Flags(rawValue: CUFFD_PAGEFAULT_FLAG_WRITE)
    /// `UFFD_PAGEFAULT_FLAG_WP`: a write to a write-protected page.
    public static let writeProtect = Flags(rawValue: CUFFD_PAGEFAULT_FLAG_WP)
    /// `UFFD_PAGEFAULT_FLAG_MINOR`: a minor fault (page cache has the page, no mapping).
    public static let minor = Flags(rawValue: CUFFD_PAGEFAULT_FLAG_MINOR)
  }
}
