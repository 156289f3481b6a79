import SystemPackage

/// What the kernel's answer to a range ioctl means: the one place the package decides it. The
/// progress rule (a negative progress field is -errno, never a count) lives in `IoctlCore.swift`;
/// this turns the resulting errno into what a caller should do next.
enum KernelOutcome: Equatable {
  /// Every byte was done.
  case done
  /// EEXIST: the destination was already populated (another thread resolved the page).
  case alreadyPresent
  /// EAGAIN with nothing done: a remove, unmap or remap event is pending; read events, retry.
  case retryAfterEvents
  /// ESRCH: the process whose memory this is has exited.
  case processGone
  /// Anything else: the operation cannot succeed as asked.
  case failed(Errno)
}

/// The answer to one range ioctl (see `IoctlCore.swift`), captured without throwing or allocating.
struct KernelAnswer {
  let errno: Errno?
  let bytesDone: Int

  /// An answer that failed before any ioctl ran.
  init(failed errno: Errno) {
    self.errno = errno
    self.bytesDone = 0
  }

  /// The answer an ioctl gave.
  init(errno: Errno?, bytesDone: Int) {
    self.errno = errno
    self.bytesDone = bytesDone
  }

  var outcome: KernelOutcome { Self.classify(errno, bytesDone: bytesDone) }

  /// The package's reading of an errno after a range ioctl that did `bytesDone` bytes.
  static func classify(_ errno: Errno?, bytesDone: Int) -> KernelOutcome {
    guard let errno else { return .done }
    switch errno {
    case .fileExists: return .alreadyPresent
    case .resourceTemporarilyUnavailable: return bytesDone > 0 ? .done : .retryAfterEvents
    case .noSuchProcess: return .processGone
    default: return .failed(errno)
    }
  }
}
