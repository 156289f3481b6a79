import CUserfaultfd
import Glibc
import Synchronization
import SystemPackage

/// A consistent point-in-time copy of a memory range, written to a file while the range's writers
/// keep running: QEMU's background snapshot, for any memory.
///
/// ``cut()`` write-protects the whole range; from then on a background thread copies pages to the
/// file, and a writer's first write to a page not yet copied faults: the page is copied first,
/// then un-protected, and the write goes ahead. No writer waits longer than one page copy, and
/// extra memory stays at a page or so, where `fork()` copy-on-write can double the range.
///
/// ```swift
/// let snapshot = try LiveSnapshot(memory: memory, file: file, resolver: .faultingThread)
/// pauseWriters()                 // only around the cut
/// try snapshot.cut()
/// resumeWriters()
/// let report = try snapshot.finish()
/// ```
///
/// ## The cut
/// Write-protecting a range takes time (milliseconds per GiB) and is not atomic across its pages:
/// a writer running during ``cut()`` could write a page already protected (copied as before the
/// write) and then one not yet protected (copied as after). For a point-in-time copy, pause the
/// writers around ``cut()`` only, as QEMU pauses its vCPUs; ``LiveSnapshotReport/cutSeconds``
/// says how long that was.
///
/// ## Resolvers
/// - ``Resolver/handlerThread``: a thread of this object's handles the write faults: for writers
///   in another process (a VM's guest memory shared with this one) or writers that must not take
///   signals.
/// - ``Resolver/faultingThread``: `UFFD_FEATURE_SIGBUS`: the writing thread itself gets SIGBUS,
///   and the package's handler copies the page and un-protects it in that thread (no thread
///   switch: several times cheaper per faulting write). For writers in this process. A system call
///   that writes into a protected page (`read(2)` into it) fails with EFAULT instead of waiting.
///
/// ## Memory that was never touched
/// With `UFFD_FEATURE_WP_UNPOPULATED` (Linux 6.4+) writes to never-touched pages are caught like
/// any other; before it the range is populated when the snapshot is set up
/// (``populatedFirst``), since those writes would not fault.
///
/// Do not drop (`MADV_DONTNEED`) or unmap memory under a running snapshot: a page dropped before it
/// was copied is copied as zeros. In an incremental series (`incremental: true`) a drop between
/// cuts is not a write: the next layer does not hold the page (restored, it keeps its content from
/// the earlier layer, where the memory now reads zeros).
public final class LiveSnapshot: @unchecked Sendable {
  // @unchecked: the stored properties are immutable after init, except `phase` (a Mutex) and the
  // handler-thread and copier references (behind it); the C context is written before anything is
  // armed and freed only after every thread that could use it has stopped.

  /// Who copies a page when a writer reaches it first.
  public enum Resolver: String, Sendable, Hashable, CaseIterable {
    /// A handler thread reading write-protect faults from the userfaultfd.
    case handlerThread = "handler-thread"
    /// The writing thread itself, in a SIGBUS handler (`UFFD_FEATURE_SIGBUS`).
    case faultingThread = "sigbus"
  }

  /// How faulting writes are resolved.
  public let resolver: Resolver
  /// The first byte of the range (in the other process's address space for a snapshot made with
  /// ``init(adopting:region:view:pageSize:file:fileOffset:stagingBytes:)``: never dereference it here).
  public let start: UnsafeMutableRawPointer
  /// The length of the range in bytes.
  public let length: Int
  /// The memory's page size (the copy's granularity).
  public let pageSize: Int
  /// Whether the range was populated at setup (anonymous memory without
  /// `UFFD_FEATURE_WP_UNPOPULATED`, before Linux 6.4).
  public let populatedFirst: Bool

  private let uffd: Userfaultfd
  /// Whether this snapshot registered the range (and unregisters it at the end); false when the
  /// registration is another process's (``init(adopting:region:view:pageSize:file:fileOffset:stagingBytes:)``).
  private let ownsRegistration: Bool
  private let file: FileDescriptor
  private let context: OpaquePointer
  private let sigbusSlot: Int32
  private let phase = Mutex<Phase>(.armed)
  private let faultLoop: WriteFaultLoop?
  private let copierBox = Mutex<DedicatedThread?>(nil)
  private let timing = Mutex<(cut: Double, cutAt: Double)>((0, 0))

