import Glibc
import CUserfaultfd
import SystemPackage

/// An owned anonymous memory mapping (`mmap(MAP_ANONYMOUS)`), unmapped when the last reference
/// goes away. Page-size aware, optionally aligned (2 MiB for huge pages), with the madvise and
/// mprotect calls userfaultfd work needs, so neither users nor tests call raw mmap.
///
/// The mapping is shared freely between threads: it is plain memory, and synchronising access to
/// its bytes is the caller's business.
public final class AnonymousMemory: @unchecked Sendable {
  // @unchecked: the stored properties are immutable; the bytes behind them are the caller's to
  // share, as with any memory (the package's own threads touch them only through the kernel).
  /// The first byte of the mapping, aligned as requested.
  public let baseAddress: UnsafeMutableRawPointer
  /// The mapping's length in bytes: a multiple of the page size.
  public let length: Int
  /// Whether the mapping is private (copy-on-write across fork) or shared (shmem).
  public let sharing: Sharing
  /// The size of the pages behind the mapping: the base page, or 2 MiB for
  /// ``hugePages(length:sharing:)``. Userfaultfd operations on it work in whole pages of this size.
  public let pageSize: Int
  /// For ``memfd(length:)`` memory: the memfd behind it, so the same pages can be mapped again
  /// (``mapAgain()``), as MINOR faults and CONTINUE need. Closed with the mapping.
  public let file: FileDescriptor?

  /// Private or shared anonymous memory.
  public enum Sharing: Sendable, Hashable {
    /// `MAP_PRIVATE`: ordinary anonymous memory; what UFFDIO_MOVE works on.
    case `private`
    /// `MAP_SHARED`: shmem-backed; supports MINOR mode and UFFDIO_CONTINUE, not UFFDIO_MOVE.
    case shared
  }

  /// Page protections (`PROT_*`).
  public struct Protection: OptionSet, Sendable, Hashable, CustomStringConvertible {
    /// The raw value, as the kernel interface spells it.
    public let rawValue: Int32
    /// Creates protections from `PROT_*` bits.
    public init(rawValue: Int32) { self.rawValue = rawValue }
    /// `PROT_READ`.
    public static let read = Protection(rawValue: PROT_READ)
    /// `PROT_WRITE`.
    public static let write = Protection(rawValue: PROT_WRITE)
    /// `PROT_EXEC`.
    public static let execute = Protection(rawValue: PROT_EXEC)
    /// `PROT_NONE`: no access.
    public static let none: Protection = []
    /// Read and write, the default.
    public static let readWrite: Protection = [.read, .write]
    /// Every bit this package passes to mmap(2) and mprotect(2): read, write and execute.
    public static let known: Protection = [.read, .write, .execute]

    /// The protection as C spells it, `PROT_READ|PROT_WRITE` or `PROT_NONE` (unknown bits in hex).
    public var description: String {
      guard !isEmpty else { return "PROT_NONE" }
      var names: [String] = []
      if contains(.read) { names.append("PROT_READ") }
      if contains(.write) { names.append("PROT_WRITE") }
      if contains(.execute) { names.append("PROT_EXEC") }
      let unknown = subtracting(.known).rawValue
      if unknown != 0 { names.append("0x" + String(UInt32(bitPattern: unknown), radix: 16)) }
      return names.joined(separator: "|")
    }
  }

  /// madvise(2) advice this package uses.
  public struct Advice: RawRepresentable, Sendable, Hashable, CustomStringConvertible {
    /// The `MADV_*` value.
    public let rawValue: Int32

    /// Advice with the `MADV_*` value `rawValue`.
    public init(rawValue: Int32) { self.rawValue = rawValue }

