import CUserfaultfd
import Glibc
import Synchronization

/// Tracks which pages of a range are written: ``collect()`` returns the pages written since
/// tracking started or since the previous collection, and protects them again in the same step,
/// so no write between "reported" and "protected again" is lost. What incremental snapshots, live
/// migration and write barriers need.
///
/// ```swift
/// let memory = try AnonymousMemory(length: 64 << 20)
/// let tracker = try DirtyTracker(memory: memory)   // the best backend this kernel offers
/// // ... writers run ...
/// let written = try tracker.collect()              // copy these pages out
/// tracker.stop()
/// ```
///
/// ## Backends
/// The backend is chosen when the tracker starts, from what the kernel offers, and is visible in
/// ``backend``: ``DirtyTrackingBackend/asyncWriteProtect`` (Linux 6.7+) where available, else
/// ``DirtyTrackingBackend/writeProtectFaults`` (Linux 5.7+ for anonymous memory, 5.19+ for shmem
/// and hugetlbfs), else ``DirtyTrackingBackend/softDirty`` (kernels built with
/// `CONFIG_MEM_SOFT_DIRTY`; anonymous and shmem memory; exact only while writers are paused around
/// ``collect()``). A kernel with none throws at setup, naming what is missing.
///
/// ## What "written" means
/// A page is reported when it was not write-protected at collection time: written since the
/// previous collection, or dropped (`MADV_DONTNEED`: its content changed to zeros, so a copy of
/// it is stale). Pages that were never touched are tracked like any other: a first write to them
/// is reported (with `UFFD_FEATURE_WP_UNPOPULATED`, Linux 6.4+, or because the synchronous backend
/// populated the range when it started on older kernels: ``populatedAtStart``). Tracking is in
/// base pages on anonymous and shmem memory (a transparent huge page is split by the first
/// protected write) and in huge pages on hugetlbfs.
///
/// ## What it cannot see
/// Unmapping part of the range ends tracking there: collections go on reporting the rest of the
/// range, but memory mapped again at those addresses is not registered, so its writes are not
/// seen. On hugetlbfs, wp-async does not report a page dropped with `MADV_DONTNEED` (the kernel
/// keeps its protection marker; it reads zeros afterwards, and its next write is reported). With
/// uffd-wp, a drop that runs *while* a collection runs may be reported before the kernel has
/// finished dropping: keep drops and collections apart there. The range may not be registered
/// with another userfaultfd (EBUSY). A forked child's writes are its own: the child does not
/// inherit the registration.
public final class DirtyTracker: @unchecked Sendable {
  // @unchecked: the stored properties are immutable after init except `state`, which is behind a
  // Mutex that every collection and (synchronous backend) every write fault takes.

  /// How writes are detected.
  public let backend: DirtyTrackingBackend
  /// The kind of memory tracked.
  public let kind: TrackedMemoryKind
  /// The first byte of the range.
  public let start: UnsafeMutableRawPointer
  /// The length of the range in bytes.
  public let length: Int
  /// The tracking granularity: the base page, or the huge page on hugetlbfs.
  public let pageSize: Int
  /// Whether the range was populated when tracking started (synchronous backend on anonymous
  /// memory, on a kernel without `UFFD_FEATURE_WP_UNPOPULATED`, before Linux 6.4): every page
  /// then holds memory.
  public let populatedAtStart: Bool

  /// The userfaultfd of the two write-protect backends; nil for soft-dirty.
  private let uffd: Userfaultfd?
  /// Whether this tracker registered the range (and unregisters it when it stops); false when the
  /// registration is another process's (``init(adopting:region:processID:)``).
  private let ownsRegistration: Bool
  /// soft-dirty: this range's entry in the process-wide registry; nil for the other backends.
  private let softDirty: SoftDirtyPages.Range?
  private let state: Mutex<State>
  /// uffd-wp: pages dropped by MADV_DONTNEED since the last collection: reported, and protected
  /// again (populated first before Linux 6.4: their next write would not fault otherwise). A lock
  /// of its own, which the handler thread takes while a collection holds `state`: the madvise
  /// caller waits until its remove event is read, and protecting pages fails with EAGAIN until then.
  private let removedPages: Mutex<PageBitmap>
  private let stopped = Atomic<Bool>(false)

