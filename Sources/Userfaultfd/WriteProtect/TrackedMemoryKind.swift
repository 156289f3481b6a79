/// What kind of memory a write-protected range is: the kernel added write protection for each
/// kind in a different release, so the kind decides which backends can work on it.
public enum TrackedMemoryKind: String, Sendable, Hashable, CaseIterable {
  /// Private anonymous memory (`mmap(MAP_PRIVATE | MAP_ANONYMOUS)`, the heap): uffd-wp since
  /// Linux 5.7, in base pages (a transparent huge page is split by its first protected write).
  case anonymous
  /// Shared memory (`MAP_SHARED | MAP_ANONYMOUS`, memfd, tmpfs): uffd-wp since Linux 5.19.
  case shmem
  /// hugetlbfs memory (`MAP_HUGETLB`), tracked in whole huge pages: uffd-wp since Linux 5.19.
  case hugetlb

  /// The kind of `memory`.
  public init(_ memory: AnonymousMemory) {
    if memory.pageSize != PageSize.base {
      self = .hugetlb
    } else {
      self = memory.sharing == .shared ? .shmem : .anonymous
    }
  }
}