  private enum Phase { case armed, cutting, copying, tracking, finished }

  /// Whether this snapshot is the base of a series of diff layers
  /// (``cutDiff(into:fileOffset:)``): it then keeps tracking writes after each copy finishes.
  public let isIncremental: Bool
  /// Layers cut so far (the base counts; 0 before the first cut).
  public var layerCount: Int { layers.load(ordering: .acquiring) }
  private let layers = Atomic<Int>(0)
  /// Pages in the layer being copied.
  private let layerPages = Atomic<Int>(0)

  /// Pages the background copier handles per step (one pwrite and one un-protect ioctl each).
  static let chunkPages = 64

  /// The default staging buffer: 1 MiB, 256 base pages a writer's fault can copy into without
  /// waiting on the file (see ``init(start:length:kind:pageSize:file:fileOffset:resolver:stagingBytes:incremental:)``).
  public static let defaultStagingBytes = 1 << 20
  /// The largest staging buffer accepted.
  public static let maxStagingBytes = 256 << 20

  /// Sets up a snapshot of `memory` into `file` at `fileOffset` (the file receives `memory.length`
  /// bytes there). Nothing is protected until ``cut()``.
  public convenience init(
    memory: AnonymousMemory, file: FileDescriptor, fileOffset: Int = 0, resolver: Resolver,
    stagingBytes: Int = LiveSnapshot.defaultStagingBytes, incremental: Bool = false
  ) throws(UserfaultfdError) {
    try self.init(start: memory.baseAddress, length: memory.length, kind: TrackedMemoryKind(memory),
                  pageSize: memory.pageSize, file: file, fileOffset: fileOffset, resolver: resolver,
                  stagingBytes: stagingBytes, incremental: incremental)
  }

