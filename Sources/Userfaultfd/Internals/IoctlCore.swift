import CUserfaultfd
import SystemPackage

/// The range ioctls without validation, throwing or allocation: trivial values in, a
/// ``KernelAnswer`` out (swift-system's `_read` under `read`). The public methods validate, call
/// these and throw; the fault server's serving thread, the logical move's fallback and the
/// compacting heap (from a SIGBUS handler too) call them directly. With EVENT_FORK the serving
/// thread must never reach malloc, and in an unoptimised build even an empty option-set literal
/// does: hence raw `UInt64` modes here.
package enum RangeIoctl {
  /// UFFDIO_COPY of `length` bytes from `source` to `destination` on descriptor `fd`.
  @inline(__always)
  package static func copy(_ fd: Int32, _ destination: UInt, from source: UInt, length: Int, mode: UInt64 = 0)
    -> KernelAnswer
  {
    issue(fd, CUFFD_OP_COPY, destination, source, length, mode)
  }

  /// UFFDIO_MOVE of `length` bytes from `source` to `destination` on descriptor `fd`.
  @inline(__always)
  package static func move(_ fd: Int32, _ destination: UInt, from source: UInt, length: Int, mode: UInt64 = 0)
    -> KernelAnswer
  {
    issue(fd, CUFFD_OP_MOVE, destination, source, length, mode)
  }

  /// UFFDIO_ZEROPAGE of `length` bytes at `start` on descriptor `fd`.
  @inline(__always)
  package static func zeroPage(_ fd: Int32, _ start: UInt, length: Int, mode: UInt64 = 0) -> KernelAnswer {
    issue(fd, CUFFD_OP_ZEROPAGE, start, 0, length, mode)
  }

  /// UFFDIO_CONTINUE of `length` bytes at `start` on descriptor `fd`.
  @inline(__always)
  package static func `continue`(_ fd: Int32, _ start: UInt, length: Int, mode: UInt64 = 0) -> KernelAnswer {
    issue(fd, CUFFD_OP_CONTINUE, start, 0, length, mode)
  }

  /// UFFDIO_POISON of `length` bytes at `start` on descriptor `fd`.
  @inline(__always)
  package static func poison(_ fd: Int32, _ start: UInt, length: Int, mode: UInt64 = 0) -> KernelAnswer {
    issue(fd, CUFFD_OP_POISON, start, 0, length, mode)
  }

  /// UFFDIO_WAKE of `length` bytes at `start` on descriptor `fd` (all or nothing).
  @inline(__always)
  package static func wake(_ fd: Int32, _ start: UInt, length: Int) -> KernelAnswer {
    issue(fd, CUFFD_OP_WAKE, start, 0, length, 0)
  }

  @inline(__always)
  private static func issue(_ fd: Int32, _ op: Int32, _ destination: UInt, _ source: UInt, _ length: Int, _ mode: UInt64)
    -> KernelAnswer
  {
    guard fd >= 0 else {
      return KernelAnswer(cuffd_answer_classify(op, -1, Errno.badFileDescriptor.rawValue, 0, UInt64(max(length, 0))))
    }
    return KernelAnswer(
      cuffd_range_ioctl(fd, op, UInt64(destination), UInt64(source), UInt64(max(length, 0)), mode))
  }
}

/// The same core on this handle's descriptor (EBADF once it is closed).
extension Userfaultfd {
  /// The descriptor the cores use: -1 once the handle is closed. For the package's own
  /// allocation-free paths (the heap maps pages with it); users hold the handle instead.
  package var coreDescriptor: Int32 { descriptorOrNegative }

  func copyCore(_ destination: UInt, from source: UInt, length: Int, mode: UInt64) -> KernelAnswer {
    RangeIoctl.copy(descriptorOrNegative, destination, from: source, length: length, mode: mode)
  }

  func moveCore(_ destination: UInt, from source: UInt, length: Int, mode: UInt64) -> KernelAnswer {
    RangeIoctl.move(descriptorOrNegative, destination, from: source, length: length, mode: mode)
  }

  func zeroPageCore(_ start: UInt, length: Int, mode: UInt64) -> KernelAnswer {
    RangeIoctl.zeroPage(descriptorOrNegative, start, length: length, mode: mode)
  }

  func continueCore(_ start: UInt, length: Int, mode: UInt64) -> KernelAnswer {
    RangeIoctl.continue(descriptorOrNegative, start, length: length, mode: mode)
  }

  func poisonCore(_ start: UInt, length: Int, mode: UInt64) -> KernelAnswer {
    RangeIoctl.poison(descriptorOrNegative, start, length: length, mode: mode)
  }

  func wakeCore(_ start: UInt, length: Int) -> KernelAnswer {
    RangeIoctl.wake(descriptorOrNegative, start, length: length)
  }
}

extension KernelAnswer {
  /// Throws the package's error for a failed answer of `operation` on `range`.
  @inline(__always)
  func check(_ operation: Operation, range: PageRange, source: UInt? = nil) throws(UserfaultfdError) {
    guard let errno else { return }
    throw .operationFailed(
      OperationFailure(
        operation: operation, errno: errno, destination: Address(rawValue: range.start), source: source.map(Address.init(rawValue:)),
        length: range.length, bytesDone: bytesDone))
  }
}

/// Throws the failure of a range ioctl that has no progress field.
@inline(__always)
func check(_ result: Result<Int32, Errno>, operation: Operation, range: PageRange) throws(UserfaultfdError) {
  if case .failure(let error) = result {
    throw .operationFailed(
      OperationFailure(operation: operation, errno: error, destination: Address(rawValue: range.start), length: range.length))
  }
}
