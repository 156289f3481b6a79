import CUserfaultfd
import SystemPackage

/// What the kernel's answer to a range ioctl means. The rule that decides it exists once, in the
/// C shim (`cuffd_answer_classify`), so the SIGBUS handler reads answers exactly as Swift does.
package enum KernelOutcome: Equatable, Sendable {
  /// Every byte was done.
  case done
  /// EAGAIN after some progress: resume at ``KernelAnswer/bytesDone``.
  case partial
  /// EEXIST: the page at ``KernelAnswer/bytesDone`` was already populated (someone resolved it).
  case alreadyPresent
  /// MOVE's ENOENT: the source page at ``KernelAnswer/bytesDone`` is a hole.
  case sourceMissing
  /// MOVE's EBUSY: the source page at ``KernelAnswer/bytesDone`` is not exclusively mapped.
  case busy
  /// EAGAIN with nothing done: a remove, unmap or remap event is pending; read events, retry.
  case retryAfterEvents
  /// ESRCH: the process whose memory this is has exited.
  case processGone
  /// Anything else: the operation cannot succeed as asked (``KernelAnswer/errno`` says why).
  case failed

  init(code: Int32) {
    switch code {
    case CUFFD_OUTCOME_DONE: self = .done
    case CUFFD_OUTCOME_PARTIAL: self = .partial
    case CUFFD_OUTCOME_ALREADY_PRESENT: self = .alreadyPresent
    case CUFFD_OUTCOME_SOURCE_MISSING: self = .sourceMissing
    case CUFFD_OUTCOME_BUSY: self = .busy
    case CUFFD_OUTCOME_RETRY_AFTER_EVENTS: self = .retryAfterEvents
    case CUFFD_OUTCOME_PROCESS_GONE: self = .processGone
    default: self = .failed
    }
  }
}

/// The answer to one range ioctl, captured without throwing or allocating: trivial values only,
/// so a signal handler, the fault server's serving thread and the heap can all use it.
package struct KernelAnswer: Equatable, Sendable {
  /// The bytes done (a negative progress field is never read as a count).
  package let bytesDone: Int
  /// The errno, nil when every byte was done.
  package let errno: Errno?
  /// What the answer means.
  package let outcome: KernelOutcome

  init(_ answer: cuffd_answer) {
    self.bytesDone = Int(truncatingIfNeeded: answer.bytes_done)
    self.errno = answer.error == 0 ? nil : Errno(rawValue: answer.error)
    self.outcome = KernelOutcome(code: answer.outcome)
  }

  /// The answer `operation` would have given had the kernel returned `errno` having done
  /// `bytesDone` of `length` bytes: the same rule, for a call that never reached the kernel.
  package init(_ operation: Operation, failed errno: Errno, bytesDone: Int = 0, length: Int) {
    self.init(
      cuffd_answer_classify(
        operation.ioctlCode, -1, errno.rawValue, Int64(bytesDone), UInt64(max(length, 0))))
  }

  /// The answer for every one of `length` bytes done.
  package static func done(length: Int) -> KernelAnswer {
    KernelAnswer(cuffd_answer(bytes_done: UInt64(max(length, 0)), error: 0, outcome: CUFFD_OUTCOME_DONE))
  }
}

extension Operation {
  /// The C shim's code for this range ioctl (`CUFFD_OP_*`); -1 for operations that are not one.
  var ioctlCode: Int32 {
    switch self {
    case .copy: CUFFD_OP_COPY
    case .zeroPage: CUFFD_OP_ZEROPAGE
    case .move: CUFFD_OP_MOVE
    case .continue: CUFFD_OP_CONTINUE
    case .poison: CUFFD_OP_POISON
    case .wake: CUFFD_OP_WAKE
    default: -1
    }
  }
}
