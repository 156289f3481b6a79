import CUserfaultfd
import SystemPackage

extension Userfaultfd {
  /// Options for ``Userfaultfd/poison(_:length:options:)`` (`UFFDIO_POISON_MODE_*`).
  public struct PoisonOptions: OptionSet, Sendable, Hashable {
    /// The raw value, as the kernel interface spells it.
    public let rawValue: UInt64
    /// Creates options from the kernel's bit mask.
    public init(rawValue: UInt64) { self.rawValue = rawValue }
    /// `UFFDIO_POISON_MODE_DONTWAKE`: leave faulting threads asleep.
    public static let dontWake = PoisonOptions(rawValue: CUFFD_POISON_MODE_DONTWAKE)
  }

  /// Marks `length` bytes of missing pages at `start` as poisoned (`UFFDIO_POISON`, Linux 6.6+):
  /// any access raises SIGBUS, as for a hardware memory error. Used to forward poison when
  /// migrating memory.
  public func poison(
    _ start: UnsafeMutableRawPointer, length: Int, options: PoisonOptions = []
  ) throws(UserfaultfdError) {
    let range = try PageRange(start, length: length, role: .range, operation: .poison)
    _ = try fd(for: .poison)
    try poisonCore(range.start, length: length, mode: options.rawValue).check(.poison, range: range)
  }
}
