import Glibc
import SystemPackage

/// Every failure this package reports. Each case says what happened in plain words
/// (`description`) and carries what a caller needs to recover: the errno, the range, and the
/// bytes already done.
public enum UserfaultfdError: Error, Sendable, Equatable, CustomStringConvertible {
  /// An argument was rejected, before any system call or by the kernel's first answer (a source
  /// it could not read, protections MOVE does not take); nothing was changed.
  case invalidArgument(Operation, InvalidArgument)
  /// The kernel refused a userfaultfd ioctl. The failure may carry partial progress.
  case operationFailed(OperationFailure)
  /// No way of opening a userfaultfd worked; each attempt and its errno are listed.
  case openFailed([OpenAttempt])
  /// Features were requested that this kernel does not offer.
  case featuresUnsupported(requested: Features, missing: Features)
  /// The handle was closed before the operation.
  case closed(Operation)
  /// A supporting system call (mmap, madvise, read, ...) failed. The text names the call and its
  /// arguments by name (`madvise(MADV_WIPEONFORK)`), followed, where the package knows what the
  /// errno means for that call, by ``reasonSeparator`` and the reason.
  case systemCallFailed(String, Errno)
  /// The running kernel lacks what the operation needs (decided at run time).
  case notSupported(Operation, String)
  /// A logical move (``PageMover``) stopped before the end. The report says exactly which pages
  /// moved, were copied or skipped; every other page is still in the source.
  indirect case moveStopped(MoveReport)

  /// Separates a ``systemCallFailed(_:_:)`` call's text from what its errno means for that call.
  public static let reasonSeparator = " -- "

  /// The errno behind this error, if the kernel produced one.
  public var errno: Errno? {
    switch self {
    case .operationFailed(let failure): return failure.errno
    case .moveStopped(let report): return report.stop?.failure?.errno
    case .systemCallFailed(_, let error): return error
    case .openFailed(let attempts): return attempts.last?.errno
    case .invalidArgument, .featuresUnsupported, .closed, .notSupported: return nil
    }
  }

  /// What a kernel refusal behind this error means (nil when the kernel did not refuse anything):
  /// switch on this, never on errnos or texts.
  public var failureKind: FailureKind? {
    switch self {
    case .operationFailed(let failure): return failure.kind
    case .moveStopped(let report): return report.stop?.failure?.kind
    default: return nil
    }
  }

  /// Bytes the failed operation completed before it stopped (0 when none or not applicable).
  public var bytesDone: Int {
    switch self {
    case .operationFailed(let failure): return failure.bytesDone
    case .moveStopped(let report): return report.bytesDone
    default: return 0
    }
  }

  public var description: String {
    switch self {
    case .invalidArgument(let operation, let reason):
      return "\(operation.rawValue): invalid argument: \(reason)"
    case .operationFailed(let failure):
      return failure.description
    case .openFailed(let attempts):
      return OpenAttempt.explain(attempts)
    case .featuresUnsupported(let requested, let missing):
      return "userfaultfd features not supported by this kernel: \(missing.names.joined(separator: ", "))"
        + " (requested: \(requested.names.joined(separator: ", ")));"
        + " probe Userfaultfd.supportedFeatures() and ask only for those"
    case .closed(let operation):
      return "\(operation.rawValue): the userfaultfd handle is already closed"
    case .systemCallFailed(let call, let error):
      let parts = call.split(separator: Self.reasonSeparator, maxSplits: 1)
      let what = parts.first.map(String.init) ?? call
      let why = parts.count > 1 ? ": " + parts[1] : ""
      return "\(what) failed: \(ErrnoName.of(error)) (\(error))\(why)"
    case .notSupported(let operation, let reason):
      return "\(operation.rawValue): \(reason)"
    case .moveStopped(let report):
      return "logical move stopped: \(report)"
    }
  }
}

/// A userfaultfd ioctl the kernel refused, with the range it was given and how far it got.
public struct OperationFailure: Sendable, Equatable, CustomStringConvertible {
  /// The ioctl that failed.
  public let operation: Operation
  /// The errno that stopped it. `EAGAIN` with `bytesDone > 0` means "stopped early": resume at
  /// `bytesDone` to learn the real reason.
  public let errno: Errno
  /// Destination (or only) range start.
  public let destination: Address
  /// Source range start, for copy and move.
  public let source: Address?
  /// Length of the requested range in bytes.
  public let length: Int
  /// Bytes completed before the failure; never negative.
  public let bytesDone: Int