  /// Sets up a snapshot of `length` bytes at `start` into `file` at `fileOffset`: registers the
  /// range for write protection (populating it first on kernels before 6.4) and starts the
  /// resolver. Nothing is protected until ``cut()``.
  ///
  /// A writer's fault copies its page into a staging buffer of `stagingBytes` (a memory copy, a
  /// microsecond or less) and the background thread writes it to the file: a buffered write can
  /// sleep for milliseconds when the kernel throttles dirty page cache, and no writer should wait
  /// on that. When every staging page is taken, the fault writes the file itself
  /// (``LiveSnapshotReport/faultsThatWroteTheFile``). The buffer is mapped, not touched, at setup:
  /// it costs memory only as far as it is used (``LiveSnapshotReport/stagingPeakPages``).
  ///
  /// `stagingBytes` is 0 ... ``maxStagingBytes``; whole pages of `pageSize` are used (0 pages for
  /// a 1 GiB hugetlbfs page and the default: faults then write the file).
  ///
  /// `incremental` makes this snapshot the base of a series: after each copy the range stays
  /// registered and every first write is recorded (the copier leaves pages protected, and a fault
  /// un-protects its page), so ``cutDiff(into:fileOffset:)`` can write a diff layer of exactly the
  /// pages written since the previous cut. ``cancel()`` ends the series.
  ///
  /// - Throws: ``UserfaultfdError/invalidArgument(_:_:)`` for a misaligned range, a negative
  ///   offset or a staging size out of range; ``UserfaultfdError/notSupported(_:_:)`` naming the capability and Linux release
  ///   missing (uffd-wp: 5.7 anonymous, 5.19 shmem and hugetlbfs; SIGBUS mode: 4.14);
  ///   the register ioctl's failure. Nothing is left registered on failure.
  public init(
    start: UnsafeMutableRawPointer, length: Int, kind: TrackedMemoryKind, pageSize: Int = PageSize.base,
    file: FileDescriptor, fileOffset: Int = 0, resolver: Resolver, stagingBytes: Int = LiveSnapshot.defaultStagingBytes,
    incremental: Bool = false
  ) throws(UserfaultfdError) {
    let range = try PageRange(start, length: length, pageSize: pageSize, role: .range, operation: .liveSnapshot)
    guard fileOffset >= 0, fileOffset <= Int.max - length else {
      throw .invalidArgument(.liveSnapshot, .outOfRange(parameter: "fileOffset", value: fileOffset, valid: 0...(Int.max - length)))
    }
    guard (0...Self.maxStagingBytes).contains(stagingBytes) else {
      throw .invalidArgument(.liveSnapshot, .outOfRange(parameter: "stagingBytes", value: stagingBytes, valid: 0...Self.maxStagingBytes))
    }
    let supported = try Userfaultfd.probeSupportedFeatures().features
    let wp = DirtyTrackingBackend.writeProtectFaults
    var features = wp.neededFeatures(for: kind)
    guard supported.isSuperset(of: features) else {
      throw .notSupported(.liveSnapshot, "a live snapshot of \(kind.rawValue) memory needs \(wp.requirement(for: kind));"
        + " this kernel (\(kernelRelease())) lacks it")
    }
    if resolver == .faultingThread {
      guard supported.contains(.sigbus) else {
        throw .notSupported(.liveSnapshot, "the in-thread resolver needs UFFD_FEATURE_SIGBUS (Linux 4.14 or later)")
      }
      features.insert(.sigbus)
    }
    if supported.contains(.wpUnpopulated) { features.insert(.wpUnpopulated) }
    let uffd = try Userfaultfd(features: features, options: .nonBlocking)
    guard let context = cuffd_snapshot_context_create(
      uffd.coreDescriptor, file.rawValue, Int64(fileOffset), range.start, length, pageSize, stagingBytes / pageSize,
      range.start)
    else { throw .systemCallFailed("allocating the snapshot's page states and staging buffer", .current) }
    if incremental && cuffd_snapshot_enable_tracking(context) != 0 {
      cuffd_snapshot_context_destroy(context)
      throw .systemCallFailed("allocating the snapshot's write marks", .current)
    }
    self.isIncremental = incremental
    self.ownsRegistration = true
    self.resolver = resolver
    self.start = start
    self.length = length
    self.pageSize = pageSize
    // Anonymous memory only: shmem and hugetlbfs keep protection markers in empty entries (5.19+).
    self.populatedFirst = kind == .anonymous && !features.contains(.wpUnpopulated)
    self.uffd = uffd
    self.file = file
    self.context = context

    var slot: Int32 = -1
    do throws(UserfaultfdError) {
      if populatedFirst { try DirtyTracker.populate(range.start, length, pageSize: pageSize) }
      if resolver == .faultingThread {
        guard cuffd_sigbus_install() == 0 else { throw .systemCallFailed("sigaction(SIGBUS)", .current) }
        slot = cuffd_sigbus_claim(
          range.start, length, uffd.coreDescriptor, pageSize, CUFFD_SIGBUS_FAIL_RETRY,
          cuffd_snapshot_resolve_write_fault, UnsafeMutableRawPointer(context))
        guard slot >= 0 else {
          throw .invalidArgument(
            .liveSnapshot, Errno.current == .fileExists
              ? .overlapsLiveRegion(Address(rawValue: range.start)..<Address(rawValue: range.end))
              : .tooManyRegions(max: Int(CUFFD_SIGBUS_MAX_REGIONS)))
        }
      }
      do {
        try uffd.register(start, length: length, mode: .writeProtect)
      } catch {
        if slot >= 0 { cuffd_sigbus_release(slot) }
        slot = -1
        throw error
      }
      if slot >= 0 { cuffd_sigbus_activate(slot) }
      if resolver == .handlerThread {
        do {
          faultLoop = try Self.startFaultLoop(uffd: uffd, context: context, pageSize: pageSize)
        } catch {
          try? uffd.unregister(start, length: length)
          throw error
        }
      } else {
        faultLoop = nil
      }
    } catch {
      if slot >= 0 { cuffd_sigbus_retire(slot) }
      cuffd_snapshot_context_destroy(context)
      throw error
    }
    sigbusSlot = slot
  }

