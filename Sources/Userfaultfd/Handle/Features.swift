import CUserfaultfd
/// Optional userfaultfd features, negotiated once per handle with `UFFDIO_API`
/// (`UFFD_FEATURE_*`, field `uffdio_api.features`).
public struct Features: OptionSet, Sendable, Hashable, CustomStringConvertible {
  /// The raw value, as the kernel interface spells it.
  public let rawValue: UInt64
  /// Creates a feature set from the kernel's bit mask.
  public init(rawValue: UInt64) { self.rawValue = rawValue }

  /// `UFFD_FEATURE_PAGEFAULT_FLAG_WP`: write-protect faults are reported with a flag.
  public static let pageFaultFlagWP = Features(rawValue: CUFFD_FEATURE_PAGEFAULT_FLAG_WP)
  /// `UFFD_FEATURE_EVENT_FORK`: a fork event with the child's userfaultfd.
  public static let eventFork = Features(rawValue: CUFFD_FEATURE_EVENT_FORK)
  /// `UFFD_FEATURE_EVENT_REMAP`: an event when a registered range is mremap'd.
  public static let eventRemap = Features(rawValue: CUFFD_FEATURE_EVENT_REMAP)
  /// `UFFD_FEATURE_EVENT_REMOVE`: an event on MADV_DONTNEED / MADV_REMOVE of a registered range.
  public static let eventRemove = Features(rawValue: CUFFD_FEATURE_EVENT_REMOVE)
  /// `UFFD_FEATURE_MISSING_HUGETLBFS`: MISSING mode on hugetlbfs.
  public static let missingHugetlbfs = Features(rawValue: CUFFD_FEATURE_MISSING_HUGETLBFS)
  /// `UFFD_FEATURE_MISSING_SHMEM`: MISSING mode on shmem.
  public static let missingShmem = Features(rawValue: CUFFD_FEATURE_MISSING_SHMEM)
  /// `UFFD_FEATURE_EVENT_UNMAP`: an event when a registered range is unmapped.
  public static let eventUnmap = Features(rawValue: CUFFD_FEATURE_EVENT_UNMAP)
  /// `UFFD_FEATURE_SIGBUS`: deliver SIGBUS to the faulting thread instead of a fault event.
  public static let sigbus = Features(rawValue: CUFFD_FEATURE_SIGBUS)
  /// `UFFD_FEATURE_THREAD_ID`: page-fault events carry the faulting thread's id.
  public static let threadID = Features(rawValue: CUFFD_FEATURE_THREAD_ID)
  /// `UFFD_FEATURE_MINOR_HUGETLBFS`: MINOR mode on hugetlbfs.
  public static let minorHugetlbfs = Features(rawValue: CUFFD_FEATURE_MINOR_HUGETLBFS)
  /// `UFFD_FEATURE_MINOR_SHMEM`: MINOR mode on shmem.
  public static let minorShmem = Features(rawValue: CUFFD_FEATURE_MINOR_SHMEM)
  /// `UFFD_FEATURE_EXACT_ADDRESS`: fault addresses are not rounded down to the page.
  public static let exactAddress = Features(rawValue: CUFFD_FEATURE_EXACT_ADDRESS)
  /// `UFFD_FEATURE_WP_HUGETLBFS_SHMEM`: WP mode on hugetlbfs and shmem.
  public static let wpHugetlbfsShmem = Features(rawValue: CUFFD_FEATURE_WP_HUGETLBFS_SHMEM)
  /// `UFFD_FEATURE_WP_UNPOPULATED`: WP applies to unpopulated anonymous pages too.
  public static let wpUnpopulated = Features(rawValue: CUFFD_FEATURE_WP_UNPOPULATED)
  /// `UFFD_FEATURE_POISON`: `UFFDIO_POISON` is supported.
  public static let poison = Features(rawValue: CUFFD_FEATURE_POISON)
  /// `UFFD_FEATURE_WP_ASYNC`: write-protect faults are resolved by the kernel (no event).
  public static let wpAsync = Features(rawValue: CUFFD_FEATURE_WP_ASYNC)
  /// `UFFD_FEATURE_MOVE`: `UFFDIO_MOVE` is supported (Linux 6.8+). Advertises support only: MOVE
  /// works without requesting it.
  public static let move = Features(rawValue: CUFFD_FEATURE_MOVE)

  /// Every feature with its lower-case name (the C constant without `UFFD_FEATURE_`).
  public static let allNamed: [(feature: Features, name: String)] = [
    (.pageFaultFlagWP, "pagefault_flag_wp"), (.eventFork, "event_fork"),
    (.eventRemap, "event_remap"), (.eventRemove, "event_remove"),
    (.missingHugetlbfs, "missing_hugetlbfs"), (.missingShmem, "missing_shmem"),
    (.eventUnmap, "event_unmap"), (.sigbus, "sigbus"), (.threadID, "thread_id"),
    (.minorHugetlbfs, "minor_hugetlbfs"), (.minorShmem, "minor_shmem"),
    (.exactAddress, "exact_address"), (.wpHugetlbfsShmem, "wp_hugetlbfs_shmem"),
    (.wpUnpopulated, "wp_unpopulated"), (.poison, "poison"), (.wpAsync, "wp_async"),
    (.move, "move"),
  ]

  /// The lower-case names of the features in this set; unknown bits as `bit<N>`.
  public var names: [String] {
    var names = Self.allNamed.filter { contains($0.feature) }.map(\.name)
    let known = Self.allNamed.reduce(Features()) { $0.union($1.feature) }
    let unknown = subtracting(known).rawValue
    for bit in 0..<64 where unknown & (1 << UInt64(bit)) != 0 { names.append("bit\(bit)") }
    return names
  }

  /// Looks a feature up by its lower-case name (`"move"`, `"sigbus"`, ...).
  public init?(name: String) {
    guard let entry = Self.allNamed.first(where: { $0.name == name.lowercased() }) else {
      return nil
    }
    self = entry.feature
  }

  public var description: String { "[" + names.joined(separator: ", ") + "]" }
}
