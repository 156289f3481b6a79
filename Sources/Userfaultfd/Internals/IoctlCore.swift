import CUserfaultfd
import SystemPackage

/// The range ioctls without validation, throwing or allocation: trivial values in, a
/// ``KernelAnswer`` out. The public methods validate, call these, and throw; the fault server's
/// serving thread calls these directly (with EVENT_FORK it must never reach malloc, and in an
/// unoptimised build even an empty option-set literal does). The progress rule lives here once:
/// the kernel's progress field is bytes done when positive, a negated errno when nothing was done,
/// and untouched (it is preset to 0) after an early argument error; a negative value is never read
/// as a count.
extension Userfaultfd {
  @inline(__always)
  static func answer(_ result: Int32, progress: Int64, length: Int) -> KernelAnswer {
    if result == 0 { return KernelAnswer(errno: nil, bytesDone: length) }
    let error = Errno.current
    let done = progress > 0 ? Int(min(progress, Int64(length))) : 0
    return KernelAnswer(errno: error, bytesDone: done)
  }

  /// UFFDIO_COPY of `length` bytes from `source` to `destination`.
  func copyCore(_ destination: UInt, from source: UInt, length: Int, mode: UInt64) -> KernelAnswer {
    let fd = descriptorOrNegative
    guard fd >= 0 else { return KernelAnswer(errno: .badFileDescriptor, bytesDone: 0) }
    var arg = cuffd_copy(dst: UInt64(destination), src: UInt64(source), len: UInt64(length), mode: mode, copy: 0)
    let result = cuffd_ioctl_copy(fd, &arg)
    return Self.answer(result, progress: arg.copy, length: length)
  }

  /// UFFDIO_MOVE of `length` bytes from `source` to `destination`.
  func moveCore(_ destination: UInt, from source: UInt, length: Int, mode: UInt64) -> KernelAnswer {
    let fd = descriptorOrNegative
    guard fd >= 0 else { return KernelAnswer(errno: .badFileDescriptor, bytesDone: 0) }
    var arg = cuffd_move(dst: UInt64(destination), src: UInt64(source), len: UInt64(length), mode: mode, move: 0)
    let result = cuffd_ioctl_move(fd, &arg)
    return Self.answer(result, progress: arg.move, length: length)
  }

  /// UFFDIO_ZEROPAGE of `length` bytes at `start`.
  func zeroPageCore(_ start: UInt, length: Int, mode: UInt64) -> KernelAnswer {
    let fd = descriptorOrNegative
    guard fd >= 0 else { return KernelAnswer(errno: .badFileDescriptor, bytesDone: 0) }
    var arg = cuffd_zeropage(range: cuffd_range(start: UInt64(start), len: UInt64(length)), mode: mode, zeropage: 0)
    let result = cuffd_ioctl_zeropage(fd, &arg)
    return Self.answer(result, progress: arg.zeropage, length: length)
  }

  /// UFFDIO_CONTINUE of `length` bytes at `start`.
  func continueCore(_ start: UInt, length: Int, mode: UInt64) -> KernelAnswer {
    let fd = descriptorOrNegative
    guard fd >= 0 else { return KernelAnswer(errno: .badFileDescriptor, bytesDone: 0) }
    var arg = cuffd_continue(range: cuffd_range(start: UInt64(start), len: UInt64(length)), mode: mode, mapped: 0)
    let result = cuffd_ioctl_continue(fd, &arg)
    return Self.answer(result, progress: arg.mapped, length: length)
  }

  /// UFFDIO_POISON of `length` bytes at `start`.
  func poisonCore(_ start: UInt, length: Int, mode: UInt64) -> KernelAnswer {
    let fd = descriptorOrNegative
    guard fd >= 0 else { return KernelAnswer(errno: .badFileDescriptor, bytesDone: 0) }
    var arg = cuffd_poison(range: cuffd_range(start: UInt64(start), len: UInt64(length)), mode: mode, updated: 0)
    let result = cuffd_ioctl_poison(fd, &arg)
    return Self.answer(result, progress: arg.updated, length: length)
  }

  /// UFFDIO_WAKE of `length` bytes at `start` (no progress field: all or nothing).
  func wakeCore(_ start: UInt, length: Int) -> KernelAnswer {
    let fd = descriptorOrNegative
    guard fd >= 0 else { return KernelAnswer(errno: .badFileDescriptor, bytesDone: 0) }
    var arg = cuffd_range(start: UInt64(start), len: UInt64(length))
    let result = cuffd_ioctl_wake(fd, &arg)
    return result == 0 ? KernelAnswer(errno: nil, bytesDone: length) : KernelAnswer(errno: .current, bytesDone: 0)
  }
}

extension KernelAnswer {
  /// Throws the package's error for a failed answer of `operation` on `range`.
  @inline(__always)
  func check(_ operation: Operation, range: PageRange, source: UInt? = nil) throws(UserfaultfdError) {
    guard let errno else { return }
    throw .operationFailed(
      OperationFailure(
        operation: operation, errno: errno, destination: range.start, source: source,
        length: range.length, bytesDone: bytesDone))
  }
}

/// Throws the failure of a range ioctl that has no progress field.
@inline(__always)
func check(_ result: Result<Int32, Errno>, operation: Operation, range: PageRange) throws(UserfaultfdError) {
  if case .failure(let error) = result {
    throw .operationFailed(
      OperationFailure(operation: operation, errno: error, destination: range.start, length: range.length))
  }
}