  /// Sets up a snapshot of another process's memory, which that process offers (see
  /// ``MemoryOffer``): `uffd` is its userfaultfd, handed over and adopted
  /// (``Userfaultfd/init(adopting:origin:)``), opened non-blocking with
  /// `UFFD_FEATURE_PAGEFAULT_FLAG_WP` and without `UFFD_FEATURE_WP_ASYNC`, with `region` (its
  /// addresses) registered for write protection by that process; `view` is where this process
  /// maps the same pages (the memfd the process shared), read for the copy. A handler thread here
  /// resolves its writers' faults (``Resolver/handlerThread``). The registration stays the other
  /// process's: the end of the snapshot un-protects the range and leaves it registered.
  ///
  /// - Throws: ``UserfaultfdError/invalidArgument(_:_:)`` for a misaligned region, a blocking
  ///   handle, a negative offset or a staging size out of range;
  ///   ``UserfaultfdError/notSupported(_:_:)`` when the handle lacks write-protect faults or
  ///   resolves them itself (WP_ASYNC).
  public init(
    adopting uffd: Userfaultfd, region: Range<Address>, view: UnsafeRawPointer, pageSize: Int = PageSize.base,
    file: FileDescriptor, fileOffset: Int = 0, stagingBytes: Int = LiveSnapshot.defaultStagingBytes
  ) throws(UserfaultfdError) {
    let length = region.upperBound - region.lowerBound
    guard let start = UnsafeMutableRawPointer(bitPattern: region.lowerBound.rawValue), length > 0 else {
      throw .invalidArgument(.liveSnapshot, .nonPositiveLength(role: .range, length: length))
    }
    let range = try PageRange(start, length: length, pageSize: pageSize, role: .range, operation: .liveSnapshot)
    _ = try PageRange(view, length: length, pageSize: pageSize, role: .source, operation: .liveSnapshot)
    guard fileOffset >= 0, fileOffset <= Int.max - length else {
      throw .invalidArgument(.liveSnapshot, .outOfRange(parameter: "fileOffset", value: fileOffset, valid: 0...(Int.max - length)))
    }
    guard (0...Self.maxStagingBytes).contains(stagingBytes) else {
      throw .invalidArgument(.liveSnapshot, .outOfRange(parameter: "stagingBytes", value: stagingBytes, valid: 0...Self.maxStagingBytes))
    }
    guard uffd.isNonBlocking else { throw .invalidArgument(.liveSnapshot, .handleIsBlocking) }
    guard uffd.features.contains(.pageFaultFlagWP), !uffd.features.contains(.wpAsync) else {
      throw .notSupported(.liveSnapshot, "the handed-over userfaultfd must be opened with UFFD_FEATURE_PAGEFAULT_FLAG_WP"
        + " and without UFFD_FEATURE_WP_ASYNC (features: \(uffd.features))")
    }
    guard let context = cuffd_snapshot_context_create(
      uffd.coreDescriptor, file.rawValue, Int64(fileOffset), range.start, length, pageSize, stagingBytes / pageSize,
      UInt(bitPattern: view))
    else { throw .systemCallFailed("allocating the snapshot's page states and staging buffer", .current) }
    self.isIncremental = false
    self.ownsRegistration = false
    self.resolver = .handlerThread
    self.start = start
    self.length = length
    self.pageSize = pageSize
    self.populatedFirst = false
    self.uffd = uffd
    self.file = file
    self.context = context
    self.sigbusSlot = -1
    do {
      faultLoop = try Self.startFaultLoop(uffd: uffd, context: context, pageSize: pageSize)
    } catch {
      cuffd_snapshot_context_destroy(context)
      throw error
    }
  }