  /// Creates a failure record.
  public init(
    operation: Operation, errno: Errno, destination: Address, source: Address? = nil, length: Int,
    bytesDone: Int = 0
  ) {
    self.operation = operation
    self.errno = errno
    self.destination = destination
    self.source = source
    self.length = length
    self.bytesDone = max(0, bytesDone)
  }

  /// True when part of the range was done: resume at `bytesDone`.
  public var isPartial: Bool { bytesDone > 0 }

  /// What the failure means for the caller, decided by the package's one reading of the kernel's
  /// answers (the same rule the fault service, SIGBUS mode and the heap act on).
  public var kind: FailureKind {
    switch KernelAnswer(operation, failed: errno, bytesDone: bytesDone, length: length).outcome {
    case .done, .partial: .partial
    case .alreadyPresent: .alreadyPresent
    case .sourceMissing: .sourceMissing
    case .busy: .busy
    case .retryAfterEvents: .retryAfterEvents
    case .processGone: .processGone
    case .failed: .refused
    }
  }

  /// What the errno means for this operation, in plain words, with what to do.
  public var explanation: String {
    Explanation.of(operation, errno, partial: isPartial, bytesDone: bytesDone)
  }

  public var description: String {
    var range = "\(length) bytes at \(destination)"
    if let source { range = "\(length) bytes from \(source) to \(destination)" }
    return "\(operation.rawValue) of \(range) failed after \(bytesDone) bytes: "
      + "\(ErrnoName.of(errno)): \(explanation)"
  }
}

/// What a kernel refusal means for the caller (``OperationFailure/kind``).
public enum FailureKind: Sendable, Hashable {
  /// `EAGAIN` after some progress: resume at ``OperationFailure/bytesDone``.
  case partial
  /// `EEXIST`: the destination page was already populated; someone else resolved it.
  case alreadyPresent
  /// MOVE's `ENOENT`: the source page is a hole (or the range is not mapped).
  case sourceMissing
  /// MOVE's `EBUSY`: the source page is not exclusively mapped (a fork, KSM, a pin); copy it.
  case busy
  /// `EAGAIN` with nothing done: a remove, unmap or remap event is pending; read it, retry.
  case retryAfterEvents
  /// `ESRCH`: the process whose memory this is has exited.
  case processGone
  /// Anything else: the operation cannot succeed as asked; ``OperationFailure/errno`` says why.
  case refused
}

/// Plain-words meaning of an errno for each operation (from the kernel's fs/userfaultfd.c and
/// mm/userfaultfd.c, and the man pages).
enum Explanation {
  static func of(_ operation: Operation, _ errno: Errno, partial: Bool, bytesDone: Int) -> String {
    switch (operation, errno) {
    case (_, .resourceTemporarilyUnavailable) where partial:
      return "stopped after \(bytesDone) bytes; resume at that offset to finish or learn why"
    case (.copy, .resourceTemporarilyUnavailable), (.zeroPage, .resourceTemporarilyUnavailable),
      (.move, .resourceTemporarilyUnavailable), (.continue, .resourceTemporarilyUnavailable),
      (.poison, .resourceTemporarilyUnavailable):
      return "the mappings are changing: a non-cooperative event (remove, unmap, remap) is pending;"
        + " read the pending events, then retry"
    case (.move, .resourceBusy):
      return "source page not exclusively mapped: shared with a forked child, merged by KSM, or"
        + " pinned; apply MADV_DONTFORK or MADV_WIPEONFORK to the source before forking, or copy it"
    case (.register, .resourceBusy):
      return "the range is already registered with another userfaultfd"
    case (.move, .fileExists), (.copy, .fileExists), (.zeroPage, .fileExists),
      (.continue, .fileExists), (.poison, .fileExists):
      return "destination already populated (another thread may have resolved this page: wake"
        + " and carry on)"
    case (.move, .noSuchFileOrDirectory):
      return "source page is a hole (never touched, or already moved), or the source or destination"
        + " is not mapped; for holes, pass .allowSourceHoles to count them as moved"
    case (.writeProtect, .noSuchFileOrDirectory):
      return "the range is not registered with this userfaultfd in write-protect mode"
    case (_, .noSuchFileOrDirectory):
      return "the destination is not registered with a userfaultfd of this process (or is no longer"
        + " mapped)"
    case (.pagemapScan, .notPermitted):
      return "part of the range is not registered for asynchronous write protection (unregistered,"
        + " or unmapped and mapped again): the tracker no longer sees writes there"
    case (.pagemapScan, .inappropriateIOCTLForDevice), (.pagemapScan, .invalidArgument):
      return "PAGEMAP_SCAN needs Linux 6.7 or later, and a range inside mapped memory"
    case (.move, .invalidArgument):
      return "both ranges must be page-aligned, each inside one VMA, private anonymous with the"
        + " same protections, not overlapping, the destination registered with this userfaultfd,"
        + " and the caller in the process that created it"
    case (.register, .invalidArgument):
      return "the range must be page-aligned and mapped, and its memory must support the mode"
        + " (MINOR needs shmem or hugetlbfs; WP needs a kernel with anonymous WP)"
    case (.unregister, .invalidArgument):
      return "the range must be page-aligned and inside mapped memory, and no part of it may be"
        + " registered with another userfaultfd (unregister it through that handle)"
    case (.wake, .invalidArgument):
      return "the range must be page-aligned and inside mapped memory"
    case (.writeProtect, .invalidArgument):
      return "the range must be registered with this userfaultfd in write-protect mode"
    case (.continue, .invalidArgument):
      return "the destination must be shmem or hugetlbfs memory registered in MINOR mode"
    case (_, .invalidArgument):
      return "the destination must be page-aligned and registered with this userfaultfd, the"
        + " caller in the process that created it, and the mode valid"
    case (_, .noSuchProcess):
      return "the process whose memory this userfaultfd serves has exited"
    case (_, .noMemory):
      return "out of memory, or the target address space is being torn down"
    case (_, .badAddress):
      return "an address the kernel had to read is not mapped readable"
    case (_, .interrupted):
      return "interrupted by a fatal signal"
    case (_, .notPermitted), (_, .permissionDenied):
      return "not permitted for this process"
    default:
      return errno.description
    }
  }
}