    /// `MADV_DONTNEED`: drop the pages; private memory then reads zero (or faults if registered).
    public static let dontNeed = Advice(rawValue: CUFFD_MADV_DONTNEED)
    /// `MADV_DONTFORK`: a forked child does not inherit the range, so its pages stay exclusively
    /// mapped and UFFDIO_MOVE keeps working after fork.
    public static let dontFork = Advice(rawValue: CUFFD_MADV_DONTFORK)
    /// `MADV_DOFORK`: undo `dontFork`.
    public static let doFork = Advice(rawValue: CUFFD_MADV_DOFORK)
    /// `MADV_HUGEPAGE`: back the range with transparent huge pages where possible.
    public static let hugePage = Advice(rawValue: CUFFD_MADV_HUGEPAGE)
    /// `MADV_NOHUGEPAGE`: never use transparent huge pages here.
    public static let noHugePage = Advice(rawValue: CUFFD_MADV_NOHUGEPAGE)
    /// `MADV_WIPEONFORK`: a forked child sees the range zero-filled (private memory only).
    public static let wipeOnFork = Advice(rawValue: CUFFD_MADV_WIPEONFORK)
    /// `MADV_KEEPONFORK`: undo `wipeOnFork`.
    public static let keepOnFork = Advice(rawValue: CUFFD_MADV_KEEPONFORK)
    /// `MADV_POPULATE_READ` (Linux 5.14+): fault the pages in readable.
    public static let populateRead = Advice(rawValue: CUFFD_MADV_POPULATE_READ)
    /// `MADV_POPULATE_WRITE` (Linux 5.14+): fault the pages in writable, allocating them.
    public static let populateWrite = Advice(rawValue: CUFFD_MADV_POPULATE_WRITE)

    /// The advice as C spells it, `MADV_WIPEONFORK`; `MADV_<n>` for a value this package does not name.
    public var description: String {
      switch self {
      case .dontNeed: "MADV_DONTNEED"
      case .dontFork: "MADV_DONTFORK"
      case .doFork: "MADV_DOFORK"
      case .hugePage: "MADV_HUGEPAGE"
      case .noHugePage: "MADV_NOHUGEPAGE"
      case .wipeOnFork: "MADV_WIPEONFORK"
      case .keepOnFork: "MADV_KEEPONFORK"
      case .populateRead: "MADV_POPULATE_READ"
      case .populateWrite: "MADV_POPULATE_WRITE"
      default: "MADV_\(rawValue)"
      }
    }

    /// Advice the kernel accepts on private memory only (EINVAL on a shared mapping).
    var needsPrivateMemory: Bool { self == .wipeOnFork || self == .keepOnFork }
  }

  /// The largest alignment: 1 GiB, the largest page size.
  public static let maxAlignment = 1 << 30
  /// The largest length: 128 TiB, the user address space of a 4-level page table.
  public static let maxLength = 1 << 47

