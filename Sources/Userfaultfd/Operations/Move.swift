import CUserfaultfd
import SystemPackage

extension Userfaultfd {
  /// Options for ``Userfaultfd/move(from:to:length:options:)`` (`UFFDIO_MOVE_MODE_*`).
  public struct MoveOptions: OptionSet, Sendable, Hashable {
    /// The raw value, as the kernel interface spells it.
    public let rawValue: UInt64
    /// Creates options from the kernel's bit mask.
    public init(rawValue: UInt64) { self.rawValue = rawValue }
    /// `UFFDIO_MOVE_MODE_DONTWAKE`: leave threads faulting on the destination asleep; call
    /// ``Userfaultfd/wake(_:length:)`` later.
    public static let dontWake = MoveOptions(rawValue: CUFFD_MOVE_MODE_DONTWAKE)
    /// `UFFDIO_MOVE_MODE_ALLOW_SRC_HOLES`: count source holes as moved instead of failing with
    /// ENOENT.
    public static let allowSourceHoles = MoveOptions(rawValue: CUFFD_MOVE_MODE_ALLOW_SRC_HOLES)
  }

  /// Moves `length` bytes of anonymous pages from `source` to `destination` without copying
  /// (`UFFDIO_MOVE`, Linux 6.8+).
  ///
  /// Atomic per page: threads may keep writing the source during the call and no write is lost.
  /// Afterwards the source is a hole (reads zero, or faults if registered). Only `destination`
  /// must be registered with this userfaultfd, in any mode. The kernel is strict: a page that
  /// cannot move zero-copy fails the call with EBUSY, with no copy fallback.
  ///
  /// - Throws: ``UserfaultfdError/invalidArgument(_:_:)`` for misaligned, empty, wrapping or
  ///   overlapping ranges; `operationFailed` otherwise, with `bytesDone` the bytes moved before the
  ///   failure (resume at `source + bytesDone`). Errnos: EEXIST (destination populated), ENOENT
  ///   (source hole), EBUSY (source not exclusively mapped: fork, KSM, pin), EAGAIN (stopped
  ///   early, or an event is pending), EINVAL (memory type, registration);
  ///   ``InvalidArgument/moveProtections(source:destination:)`` when the two mappings'
  ///   protections differ or are not writable (nothing moved).
  ///
  /// An EEXIST does not always mean the page stayed in the source: Linux 6.18 has been measured
  /// answering EEXIST, with nothing reported done, for a page it had moved, when the source lay in
  /// a transparent huge page other threads were splitting (the source page gone, the destination
  /// holding it). Before treating the page as still in the source, look at the source page (a
  /// hole now means it moved); ``PageMover`` does this for you and counts such pages in
  /// ``MoveReport/movesAnsweredExisting``.
  public func move(
    from source: UnsafeMutableRawPointer, to destination: UnsafeMutableRawPointer, length: Int,
    options: MoveOptions = []
  ) throws(UserfaultfdError) {
    let (origin, target) = try PageRange.pair(
      source: source, destination: destination, length: length, operation: .move)
    _ = try fd(for: .move)
    guard !servesAnotherProcess else { throw Self.moveAcrossProcesses }
    let answer = moveCore(target.start, from: origin.start, length: length, mode: options.rawValue)
    if answer.errno == .invalidArgument, answer.bytesDone == 0,
       let refusal = Mapping.unfitMoveProtections(origin.start, target.start) {
      throw refusal
    }
    try answer.check(.move, range: target, source: origin.start)
  }
}

extension Userfaultfd {
  /// Why MOVE is refused on a handle serving another process.
  static var moveAcrossProcesses: UserfaultfdError {
    .notSupported(
      .move,
      "this userfaultfd serves another process's memory: UFFDIO_MOVE moves pages only within the process"
        + " that created it, so this process's pages cannot be its source; resolve with copy")
  }
}