  private struct State: ~Copyable {
    /// wp-async: the pagemap walker.
    var scanner: PagemapScanner?
    /// uffd-wp: pages whose first write the handler released since the last collection.
    var written: PageBitmap
    /// uffd-wp: faults whose page could not be un-protected (a writer may still wait there).
    var releaseFailures: Int = 0
  }

  /// Starts tracking `memory`, with `backend` or the best one this kernel offers.
  public convenience init(memory: AnonymousMemory, backend: DirtyTrackingBackend? = nil) throws(UserfaultfdError) {
    try self.init(
      start: memory.baseAddress, length: memory.length, kind: TrackedMemoryKind(memory),
      pageSize: memory.pageSize, backend: backend)
  }

  /// Starts tracking `length` bytes at `start`: registers the range with a userfaultfd of its own
  /// in write-protect mode and protects every page.
  ///
  /// - Parameters:
  ///   - start: the first byte, aligned to `pageSize`.
  ///   - length: bytes to track, a multiple of `pageSize`.
  ///   - kind: the memory's kind (it decides which kernels can track it).
  ///   - pageSize: the memory's page size: the base page, or 2 MiB / 1 GiB for hugetlbfs.
  ///   - backend: the backend to use; nil for the best this kernel offers.
  /// - Throws: ``UserfaultfdError/invalidArgument(_:_:)`` for a misaligned range or page size;
  ///   ``UserfaultfdError/notSupported(_:_:)`` naming the capability and Linux release a backend
  ///   needs when this kernel lacks it; the register ioctl's failure (EBUSY: another userfaultfd
  ///   registered the range; EINVAL: the memory does not support write protection). Nothing is
  ///   left registered on failure.
  public init(
    start: UnsafeMutableRawPointer, length: Int, kind: TrackedMemoryKind, pageSize: Int = PageSize.base,
    backend: DirtyTrackingBackend? = nil
  ) throws(UserfaultfdError) {
    let range = try PageRange(start, length: length, pageSize: pageSize, role: .range, operation: .dirtyTracking)
    let chosen: DirtyTrackingBackend
    if let backend { chosen = backend } else { chosen = try DirtyTrackingBackend.best(for: kind) }
    // Soft-dirty needs no userfaultfd (it is what a kernel without uffd-wp offers).
    let supported = chosen == .softDirty ? [] : try Userfaultfd.probeSupportedFeatures().features
    guard chosen.isAvailable(for: kind, supported: supported) else {
      throw .notSupported(
        .dirtyTracking,
        "the \(chosen) backend on \(kind.rawValue) memory needs \(chosen.requirement(for: kind)); this kernel"
          + " (\(kernelRelease())) lacks it")
    }
    self.backend = chosen
    self.kind = kind
    self.start = start
    self.length = length
    self.pageSize = pageSize
    ownsRegistration = true
    if chosen == .softDirty {
      let tracked = SoftDirtyPages.Range(start: range.start, pages: length / pageSize)
      uffd = nil
      softDirty = tracked
      populatedAtStart = false
      state = Mutex(State(scanner: nil, written: PageBitmap(pageCount: 0)))
      removedPages = Mutex(PageBitmap(pageCount: 0))
      try SoftDirtyPages.shared.add(tracked)
      return
    }
    var features = chosen.neededFeatures(for: kind)
    // Catches first writes to never-touched pages in the synchronous backend (Linux 6.4+); WP_ASYNC
    // already behaves this way, and asking for it there is harmless.
    if supported.contains(.wpUnpopulated) { features.insert(.wpUnpopulated) }
    if chosen == .writeProtectFaults { features.insert(.eventRemove) }
    let uffd = try Userfaultfd(features: features, options: .nonBlocking)
    let pages = length / pageSize
    self.uffd = uffd
    softDirty = nil
    // Only anonymous memory needs it: shmem and hugetlbfs keep a protection marker in an empty
    // page table entry since uffd-wp came to them (5.19); anonymous memory since WP_UNPOPULATED.
    self.populatedAtStart = chosen == .writeProtectFaults && kind == .anonymous && !features.contains(.wpUnpopulated)

    try uffd.register(start, length: length, mode: .writeProtect)
    do throws(UserfaultfdError) {
      switch chosen {
      case .asyncWriteProtect:
        let scanner = try PagemapScanner()
        // The first full protect: one walk, faster than UFFDIO_WRITEPROTECT over populated memory.
        try scanner.protectAll(range.start, range.end)
        state = Mutex(State(scanner: scanner, written: PageBitmap(pageCount: 0)))
        removedPages = Mutex(PageBitmap(pageCount: 0))
      case .writeProtectFaults:
        if populatedAtStart { try Self.populate(range.start, length, pageSize: pageSize) }
        try uffd.writeProtect(start, length: length)
        state = Mutex(State(scanner: nil, written: PageBitmap(pageCount: pages)))
        removedPages = Mutex(PageBitmap(pageCount: pages))
      case .softDirty:
        throw UserfaultfdError.notSupported(.dirtyTracking, "soft-dirty tracking takes no userfaultfd")  // handled above
      }
    } catch {
      try? uffd.removeWriteProtection(start, length: length)
      try? uffd.unregister(start, length: length)
      throw error
    }
    if chosen == .writeProtectFaults {
      try startFaultLoop()
    }
  }