  /// Maps `length` bytes (rounded up to whole pages) of anonymous memory.
  ///
  /// - Parameters:
  ///   - length: 1 to ``maxLength`` bytes.
  ///   - alignment: a power of two from the page size to ``maxAlignment``; use ``PageSize/huge``
  ///     for memory that should move as whole 2 MiB pages.
  ///   - protection: the pages' protection (read and write unless given).
  ///   - sharing: private (copy-on-write across fork; what MOVE needs) or shared.
  ///   - populate: allocate every page now instead of on first touch, whatever the protection:
  ///     the pages are allocated while the mapping is still writable, then given `protection`.
  ///
  /// - Throws: ``UserfaultfdError/invalidArgument(_:_:)`` for a length or alignment out of range
  ///   or protection bits other than read, write and execute; `systemCallFailed` when the kernel
  ///   cannot map or allocate the memory (nothing stays mapped then).
  public init(
    length: Int, alignment: Int = PageSize.base, protection: Protection = .readWrite,
    sharing: Sharing = .private, populate: Bool = false
  ) throws(UserfaultfdError) {
    let page = PageSize.base
    guard length > 0 else {
      throw .invalidArgument(.memory, .nonPositiveLength(role: .range, length: length))
    }
    guard alignment >= page, alignment <= Self.maxAlignment, alignment & (alignment - 1) == 0 else {
      throw .invalidArgument(.memory, .badAlignment(alignment, pageSize: page, max: Self.maxAlignment))
    }
    guard length <= Self.maxLength else {
      throw .invalidArgument(.memory, .lengthTooLarge(length, max: Self.maxLength))
    }
    guard protection.isSubset(of: .known) else {
      throw .invalidArgument(.memory, .unknownProtectionBits(protection.subtracting(.known).rawValue))
    }
    let (rounded, overflow) = length.addingReportingOverflow(page - 1)
    let mapped = rounded & ~(page - 1)
    let (reservation, overflow2) = mapped.addingReportingOverflow(alignment - page)
    guard !overflow, !overflow2 else {
      throw .invalidArgument(.memory, .lengthTooLarge(length, max: Self.maxLength))
    }
    let flags = MAP_ANONYMOUS | (sharing == .private ? MAP_PRIVATE : MAP_SHARED) | MAP_NORESERVE
    // Pages to populate are allocated by writing them, so the mapping starts writable and gets
    // its protection after (a read-only or PROT_NONE mapping cannot be populated for writing).
    let initial = populate ? Protection.readWrite : protection
    // Reserve `alignment - page` extra bytes, then trim both ends to the aligned window.
    guard let raw = mmap(nil, reservation, initial.rawValue, flags, -1, 0),
          raw != cuffd_map_failed()
    else { throw .systemCallFailed("mmap(\(reservation) bytes)", .current) }
    let start = UInt(bitPattern: raw)
    let aligned = (start + UInt(alignment - 1)) & ~UInt(alignment - 1)
    let head = Int(aligned - start)
    let tail = reservation - head - mapped
    if head > 0 { _ = munmap(raw, head) }
    if tail > 0 { _ = munmap(raw + head + mapped, tail) }
    self.baseAddress = raw + head
    self.length = mapped
    self.sharing = sharing
    self.pageSize = page
    self.file = nil
    // On a throw from here the object is released and deinit unmaps the memory.
    if populate {
      try populateAll()
      if protection != initial { try protect(protection) }
    }
  }

  private init(adopting base: UnsafeMutableRawPointer, length: Int, sharing: Sharing, pageSize: Int, file: FileDescriptor?) {
    self.baseAddress = base
    self.length = length
    self.sharing = sharing
    self.pageSize = pageSize
    self.file = file
  }

  /// Maps `length` bytes (rounded up to 2 MiB) of hugetlbfs memory in 2 MiB pages
  /// (`MAP_HUGETLB`), private or shared. The pages come from the kernel's reserved pool, and the
  /// mapping fails at once (`ENOMEM`) when the pool has too few free pages.
  ///
  /// - Throws: ``UserfaultfdError/systemCallFailed(_:_:)`` naming `vm.nr_hugepages` when no huge
  ///   pages are free.
  public static func hugePages(length: Int, sharing: Sharing = .private) throws(UserfaultfdError) -> AnonymousMemory {
    let huge = 2 << 20
    guard length > 0, length <= maxLength else {
      throw .invalidArgument(.memory, length <= 0 ? .nonPositiveLength(role: .range, length: length) : .lengthTooLarge(length, max: maxLength))
    }
    let rounded = (length + huge - 1) & ~(huge - 1)
    let flags = MAP_ANONYMOUS | MAP_HUGETLB | Int32(CUFFD_MAP_HUGE_2MB) | (sharing == .private ? MAP_PRIVATE : MAP_SHARED)
    guard let raw = mmap(nil, rounded, PROT_READ | PROT_WRITE, flags, -1, 0), raw != cuffd_map_failed() else {
      throw .systemCallFailed(
        "mmap(MAP_HUGETLB, \(rounded >> 21) x 2 MiB: reserve them with vm.nr_hugepages)", .current)
    }
    return AnonymousMemory(adopting: raw, length: rounded, sharing: sharing, pageSize: huge, file: nil)
  }

