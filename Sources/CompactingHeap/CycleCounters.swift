import Synchronization
import Userfaultfd

/// What a cycle counts, in raw atomics: updated from the GC thread, the fault-server thread and
/// SIGBUS handlers alike (no allocation, no locks).
struct CycleCounters: @unchecked Sendable {
  // @unchecked: a pointer to atomics CompactionResources owns for the cycle.
  /// Named counters.
  enum Name: Int, CaseIterable {
    case pagesByGC, pagesByMutators, mutatorFaults, recycledPages, bufferPages
    case busyFallbacks, eagainRetries, failures, releasedPages, intrudedPages
    /// Faults that waited for a page being compacted by the GC (`processing`), or being mapped
    /// (`mapping`: by the GC, or by another mutator that found it compacted).
    case waitsOnProcessing, waitsOnMapping
    /// Faults during which the scheduler took the CPU from the faulting thread at least once
    /// (``ThreadSchedule``), and those switches added up; faults during which it gave the CPU up
    /// itself (slept in a back-off, blocked in the kernel).
    case preemptedFaults, involuntarySwitchesInFaults, blockedFaults
    /// MOVEs the kernel answered with EEXIST for a page it had moved (``PageMapping``).
    case movesAnsweredExisting
  }

  /// The map ioctls, for the per-errno table.
  enum Ioctl: Int, CaseIterable {
    case move, copy, zeroPage
    var name: String { ["MOVE", "COPY", "ZEROPAGE"][rawValue] }
  }

  /// Errnos counted per ioctl (Linux's are below 134).
  /// (Computed, not stored: read in SIGBUS handlers, where neither `allCases` (an allocation)
  /// nor a lazily initialized global may run.)
  static var errnoSlots: Int { 256 }
  /// Per ioctl: calls, pages mapped, then one slot per errno.
  static var ioctlSlots: Int { 2 + errnoSlots }
  static var nameCount: Int { 16 }
  static var slotCount: Int { nameCount + 3 * ioctlSlots }

  let slots: UnsafeMutablePointer<Atomic<Int>>

  @inline(__always)
  func add(_ name: Name, _ value: Int = 1) {
    slots[name.rawValue].wrappingAdd(value, ordering: .relaxed)
  }

  @inline(__always)
  func load(_ name: Name) -> Int { slots[name.rawValue].load(ordering: .relaxed) }

  @inline(__always)
  private func ioctlBase(_ ioctl: Ioctl) -> Int { Self.nameCount + ioctl.rawValue * Self.ioctlSlots }

  /// One call of `ioctl` that mapped `pages` pages.
  @inline(__always)
  func called(_ ioctl: Ioctl, pages: Int) {
    let base = ioctlBase(ioctl)
    slots[base].wrappingAdd(1, ordering: .relaxed)
    if pages > 0 { slots[base + 1].wrappingAdd(pages, ordering: .relaxed) }
  }

  /// `ioctl` failed with `errno`.
  @inline(__always)
  func failed(_ ioctl: Ioctl, errno: Int32) {
    let slot = Int(errno) >= 0 && Int(errno) < Self.errnoSlots ? Int(errno) : 0
    slots[ioctlBase(ioctl) + 2 + slot].wrappingAdd(1, ordering: .relaxed)
  }

  /// Calls of `ioctl`.
  func calls(_ ioctl: Ioctl) -> Int { slots[ioctlBase(ioctl)].load(ordering: .relaxed) }
  /// Pages `ioctl` mapped.
  func pages(_ ioctl: Ioctl) -> Int { slots[ioctlBase(ioctl) + 1].load(ordering: .relaxed) }

  /// Failures by ioctl and errno name, e.g. `"MOVE EBUSY": 3`.
  func errnoCounts() -> [String: Int] {
    var counts: [String: Int] = [:]
    for ioctl in Ioctl.allCases {
      for errno in 0..<Self.errnoSlots {
        let count = slots[ioctlBase(ioctl) + 2 + errno].load(ordering: .relaxed)
        if count > 0 { counts["\(ioctl.name) \(ErrnoName.of(Int32(errno)))"] = count }
      }
    }
    return counts
  }
}