  /// Watches the writes of another process, which offers its range (see ``MemoryOffer``): `uffd`
  /// is its userfaultfd, handed over and adopted (``Userfaultfd/init(adopting:origin:)``), opened
  /// non-blocking with write-protect faults, `region` (its addresses, shmem) registered for write
  /// protection by that process. The backend follows the handle: wp-async when it was opened with
  /// `UFFD_FEATURE_WP_ASYNC` (collections scan `/proc/PID/pagemap` of `processID`, which needs
  /// ptrace read access to it), else uffd-wp with a handler thread here. The registration stays
  /// the other process's: ``stop()`` un-protects the range and leaves it registered.
  ///
  /// - Throws: ``UserfaultfdError/invalidArgument(_:_:)`` for a misaligned region or a blocking
  ///   handle; ``UserfaultfdError/notSupported(_:_:)`` when the handle lacks write-protect faults;
  ///   the protect's failure (EPERM from PAGEMAP_SCAN: the range is not registered for wp-async).
  public init(adopting uffd: Userfaultfd, region: Range<Address>, processID: Int32) throws(UserfaultfdError) {
    let length = region.upperBound - region.lowerBound
    guard let start = UnsafeMutableRawPointer(bitPattern: region.lowerBound.rawValue), length > 0 else {
      throw .invalidArgument(.dirtyTracking, .nonPositiveLength(role: .range, length: length))
    }
    let range = try PageRange(start, length: length, role: .range, operation: .dirtyTracking)
    guard uffd.isNonBlocking else { throw .invalidArgument(.dirtyTracking, .handleIsBlocking) }
    guard uffd.features.contains(.pageFaultFlagWP) else {
      throw .notSupported(.dirtyTracking, "the handed-over userfaultfd lacks UFFD_FEATURE_PAGEFAULT_FLAG_WP (features: \(uffd.features))")
    }
    let chosen: DirtyTrackingBackend = uffd.features.contains(.wpAsync) ? .asyncWriteProtect : .writeProtectFaults
    let pages = length / PageSize.base
    backend = chosen
    kind = .shmem
    self.start = start
    self.length = length
    pageSize = PageSize.base
    populatedAtStart = false
    ownsRegistration = false
    self.uffd = uffd
    softDirty = nil
    switch chosen {
    case .asyncWriteProtect:
      let scanner = try PagemapScanner(pid: processID)
      try scanner.protectAll(range.start, range.end)
      state = Mutex(State(scanner: scanner, written: PageBitmap(pageCount: 0)))
      removedPages = Mutex(PageBitmap(pageCount: 0))
    default:
      try uffd.writeProtect(start, length: length)
      state = Mutex(State(scanner: nil, written: PageBitmap(pageCount: pages)))
      removedPages = Mutex(PageBitmap(pageCount: pages))
      try startFaultLoop()
    }
  }

