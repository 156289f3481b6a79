/// How a ``DirtyTracker`` learns which pages were written. Chosen at run time from what the kernel
/// offers (``best(for:)``), and visible in ``DirtyTracker/backend``.
public enum DirtyTrackingBackend: String, Sendable, Hashable, CaseIterable, CustomStringConvertible {
  /// `UFFD_FEATURE_WP_ASYNC` with `PAGEMAP_SCAN` (Linux 6.7+): the kernel un-protects a page on its
  /// first write by itself (about a microsecond, no thread involved), and one `PAGEMAP_SCAN` ioctl
  /// returns the written ranges and re-protects them page by page under the page-table lock. The
  /// cheapest and exact; what CRIU and Wine use.
  case asyncWriteProtect = "wp-async"
  /// Synchronous uffd-wp (Linux 5.7+ anonymous, 5.19+ shmem and hugetlbfs): every first write to a
  /// protected page waits while a handler thread records it and un-protects it (tens of
  /// microseconds per first write). Exact; for kernels before 6.7.
  case writeProtectFaults = "uffd-wp"
  /// Soft-dirty bits (`CONFIG_MEM_SOFT_DIRTY`: `/proc/self/clear_refs` and bit 55 of
  /// `/proc/self/pagemap`), for kernels with neither of the above; anonymous and shmem memory.
  /// Clearing the bits is one step over the whole process, separate from reading them: a write that
  /// lands during ``DirtyTracker/collect()`` on a page not written before it can be missed (see
  /// ``isExactUnderConcurrentWrites``), so pause the range's writers around a collection, as CRIU
  /// freezes a task. A tracker's collection clears every soft-dirty bit of the process: the
  /// package keeps its trackers apart, but other users of the bits in the process lose theirs.
  /// Transparent huge pages are reported whole (512 pages when one base page was written).
  case softDirty = "soft-dirty"

  /// Whether a write landing while a collection runs is always reported (by that collection or
  /// the next): true for the write-protect backends, whose report and re-protect are one step;
  /// false for soft-dirty, whose read and clear are two.
  public var isExactUnderConcurrentWrites: Bool { self != .softDirty }

  /// The backend's name as the tool and the benchmark print it (`wp-async`, `uffd-wp`, `soft-dirty`).
  public var description: String { rawValue }

  /// What this backend needs on `kind` memory, and the Linux release that brought it.
  public func requirement(for kind: TrackedMemoryKind) -> Requirement {
    switch (self, kind) {
    case (.asyncWriteProtect, _):
      return Requirement(capability: "UFFD_FEATURE_WP_ASYNC and PAGEMAP_SCAN", linux: "6.7")
    case (.writeProtectFaults, .anonymous):
      return Requirement(capability: "UFFD_FEATURE_PAGEFAULT_FLAG_WP (uffd-wp on anonymous memory)", linux: "5.7")
    case (.writeProtectFaults, .shmem), (.writeProtectFaults, .hugetlb):
      return Requirement(capability: "UFFD_FEATURE_WP_HUGETLBFS_SHMEM (uffd-wp on shmem and hugetlbfs)", linux: "5.19")
    case (.softDirty, .hugetlb):
      return Requirement(capability: "soft-dirty bits on hugetlbfs pages, which Linux does not keep", linux: nil)
    case (.softDirty, _):
      return Requirement(capability: "CONFIG_MEM_SOFT_DIRTY (soft-dirty bits in /proc/PID/pagemap, a build option)", linux: "3.11")
    }
  }

  /// The userfaultfd features this backend needs on `kind` memory.
  func neededFeatures(for kind: TrackedMemoryKind) -> Features {
    switch (self, kind) {
    case (.asyncWriteProtect, _): [.pageFaultFlagWP, .wpAsync]
    case (.writeProtectFaults, .anonymous): [.pageFaultFlagWP]
    case (.writeProtectFaults, _): [.pageFaultFlagWP, .wpHugetlbfsShmem]
    case (.softDirty, _): []
    }
  }

  /// Whether this kernel offers what the backend needs on `kind` memory, judged from the features
  /// it advertises (`supported`, from ``Userfaultfd/probeSupportedFeatures()``).
  /// Soft-dirty takes no userfaultfd feature: it is judged by a probe of the pagemap (once).
  public func isAvailable(for kind: TrackedMemoryKind, supported: Features) -> Bool {
    if self == .softDirty { return kind != .hugetlb && SoftDirtyPages.isSupported }
    return supported.isSuperset(of: neededFeatures(for: kind))
  }

  /// The backends this kernel offers for `kind` memory, best first; empty when userfaultfd cannot
  /// be opened or offers neither.
  public static func available(for kind: TrackedMemoryKind) -> [DirtyTrackingBackend] {
    let supported = (try? Userfaultfd.probeSupportedFeatures().features) ?? []
    return allCases.filter { $0.isAvailable(for: kind, supported: supported) }
  }

  /// The best backend this kernel offers for `kind` memory: wp-async, then uffd-wp, then soft-dirty.
  ///
  /// - Throws: ``UserfaultfdError/notSupported(_:_:)`` saying what is missing and which Linux
  ///   release brings it; the opening failure when no userfaultfd can be opened and soft-dirty
  ///   is unavailable too.
  public static func best(for kind: TrackedMemoryKind) throws(UserfaultfdError) -> DirtyTrackingBackend {
    let supported: Features
    do {
      supported = try Userfaultfd.probeSupportedFeatures().features
    } catch {
      if softDirty.isAvailable(for: kind, supported: []) { return .softDirty }
      throw error
    }
    if let backend = allCases.first(where: { $0.isAvailable(for: kind, supported: supported) }) {
      return backend
    }
    let needs = allCases.map { "\($0) needs \($0.requirement(for: kind))" }.joined(separator: "; ")
    throw .notSupported(.dirtyTracking, "this kernel cannot track writes to \(kind.rawValue) memory: \(needs)")
  }

  /// A capability a backend needs, and the Linux release that brought it.
  public struct Requirement: Sendable, Hashable, CustomStringConvertible {
    /// The kernel feature, as its C name spells it.
    public let capability: String
    /// The first Linux release with it (`"6.7"`); nil when no release offers it.
    public let linux: String?

    /// The capability and the release, in words.
    public var description: String {
      guard let linux else { return capability }
      return "\(capability) (Linux \(linux) or later)"
    }
  }
}