  /// The handler thread: each write fault's page is copied out, then un-protected (waking its
  /// writer); EAGAIN (a remove event pending) makes the loop try again.
  private static func startFaultLoop(
    uffd: Userfaultfd, context: OpaquePointer, pageSize: Int
  ) throws(UserfaultfdError) -> WriteFaultLoop {
    let contextAddress = UInt(bitPattern: UnsafeMutableRawPointer(context))
    let callbacks = WriteFaultLoop.Callbacks(
      writeFault: { page in
        guard let context = OpaquePointer(bitPattern: contextAddress) else { return true }
        if cuffd_snapshot_release_page(context, page & ~UInt(pageSize - 1), 1) == 0 { return true }
        return Errno.current != .resourceTemporarilyUnavailable
      },
      removed: { _, _ in })
    return try WriteFaultLoop(uffd: uffd, callbacks: callbacks)
  }

  deinit {
    cancel()
    cuffd_snapshot_context_destroy(context)
  }

  /// Write-protects the whole range (the snapshot's point in time) and starts copying in the
  /// background. Pause the writers around this call for a point-in-time copy (see the type's
  /// notes). Returns how long the protect took, in seconds.
  ///
  /// - Throws: ``UserfaultfdError/invalidArgument(_:_:)`` when called twice or after ``finish(timeoutSeconds:)``;
  ///   the protect ioctl's failure (then nothing stays protected).
  @discardableResult
  public func cut() throws(UserfaultfdError) -> Double {
    try cut(holdingBackgroundCopyFor: 0)
  }

  /// ``cut()``, with the background copy starting `seconds` later: for tests and benchmarks that
  /// need writers to reach pages first (the copy-before-write path).
  @discardableResult
  package func cut(holdingBackgroundCopyFor seconds: Double) throws(UserfaultfdError) -> Double {
    try phase.withLock { (phase) throws(UserfaultfdError) in
      guard phase == .armed else { throw .invalidArgument(.liveSnapshot, .serverStopped) }
      phase = .cutting
    }
    let began = monotonicSeconds()
    do {
      try uffd.writeProtect(start, length: length)
    } catch {
      try? uffd.removeWriteProtection(start, length: length)
      phase.withLock { $0 = .armed }
      throw error
    }
    let cut = monotonicSeconds() - began
    timing.withLock { $0.cut = cut; $0.cutAt = began }
    layerPages.store(length / pageSize, ordering: .releasing)
    try startCopier(holdingFor: seconds)
    layers.wrappingAdd(1, ordering: .acquiringAndReleasing)
    return cut
  }

  /// Starts the background copy of the current layer (after `seconds`), and enters `copying`.
  private func startCopier(holdingFor seconds: Double) throws(UserfaultfdError) {
    let base = UInt(bitPattern: start), pages = length / pageSize, pageSize = self.pageSize
    let contextAddress = UInt(bitPattern: UnsafeMutableRawPointer(context))
    let progress = self.progress
    progress.done.store(false, ordering: .releasing)
    copierBox.withLock { $0 }?.join()  // the previous layer's, long finished
    let copier: DedicatedThread
    do {
      copier = try DedicatedThread {
        guard let context = OpaquePointer(bitPattern: contextAddress) else { return }
        // Staged pages go to the file between steps: the staging buffer stays free for writers.
        let holdUntil = monotonicSeconds() + seconds
        while monotonicSeconds() < holdUntil && !progress.cancelled.load(ordering: .relaxed) {
          if cuffd_snapshot_drain_staging(context) == 0 { usleep(200) }
        }
        var page = 0
        while page < pages && !progress.cancelled.load(ordering: .relaxed) {
          let count = min(Self.chunkPages, pages - page)
          _ = cuffd_snapshot_copy_chunk(context, base + UInt(page * pageSize), count)
          _ = cuffd_snapshot_drain_staging(context)
          page += count
        }
        // Every page is copied or staged now (a fault stages before it marks the page copied,
        // and the chunks waited for those marks): one more pass writes the last staged pages.
        _ = cuffd_snapshot_drain_staging(context)
        progress.finishedAt.store(Int(monotonicSeconds() * 1e9), ordering: .relaxed)
        progress.done.store(true, ordering: .releasing)
      }
    } catch {
      try? uffd.removeWriteProtection(start, length: length)
      phase.withLock { $0 = .finished }
      throw error
    }
    copierBox.withLock { $0 = copier }
    phase.withLock { $0 = .copying }
  }