/// The C names of the errnos userfaultfd produces, for messages a user can search: the package's
/// one table (the heap's reports use it too).
package enum ErrnoName {
  /// `EEXIST` for `.fileExists`; `errno N` for a number without a name here.
  package static func of(_ errno: Errno) -> String { of(errno.rawValue) }

  /// The name of errno number `code`.
  package static func of(_ code: Int32) -> String {
    guard code > 0, code < names.count, let name = names[Int(code)] else { return "errno \(code)" }
    return name
  }

  /// Linux's errno names by number (asm-generic/errno-base.h and errno.h, the ones a system call
  /// here can return).
  private static let names: [String?] = {
    var table = [String?](repeating: nil, count: 134)
    let known: [(Int32, String)] = [
      (EPERM, "EPERM"), (ENOENT, "ENOENT"), (ESRCH, "ESRCH"), (EINTR, "EINTR"), (EIO, "EIO"),
      (ENXIO, "ENXIO"), (E2BIG, "E2BIG"), (ENOEXEC, "ENOEXEC"), (EBADF, "EBADF"), (ECHILD, "ECHILD"),
      (EAGAIN, "EAGAIN"), (ENOMEM, "ENOMEM"), (EACCES, "EACCES"), (EFAULT, "EFAULT"),
      (EBUSY, "EBUSY"), (EEXIST, "EEXIST"), (EXDEV, "EXDEV"), (ENODEV, "ENODEV"),
      (ENOTDIR, "ENOTDIR"), (EISDIR, "EISDIR"), (EINVAL, "EINVAL"), (ENFILE, "ENFILE"),
      (EMFILE, "EMFILE"), (ENOTTY, "ENOTTY"), (ETXTBSY, "ETXTBSY"), (EFBIG, "EFBIG"),
      (ENOSPC, "ENOSPC"), (ESPIPE, "ESPIPE"), (EROFS, "EROFS"), (EMLINK, "EMLINK"), (EPIPE, "EPIPE"),
      (EDOM, "EDOM"), (ERANGE, "ERANGE"), (EDEADLK, "EDEADLK"), (ENAMETOOLONG, "ENAMETOOLONG"),
      (ENOLCK, "ENOLCK"), (ENOSYS, "ENOSYS"), (ENOTEMPTY, "ENOTEMPTY"), (ELOOP, "ELOOP"),
      (EOVERFLOW, "EOVERFLOW"), (EOPNOTSUPP, "EOPNOTSUPP"), (ETIMEDOUT, "ETIMEDOUT"),
      (EHWPOISON, "EHWPOISON"),
    ]
    for (code, name) in known where code > 0 && Int(code) < table.count { table[Int(code)] = name }
    return table
  }()
}