  /// The uffd-wp backend's handler thread. Started after init (it calls back into `self`), so
  /// stored behind its own lock.
  private let faultLoopBox = Mutex<WriteFaultLoop?>(nil)
  private var faultLoop: WriteFaultLoop? { faultLoopBox.withLock { $0 } }

  private func startFaultLoop() throws(UserfaultfdError) {
    guard let uffd else { return }
    let base = UInt(bitPattern: start), end = base + UInt(length), page = pageSize
    let callbacks = WriteFaultLoop.Callbacks(
      writeFault: { [weak self] address in self?.releaseWrite(at: address) ?? true },
      removed: { [weak self] from, to in
        guard let self, to > base, from < end else { return }
        let first = Int((max(from, base) - base) / UInt(page))
        let last = Int((min(to, end) - base + UInt(page) - 1) / UInt(page))
        guard first < last else { return }
        self.removedPages.withLock { $0.set(first..<last) }
      })
    do {
      let loop = try WriteFaultLoop(uffd: uffd, callbacks: callbacks)
      faultLoopBox.withLock { $0 = loop }
    } catch {
      try? uffd.removeWriteProtection(start, length: length)
      try? uffd.unregister(start, length: length)
      throw error
    }
  }

  deinit { stop() }

  /// The synchronous backend's fault path: record the page, un-protect it (waking its writer).
  /// Under the state lock, so a collection never interleaves between the two. False when the
  /// kernel said EAGAIN (a remove event is pending): the loop tries again after reading it.
  private func releaseWrite(at address: UInt) -> Bool {
    let base = UInt(bitPattern: start)
    guard address >= base, address - base < UInt(length) else { return true }
    let index = Int((address - base) / UInt(pageSize))
    let page = base + UInt(index * pageSize)
    guard let uffd else { return true }
    return state.withLock { state in
      state.written.set(index)
      guard let pointer = UnsafeMutableRawPointer(bitPattern: page) else { return true }
      do throws(UserfaultfdError) {
        try uffd.removeWriteProtection(pointer, length: pageSize)
        return true
      } catch {
        if error.errno == .resourceTemporarilyUnavailable { return false }
        state.releaseFailures += 1
        return true
      }
    }
  }

  /// The pages written since tracking started or since the previous collection, protected again.
  ///
  /// Safe to call while writers run: a page's report and its re-protection are one step (under
  /// the page-table lock for wp-async; under the tracker's lock, which the fault handler takes
  /// too, for uffd-wp), so a write landing after it faults and is reported next time. Copy the
  /// reported pages after this returns: what you read then includes every write reported.
  ///
  /// - Throws: ``UserfaultfdError/invalidArgument(_:_:)`` with
  ///   ``InvalidArgument/serverStopped`` after ``stop()``; the kernel's refusal when part of the
  ///   range was unmapped or unregistered (nothing reported is lost: pages not yet protected again
  ///   are reported by the next successful collection).
  public func collect() throws(UserfaultfdError) -> WrittenPages {
    guard !stopped.load(ordering: .acquiring) else {
      throw .invalidArgument(.dirtyTracking, .serverStopped)
    }
    let base = UInt(bitPattern: start), end = base + UInt(length)
    switch backend {
    case .asyncWriteProtect:
      let runs = try state.withLock { (state) throws(UserfaultfdError) -> [Range<Address>] in
        guard let scanner = state.scanner else { return [] }
        return try scanner.collectWritten(base, end)
      }
      return WrittenPages(ranges: runs, pageSize: pageSize)
    case .softDirty:
      guard let softDirty else { return WrittenPages(ranges: [], pageSize: pageSize) }
      let written = try SoftDirtyPages.shared.collect(softDirty)
      var ranges: [Range<Address>] = []
      for run in written.runs() {
        appendRun(&ranges, base + UInt(run.lowerBound * pageSize), base + UInt(run.upperBound * pageSize))
      }
      return WrittenPages(ranges: ranges, pageSize: pageSize)
    case .writeProtectFaults:
      // EAGAIN means a remove event is being delivered: the handler thread reads it (it needs
      // neither lock this holds while waiting), then the whole step is tried again. Bits are
      // cleared only after every run is protected, so a retry or a failure loses nothing.
      // First let the handler finish what it has read: a drop whose madvise returned is then in
      // `removedPages` (the kernel releases the caller once the event is read, before it is handled).
      _ = faultLoop?.waitUntilReadEventsAreHandled()
      var attempt = 0
      while true {
        do {
          return try collectSynchronous(base)
        } catch where error.errno == .resourceTemporarilyUnavailable && attempt < Self.maxCollectRetries {
          attempt += 1
          usleep(1000)
        }
      }
    }
  }