  /// Cuts the next layer of an incremental series (``isIncremental``), after the previous layer's
  /// ``finish(timeoutSeconds:)``: the pages written since the previous cut are protected again and
  /// copied, live, into a diff layer written to `file` at `fileOffset` (its format:
  /// ``SnapshotDiffLayer``). Pause the writers around this call, as around ``cut()``. Returns the
  /// layer's header (its pages); then ``finish(timeoutSeconds:)`` reports as for the base.
  ///
  /// - Throws: ``UserfaultfdError/invalidArgument(_:_:)`` when the snapshot is not incremental, a
  ///   layer is still copying, or the series ended; writing the header's failure; the protect's
  ///   failure (the series then ends: writers are released).
  @discardableResult
  public func cutDiff(into file: FileDescriptor, fileOffset: Int = 0) throws(UserfaultfdError) -> SnapshotDiffLayer {
    guard isIncremental, fileOffset >= 0 else { throw .invalidArgument(.liveSnapshot, .serverStopped) }
    try phase.withLock { (phase) throws(UserfaultfdError) in
      guard phase == .tracking else { throw .invalidArgument(.liveSnapshot, .serverStopped) }
      phase = .cutting
    }
    let pages = length / pageSize
    var marks = [UInt8](repeating: 0, count: pages)
    let began = monotonicSeconds()
    _ = marks.withUnsafeMutableBufferPointer { cuffd_snapshot_take_written(context, $0.baseAddress) }
    let indices = marks.indices.filter { marks[$0] != 0 }
    let layer = SnapshotDiffLayer(number: layerCount, pageSize: pageSize, rangeLength: length, pageIndices: indices)
    do throws(UserfaultfdError) {
      try layer.writeHeader(to: file, at: fileOffset)
      marks.withUnsafeBufferPointer { include in
        cuffd_snapshot_begin_layer(context, file.rawValue, Int64(fileOffset + layer.dataOffset), include.baseAddress)
      }
      // Everything else is still protected (a page un-protected since the last cut is a written
      // one): protecting the written runs again protects the whole range.
      var run = indices.startIndex
      while run < indices.endIndex {
        var end = run + 1
        while end < indices.endIndex && indices[end] == indices[end - 1] + 1 { end += 1 }
        guard let pointer = UnsafeMutableRawPointer(bitPattern: UInt(bitPattern: start) + UInt(indices[run] * pageSize)) else { break }
        try uffd.writeProtect(pointer, length: (end - run) * pageSize)
        run = end
      }
      let cut = monotonicSeconds() - began
      timing.withLock { $0.cut = cut; $0.cutAt = began }
      layerPages.store(indices.count, ordering: .releasing)
      try startCopier(holdingFor: 0)
    } catch {
      tearDown()
      throw error
    }
    layers.wrappingAdd(1, ordering: .acquiringAndReleasing)
    return layer
  }

  /// Whether the background copy has finished (every page is in the file).
  public var isCopied: Bool { progress.done.load(ordering: .acquiring) }

