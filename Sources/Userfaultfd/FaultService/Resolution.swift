/// How a ``FaultServer`` resolves one page fault.
public enum Resolution: Sendable, Hashable {
  /// Copy one page from `source` into the faulting page (UFFDIO_COPY).
  case copy(from: Address)
  /// Move one page from `source` into the faulting page, zero-copy (UFFDIO_MOVE).
  case move(from: Address)
  /// Map the zero page (UFFDIO_ZEROPAGE).
  case zeroPage
  /// Map the page-cache page of a minor fault (UFFDIO_CONTINUE).
  case continueMapping
  /// Someone else mapped it: just wake the waiting threads (UFFDIO_WAKE).
  case wake
  /// Not now: ask again on the server's next round (the faulting thread keeps waiting).
  case later
}
