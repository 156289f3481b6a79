import Glibc
import SystemPackage

extension Errno {
  /// The calling thread's `errno`, read right after the call that set it.
  @inline(__always)
  package static var current: Errno { Errno(rawValue: errno) }
}

/// Runs `call` and returns its value, or the errno it set when it returned -1. Retries EINTR when
/// asked: right for calls that are safe to repeat (close is not; range ioctls report progress
/// instead and are never retried here).
@inline(__always)
func valueOrErrno<I: FixedWidthInteger>(
  retryOnInterrupt: Bool, _ call: () -> I
) -> Result<I, Errno> {
  while true {
    let value = call()
    if value != -1 { return .success(value) }
    let error = Errno.current
    if retryOnInterrupt && error == .interrupted { continue }
    return .failure(error)
  }
}

/// `valueOrErrno` for calls whose only result is success.
@inline(__always)
func nothingOrErrno<I: FixedWidthInteger>(
  retryOnInterrupt: Bool, _ call: () -> I
) -> Result<Void, Errno> {
  valueOrErrno(retryOnInterrupt: retryOnInterrupt, call).map { _ in () }
}

extension Result where Failure == Errno {
  /// Unwraps, turning the errno into the package's error for `call` (formatted only on failure:
  /// building the text on every call cost more than the system call itself).
  @inline(__always)
  func get(systemCall call: @autoclosure () -> String) throws(UserfaultfdError) -> Success {
    switch self {
    case .success(let value): return value
    case .failure(let error): throw .systemCallFailed(call(), error)
    }
  }

  /// Unwraps, turning the errno into the package's error for `call`, with what that errno means
  /// for this call where `meaning` knows (appended after ``UserfaultfdError/reasonSeparator``).
  @inline(__always)
  func get(
    systemCall call: @autoclosure () -> String, meaning: (Errno) -> String?
  ) throws(UserfaultfdError) -> Success {
    switch self {
    case .success(let value): return value
    case .failure(let error):
      let reason = meaning(error).map { UserfaultfdError.reasonSeparator + $0 } ?? ""
      throw .systemCallFailed(call() + reason, error)
    }
  }
}