  /// Maps `length` bytes (rounded up to whole pages) of a new memfd: shared memory (shmem) with a
  /// descriptor, ``file``, so the same pages can be mapped a second time (``mapAgain()``). One view
  /// registered in MINOR mode and another that fills the page cache is how UFFDIO_CONTINUE is used.
  public static func memfd(length: Int) throws(UserfaultfdError) -> AnonymousMemory {
    let page = PageSize.base
    guard length > 0, length <= maxLength else {
      throw .invalidArgument(.memory, length <= 0 ? .nonPositiveLength(role: .range, length: length) : .lengthTooLarge(length, max: maxLength))
    }
    let rounded = (length + page - 1) & ~(page - 1)
    let fd = cuffd_memfd_create("userfaultfd", UInt32(CUFFD_MFD_CLOEXEC))
    guard fd >= 0 else { throw .systemCallFailed("memfd_create", .current) }
    guard ftruncate(fd, off_t(rounded)) == 0 else {
      let error = Errno.current
      _ = close(fd)
      throw .systemCallFailed("ftruncate(memfd, \(rounded))", error)
    }
    do {
      return try map(file: fd, length: rounded)
    } catch {
      _ = close(fd)
      throw error
    }
  }

  /// A second mapping of the same ``memfd(length:)`` pages (it keeps its own duplicate of the
  /// descriptor).
  ///
  /// - Throws: ``UserfaultfdError/invalidArgument(_:_:)`` for memory that is not memfd-backed.
  public func mapAgain() throws(UserfaultfdError) -> AnonymousMemory {
    guard let file else { throw .invalidArgument(.memory, .notFileBacked) }
    let copy = dup(file.rawValue)
    guard copy >= 0 else { throw .systemCallFailed("dup", .current) }
    do {
      return try Self.map(file: copy, length: length)
    } catch {
      _ = close(copy)
      throw error
    }
  }

  private static func map(file fd: Int32, length: Int) throws(UserfaultfdError) -> AnonymousMemory {
    guard let raw = mmap(nil, length, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0), raw != cuffd_map_failed() else {
      throw .systemCallFailed("mmap(memfd)", .current)
    }
    return AnonymousMemory(
      adopting: raw, length: length, sharing: .shared, pageSize: PageSize.base, file: FileDescriptor(rawValue: fd))
  }

  deinit {
    _ = munmap(baseAddress, length)
    if let file { _ = close(file.rawValue) }
  }

  /// Allocates every page of the fresh mapping now: `MADV_POPULATE_WRITE` (Linux 5.14+), or on
  /// older kernels by writing a zero to each page, one fault at a time. Called from `init` only,
  /// while the memory is still all zeros and mapped read-write: on such a mapping EINVAL can only
  /// mean the kernel does not know the advice (no argument of the caller's can cause it), and the
  /// stores cannot fault.
  private func populateAll() throws(UserfaultfdError) {
    do {
      try advise(.populateWrite)
    } catch .systemCallFailed(_, .invalidArgument) {
      let page = PageSize.base
      var offset = 0
      while offset < length {
        (baseAddress + offset).storeBytes(of: 0, as: UInt8.self)  // a write fault allocates the page
        offset += page
      }
    }
  }

  /// The page-aligned subrange `offset..<offset+length` (all of it by default), checked.
  private func subrange(
    _ offset: Int, _ length: Int?, _ call: String
  ) throws(UserfaultfdError) -> (UnsafeMutableRawPointer, Int) {
    let length = length ?? (self.length - offset)
    guard offset >= 0, offset % PageSize.base == 0 else {
      throw .invalidArgument(.memory, .offsetMisaligned(offset: offset, pageSize: PageSize.base))
    }
    guard length > 0, offset <= self.length, length <= self.length - offset else {
      throw .invalidArgument(.memory, .outsideMapping(offset: offset, length: length, mappingLength: self.length))
    }
    return (baseAddress + offset, length)
  }

