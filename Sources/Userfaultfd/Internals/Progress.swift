import SystemPackage

/// Interprets the result of a range ioctl that reports progress (COPY, ZEROPAGE, MOVE, CONTINUE,
/// POISON).
///
/// The kernel's output field is one of three things: bytes done (> 0), a negated errno (< 0) when
/// nothing was done, or untouched for early argument errors. Callers preset it to 0, so "untouched"
/// reads as zero progress. A negative value is never reported as a count
/// (bytecodealliance/userfaultfd-rs#91 read one as bytes and a VMM died of it).
@inline(__always)
func checkProgress(
  _ result: Int32, errno: @autoclosure () -> Errno, reported: Int64, operation: Operation,
  range: PageRange, source: UInt? = nil
) throws(UserfaultfdError) {
  if result == 0 { return }
  let errno = errno()
  let done = reported > 0 ? Int(min(reported, Int64(range.length))) : 0
  throw .operationFailed(
    OperationFailure(
      operation: operation, errno: errno, destination: range.start, source: source,
      length: range.length, bytesDone: done))
}

/// Throws the failure of a range ioctl that has no progress field.
@inline(__always)
func check(_ result: Result<Int32, Errno>, operation: Operation, range: PageRange) throws(UserfaultfdError) {
  if case .failure(let error) = result {
    throw .operationFailed(
      OperationFailure(operation: operation, errno: error, destination: range.start, length: range.length))
  }
}