  /// How many times a collection meeting EAGAIN (mappings changing) tries again, 1 ms apart.
  static let maxCollectRetries = 2000

  private func collectSynchronous(_ base: UInt) throws(UserfaultfdError) -> WrittenPages {
    guard let uffd else { return WrittenPages(ranges: [], pageSize: pageSize) }
    return try state.withLock { (state) throws(UserfaultfdError) -> WrittenPages in
      let removed = removedPages.withLock { $0 }
      let dirty = state.written.union(removed)
      var ranges: [Range<Address>] = []
      if populatedAtStart {
        // Dropped anonymous pages do not fault on their next write before Linux 6.4: give them
        // memory again before protecting them. Only the dropped pages: they are empty, so this
        // cannot fault on a protected page (whose handler would wait for this lock).
        for run in removed.runs() {
          try Self.populate(base + UInt(run.lowerBound * pageSize), run.count * pageSize, pageSize: pageSize)
        }
      }
      for run in dirty.runs() {
        let runStart = base + UInt(run.lowerBound * pageSize)
        let runLength = run.count * pageSize
        guard let pointer = UnsafeMutableRawPointer(bitPattern: runStart) else { continue }
        try uffd.writeProtect(pointer, length: runLength)
        appendRun(&ranges, runStart, runStart + UInt(runLength))
      }
      state.written.clearAll()
      // Only the drops this collection saw: one that arrived meanwhile stays for the next.
      removedPages.withLock { current in
        for run in removed.runs() { current.clear(run) }
      }
      return WrittenPages(ranges: ranges, pageSize: pageSize)
    }
  }

  /// Write faults whose page could not be un-protected (uffd-wp backend; 0 when all is well).
  public var releaseFailures: Int { state.withLock { $0.releaseFailures } }

  /// Whether ``stop()`` has run.
  public var isStopped: Bool { stopped.load(ordering: .acquiring) }

  /// Stops tracking: un-protects the range (waking any writer waiting on a fault), stops the
  /// handler thread and unregisters. Safe to call more than once; ``collect()`` throws afterwards.
  public func stop() {
    guard !stopped.exchange(true, ordering: .acquiringAndReleasing) else { return }
    if let softDirty { SoftDirtyPages.shared.remove(softDirty) }
    guard let uffd else { return }
    try? uffd.removeWriteProtection(start, length: length)
    faultLoop?.stop()
    // A fault read just before the loop stopped may still wait: waking the range releases it
    // (the pages are unprotected now, so its retried write succeeds).
    try? uffd.wake(start, length: length)
    if ownsRegistration { try? uffd.unregister(start, length: length) }
    uffd.close()
  }

  /// Makes every page of the range present without changing it: `MADV_POPULATE_WRITE` (Linux
  /// 5.14+), else one atomic add of zero per page (safe against concurrent writers).
  static func populate(_ start: UInt, _ length: Int, pageSize: Int) throws(UserfaultfdError) {
    guard let pointer = UnsafeMutableRawPointer(bitPattern: start) else { return }
    switch nothingOrErrno(retryOnInterrupt: true, { madvise(pointer, length, CUFFD_MADV_POPULATE_WRITE) }) {
    case .success: return
    case .failure(.invalidArgument):
      cuffd_populate_by_atomic_add(start, length, pageSize)
    case .failure(let error):
      throw .systemCallFailed("madvise(MADV_POPULATE_WRITE, \(length) bytes)", error)
    }
  }
}

/// `uname -r`, for messages.
func kernelRelease() -> String {
  var info = utsname()
  guard uname(&info) == 0 else { return "unknown" }
  return withUnsafeBytes(of: &info.release) { raw in
    String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
  }
}