  /// Applies `advice` to `length` bytes at `offset` (the whole mapping by default).
  ///
  /// - Throws: ``UserfaultfdError/invalidArgument(_:_:)`` for a subrange outside the mapping, or
  ///   advice the kernel takes on private memory only given for shared memory;
  ///   `systemCallFailed` naming the advice (and, for EINVAL, what the kernel refused).
  public func advise(_ advice: Advice, offset: Int = 0, length: Int? = nil) throws(UserfaultfdError) {
    let (start, count) = try subrange(offset, length, "madvise")
    if advice.needsPrivateMemory, sharing == .shared {
      throw .invalidArgument(.memory, .adviceNeedsPrivateMemory(advice.description))
    }
    try nothingOrErrno(retryOnInterrupt: true) { madvise(start, count, advice.rawValue) }
      .get(systemCall: "madvise(\(advice))") { errno in
        errno == .invalidArgument ? Self.whyAdviceRefused(advice) : nil
      }
  }

  /// What an EINVAL from madvise(`advice`) on this package's memory means.
  private static func whyAdviceRefused(_ advice: Advice) -> String {
    switch advice {
    case .populateRead, .populateWrite:
      "the kernel predates \(advice) (Linux 5.14), or the protection forbids the access it makes"
    case .hugePage, .noHugePage:
      "this kernel has no transparent huge pages (CONFIG_TRANSPARENT_HUGEPAGE)"
    case .wipeOnFork, .keepOnFork:
      "\(advice) needs private anonymous memory (Linux 4.14)"
    case .dontNeed:
      "the range is locked (mlock) or not ordinary memory"
    default:
      "this kernel does not know advice \(advice.rawValue)"
    }
  }

  /// Changes the protection of `length` bytes at `offset` (the whole mapping by default).
  ///
  /// - Throws: ``UserfaultfdError/invalidArgument(_:_:)`` for a subrange outside the mapping or
  ///   protection bits other than read, write and execute (nothing changed);
  ///   `systemCallFailed` naming the protection.
  public func protect(_ protection: Protection, offset: Int = 0, length: Int? = nil) throws(UserfaultfdError) {
    guard protection.isSubset(of: .known) else {
      throw .invalidArgument(.memory, .unknownProtectionBits(protection.subtracting(.known).rawValue))
    }
    let (start, count) = try subrange(offset, length, "mprotect")
    try nothingOrErrno(retryOnInterrupt: true) { mprotect(start, count, protection.rawValue) }
      .get(systemCall: "mprotect(\(protection))") { errno in
        switch errno {
        case .noMemory: "splitting the mapping would pass the process's limit of mappings (vm.max_map_count)"
        case .permissionDenied: "the memory cannot take \(protection) (a security policy refuses it)"
        default: nil
        }
      }
  }

  /// Moves every page of this mapping to `destination` (same length) in one step, leaving this
  /// mapping in place and empty: `mremap(MREMAP_MAYMOVE | MREMAP_FIXED | MREMAP_DONTUNMAP)`. If
  /// this range is registered with a userfaultfd it stays registered, so every access faults; the
  /// pause of a concurrent compaction. Both 2 MiB-aligned, whole page tables move.
  public func movePages(to destination: AnonymousMemory) throws(UserfaultfdError) {
    guard destination.length == length else {
      throw .invalidArgument(.memory, .lengthMismatch(expected: length, actual: destination.length))
    }
    guard destination !== self else { throw .invalidArgument(.memory, .sameMapping) }
    let result = cuffd_mremap(
      baseAddress, length, length, CUFFD_MREMAP_MAYMOVE | CUFFD_MREMAP_FIXED | CUFFD_MREMAP_DONTUNMAP,
      destination.baseAddress)
    if result == cuffd_map_failed() { throw .systemCallFailed("mremap(MREMAP_DONTUNMAP)", .current) }
  }

  /// The mapping as raw bytes.
  public var bytes: UnsafeMutableRawBufferPointer {
    UnsafeMutableRawBufferPointer(start: baseAddress, count: length)
  }

  /// The address of the page at `index`, or nil past the end.
  public func page(_ index: Int) -> UnsafeMutableRawPointer? {
    guard index >= 0, index < length / PageSize.base else { return nil }
    return baseAddress + index * PageSize.base
  }
}
