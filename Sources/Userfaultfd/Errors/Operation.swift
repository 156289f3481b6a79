/// The userfaultfd operations, named by the ioctl that performs them.
public enum Operation: String, Sendable, Hashable, CaseIterable {
  /// Opening a userfaultfd (the `userfaultfd` syscall or `/dev/userfaultfd`).
  case open = "open"
  /// `UFFDIO_API`: the feature handshake.
  case api = "UFFDIO_API"
  /// `UFFDIO_REGISTER`.
  case register = "UFFDIO_REGISTER"
  /// `UFFDIO_UNREGISTER`.
  case unregister = "UFFDIO_UNREGISTER"
  /// `UFFDIO_WAKE`.
  case wake = "UFFDIO_WAKE"
  /// `UFFDIO_COPY`.
  case copy = "UFFDIO_COPY"
  /// `UFFDIO_ZEROPAGE`.
  case zeroPage = "UFFDIO_ZEROPAGE"
  /// `UFFDIO_MOVE` (Linux 6.8+).
  case move = "UFFDIO_MOVE"
  /// `UFFDIO_WRITEPROTECT`.
  case writeProtect = "UFFDIO_WRITEPROTECT"
  /// `UFFDIO_CONTINUE`.
  case `continue` = "UFFDIO_CONTINUE"
  /// `UFFDIO_POISON` (Linux 6.6+).
  case poison = "UFFDIO_POISON"
  /// Reading events with `read(2)`.
  case readEvents = "read"
  /// Mapping, advising or protecting memory (`AnonymousMemory`).
  case memory = "memory"
  /// Sending or receiving on a Unix socket (``UnixSocket``).
  case socket = "socket"
  /// Adopting a userfaultfd another process opened.
  case adopt = "adopt"
  /// Serving another process's memory from a snapshot (the SnapshotPager module's `SnapshotServer`).
  case serve = "serve"
  /// Setting up a ``SigbusRegion`` (its range, its source, its registration).
  case sigbusRegion = "SigbusRegion"
  /// `PAGEMAP_SCAN` on `/proc/PID/pagemap` (Linux 6.7+): written pages found and re-protected.
  case pagemapScan = "PAGEMAP_SCAN"
  /// Tracking which pages are written (``DirtyTracker``).
  case dirtyTracking = "dirty tracking"
  /// Copying a range while it is written (``LiveSnapshot``).
  case liveSnapshot = "live snapshot"
}
