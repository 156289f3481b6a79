import Glibc
import Synchronization

/// The soft-dirty bits of this process's page tables (`CONFIG_MEM_SOFT_DIRTY`): bit 55 of a
/// `/proc/self/pagemap` entry is set when the page was written since the bits were last cleared,
/// and writing `4` to `/proc/self/clear_refs` clears them, for the whole process at once.
///
/// Because clearing is process-wide, every soft-dirty range of the process is registered here: a
/// sweep reads the bits of every range into that range's pending set, then clears once, so one
/// tracker's collection never erases another's writes. A sweep also reports a page that was
/// mapped at the previous sweep and is gone now (dropped with `MADV_DONTNEED`: its content changed
/// to zeros without a write, so no bit tells).
final class SoftDirtyPages: Sendable {
  /// The process's registry.
  static let shared = SoftDirtyPages()

  /// Whether this kernel keeps soft-dirty bits: a freshly mapped and written page reads back with
  /// bit 55 set (new mappings start soft-dirty), and `/proc/self/clear_refs` can be written.
  /// Probed once.
  static let isSupported: Bool = {
    guard access("/proc/self/clear_refs", W_OK) == 0 else { return false }
    let length = PageSize.base
    guard let page = mmap(nil, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0),
          page != MAP_FAILED
    else { return false }
    defer { _ = munmap(page, length) }
    page.storeBytes(of: 1, as: UInt64.self)
    guard let pagemap = PageMap(), let entry = pagemap.entry(at: UInt(bitPattern: page)) else { return false }
    return entry.isPresent && entry.isSoftDirty
  }()

  /// One tracked range: its pending written pages and which pages were mapped at the last sweep.
  final class Range: Sendable {
    let start: UInt
    let pages: Int
    fileprivate let state: Mutex<State>

    fileprivate struct State: ~Copyable {
      var pending: PageBitmap
      var mapped: PageBitmap
    }

    init(start: UInt, pages: Int) {
      self.start = start
      self.pages = pages
      state = Mutex(State(pending: PageBitmap(pageCount: pages), mapped: PageBitmap(pageCount: pages)))
    }
  }

  private let ranges = Mutex<[ObjectIdentifier: Range]>([:])

  /// Adds `range` and starts it from a clean slate: a sweep clears the bits (the other ranges'
  /// writes are kept in their pending sets), and what the sweep found in this range is forgotten
  /// (a new mapping reads all soft-dirty until the first clear).
  func add(_ range: Range) throws(UserfaultfdError) {
    try ranges.withLock { (all) throws(UserfaultfdError) in
      all[ObjectIdentifier(range)] = range
      do throws(UserfaultfdError) {
        try sweep(all)
      } catch {
        all[ObjectIdentifier(range)] = nil
        throw error
      }
      range.state.withLock { $0.pending.clearAll() }
    }
  }

  /// Stops tracking `range`.
  func remove(_ range: Range) {
    _ = ranges.withLock { $0.removeValue(forKey: ObjectIdentifier(range)) }
  }

  /// The pages of `range` written (or dropped) since its previous collection: one sweep of every
  /// range, then this range's pending set, emptied. Pages are reported at most once; a failed
  /// sweep loses nothing (pending pages stay for the next collection).
  func collect(_ range: Range) throws(UserfaultfdError) -> PageBitmap {
    try ranges.withLock { (all) throws(UserfaultfdError) -> PageBitmap in
      try sweep(all)
      return range.state.withLock { state in
        let written = state.pending
        state.pending.clearAll()
        return written
      }
    }
  }

  /// Pagemap entries read per pread (512 KiB of entries).
  static let entriesPerRead = 65536

  /// Reads every range's bits into its pending set, then clears the process's soft-dirty bits.
  /// Called with the registry locked.
  private func sweep(_ all: [ObjectIdentifier: Range]) throws(UserfaultfdError) {
    guard let pagemap = PageMap() else { throw .systemCallFailed("open(/proc/self/pagemap)", .current) }
    for range in all.values {
      var first = 0
      while first < range.pages {
        let count = min(Self.entriesPerRead, range.pages - first)
        guard let entries = pagemap.entries(at: range.start + UInt(first * PageSize.base), count: count) else {
          throw .systemCallFailed("pread(/proc/self/pagemap)", .current)
        }
        range.state.withLock { state in
          for (offset, entry) in entries.enumerated() {
            let page = first + offset
            let mapped = !entry.isHole
            if entry.isSoftDirty && mapped { state.pending.set(page) }
            if state.mapped.contains(page) && !mapped { state.pending.set(page) }
            if mapped { state.mapped.set(page) } else { state.mapped.clear(page..<page + 1) }
          }
        }
        first += count
      }
    }
    let fd = try valueOrErrno(retryOnInterrupt: true) { open("/proc/self/clear_refs", O_WRONLY | O_CLOEXEC) }
      .get(systemCall: "open(/proc/self/clear_refs)")
    defer { _ = close(fd) }
    // "4": CLEAR_REFS_SOFT_DIRTY (fs/proc/task_mmu.c).
    let written = valueOrErrno(retryOnInterrupt: true) { write(fd, "4", 1) }
    if case .failure(let error) = written { throw .systemCallFailed("write(/proc/self/clear_refs, 4)", error) }
  }
}