  /// Waits (at most `timeoutSeconds`) for the copy to finish, then un-protects and unregisters the
  /// range and stops the resolver, and reports.
  ///
  /// - Throws: ``UserfaultfdError/notSupported(_:_:)`` when the copy did not finish in time (the
  ///   snapshot is cancelled: writers are released, the file is incomplete);
  ///   ``UserfaultfdError/systemCallFailed(_:_:)`` when writing the file failed (ENOSPC...) or a
  ///   page could not be released; ``UserfaultfdError/invalidArgument(_:_:)`` before ``cut()``.
  public func finish(timeoutSeconds: Double = 600) throws(UserfaultfdError) -> LiveSnapshotReport {
    let current = phase.withLock { $0 }
    guard current == .copying else { throw .invalidArgument(.liveSnapshot, .serverStopped) }
    let deadline = monotonicSeconds() + max(0, timeoutSeconds)
    while !progress.done.load(ordering: .acquiring) {
      if monotonicSeconds() > deadline {
        cancel()
        throw .notSupported(.liveSnapshot, "the copy did not finish within \(timeoutSeconds) s; the snapshot was cancelled")
      }
      usleep(500)
    }
    let (cut, cutAt) = timing.withLock { ($0.cut, $0.cutAt) }
    if isIncremental {
      phase.withLock { $0 = .tracking }
    } else {
      tearDown()
    }
    var stats = cuffd_snapshot_stats()
    cuffd_snapshot_context_stats(context, &stats)
    if stats.write_errors > 0 {
      throw .systemCallFailed("pwrite(snapshot file: \(stats.write_errors) writes failed)", Errno(rawValue: stats.first_write_errno))
    }
    if stats.unprotect_errors > 0 {
      throw .systemCallFailed("UFFDIO_WRITEPROTECT (releasing \(stats.unprotect_errors) pages)", Errno(rawValue: stats.first_unprotect_errno))
    }
    let finishedAt = Double(progress.finishedAt.load(ordering: .relaxed)) / 1e9
    return LiveSnapshotReport(
      resolver: resolver, pages: layerPages.load(ordering: .acquiring), pageSize: pageSize,
      copiedBeforeWrites: Int(stats.copied_by_faults), copiedInBackground: Int(stats.copied_in_background),
      faultsThatWroteTheFile: Int(stats.written_by_faults), stagingPeakPages: Int(stats.staging_peak_pages),
      cutSeconds: cut, copySeconds: max(0, finishedAt - cutAt - cut), populatedFirst: populatedFirst)
  }

  /// Abandons the snapshot: stops the copy, releases every writer and unregisters. The file is
  /// incomplete. Safe to call more than once, and after ``finish(timeoutSeconds:)`` (which is how
  /// an incremental series ends).
  public func cancel() {
    progress.cancelled.store(true, ordering: .relaxed)
    copierBox.withLock { $0 }?.join()
    tearDown()
  }

  /// Releases the range: un-protect everything (waking waiting writers), stop the resolver, and
  /// unregister. Runs once.
  private func tearDown() {
    let first = phase.withLock { (phase) -> Bool in
      defer { phase = .finished }
      return phase != .finished
    }
    guard first else { return }
    copierBox.withLock { $0 }?.join()
    try? uffd.removeWriteProtection(start, length: length)
    faultLoop?.stop()
    if sigbusSlot >= 0 { cuffd_sigbus_retire(sigbusSlot) }
    try? uffd.wake(start, length: length)
    if ownsRegistration { try? uffd.unregister(start, length: length) }
    uffd.close()
  }

  private let progress = CopyProgress()
}

/// The background copy's state, shared with its thread.
private final class CopyProgress: Sendable {
  let done = Atomic<Bool>(false)
  let cancelled = Atomic<Bool>(false)
  let finishedAt = Atomic<Int>(0)
}

/// What a ``LiveSnapshot`` did.
public struct LiveSnapshotReport: Sendable, Hashable {
  /// How faulting writes were resolved.
  public let resolver: LiveSnapshot.Resolver
  /// Pages in the snapshot (or in the diff layer: the pages written since the previous cut).
  public let pages: Int
  /// The page size.
  public let pageSize: Int
  /// Pages a writer reached first: copied in its fault, before its write.
  public let copiedBeforeWrites: Int
  /// Pages the background thread copied.
  public let copiedInBackground: Int
  /// Of ``copiedBeforeWrites``, the faults that found the staging buffer full and wrote the file
  /// themselves (their writers waited on file I/O; 0 when the buffer kept up).
  public let faultsThatWroteTheFile: Int
  /// The most staging pages in use at once: the staging buffer's memory high-water mark, in pages.
  public let stagingPeakPages: Int
  /// How long write-protecting the range took (the pause writers need for a point-in-time copy).
  public let cutSeconds: Double
  /// From the end of the cut to the last page copied.
  public let copySeconds: Double
  /// Whether the range was populated at setup (kernels before 6.4).
  public let populatedFirst: Bool
}
