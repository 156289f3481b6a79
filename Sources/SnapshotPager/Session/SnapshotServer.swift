import Userfaultfd
import CUserfaultfd
import Glibc
import Histogram
import Synchronization
import SystemPackage

/// Serves another process's memory from a snapshot file, lazily: the page server of a VM or
/// process snapshot restore (what Firecracker's and CRIU's lazy-restore handlers do).
///
/// Each missing-page fault is answered with `UFFDIO_COPY` from the mapped snapshot, in the
/// region's page size (4 KiB, or 2 MiB for hugetlbfs guest memory), and with its neighbours when
/// the faults run sequentially (adaptive fault-around: the window doubles on each sequential
/// fault up to ``Configuration/faultAroundPages`` and falls back to one page on a jump). A page
/// the client released (`MADV_DONTNEED`, a balloon: a REMOVE event) is served as zeros next time,
/// never as stale snapshot data: every batch of events is applied before the faults read with it,
/// and a copy that meets a pending REMOVE (EAGAIN) waits for it to be read. An optional pool of
/// background threads streams the untouched rest in parallel copies while faults keep priority
/// (SnapshotServer+Prefetch.swift).
///
/// ```swift
/// let listener = try UnixSocket.listen(at: path)
/// let snapshot = try SnapshotFile(path: "memory.snap")
/// guard let (server, client) = try SnapshotServer.accept(on: listener, snapshot: snapshot) else { return }
/// let summary = server.run(client: client)   // returns when the client hangs up
/// ```
public final class SnapshotServer: Sendable {
  /// How a server serves.
  public struct Configuration: Sendable, Hashable {
    /// The most pages one fault brings in (1: demand faults only). Default 16.
    public var faultAroundPages: Int
    /// Stream every untouched page in the background, faults first.
    public var prefetch: Bool
    /// Pages the prefetcher copies per ioctl (1 to 4096; at most 2 MiB a copy). Default 512
    /// (2 MiB of base pages).
    public var prefetchPages: Int
    /// Threads that prefetch in parallel beside the serving thread (1 to 8; a chunked snapshot
    /// uses one). Default: one less than the CPUs, at most 2, at least 1 (a CPU is left to the
    /// client and the serving thread: on a 2-CPU machine a second copier made restores slower).
    public var prefetchThreads: Int
    /// What a fault that cannot be served gets (the snapshot page could not be copied).
    public var onUnresolvable: UnresolvableFaultAction
    /// How a faulting page's content is installed.
    public var install: Install

    /// How a page's content gets into the faulting memory.
    public enum Install: String, Sendable, Hashable, CaseIterable {
      /// UFFDIO_COPY straight from the mapped snapshot: one copy, from the page cache. Works
      /// across processes.
      case copyFromMapping = "copy"
      /// read(2) the content into a staging page (as a handler does that produces content itself:
      /// decompressing, fetching), then UFFDIO_COPY it in: two copies. Works across processes.
      case readAndCopy = "read+copy"
      /// read(2) into a staging page, then UFFDIO_MOVE it in: the second copy disappears. Only
      /// when the memory is this process's own (MOVE moves within one process), the kernel's
      /// MOVE is usable, and the pages are base pages; checked when the server is set up.
      case readAndMove = "read+move"
    }

    /// A configuration.
    public init(faultAroundPages: Int = 16, prefetch: Bool = false, prefetchPages: Int = 512,
                prefetchThreads: Int = Configuration.defaultPrefetchThreads,
                onUnresolvable: UnresolvableFaultAction = .poison, install: Install = .copyFromMapping) {
      self.faultAroundPages = faultAroundPages
      self.prefetch = prefetch
      self.prefetchPages = prefetchPages
      self.prefetchThreads = prefetchThreads
      self.onUnresolvable = onUnresolvable
      self.install = install
    }

    /// The valid fault-around window.
    public static let faultAroundRange = 1...4096
    /// The valid prefetch chunk.
    public static let prefetchRange = 1...4096
    /// The valid prefetch pool.
    public static let prefetchThreadsRange = 1...8
    /// The default prefetch pool: one less than the CPUs, 1 to 2.
    public static var defaultPrefetchThreads: Int {
      let cpus = Int(sysconf(Int32(_SC_NPROCESSORS_ONLN)))
      return max(1, min(2, cpus - 1))
    }
  }

  /// The handle of the memory being served.
  public let uffd: Userfaultfd
  /// The regions being served, as the client described them.
  public let regions: [GuestRegion]
  /// Where page contents come from.
  public let snapshot: SnapshotFile
  /// The settings.
  public let configuration: Configuration

  let state: Mutex<ServingState>
  /// Faults read and not answered yet, save those left to a prefetch copy in flight: the
  /// prefetch pool steps aside while there are any.
  let faultsWaiting = Atomic<Int>(0)
  /// Whether the prefetcher waits for a chunk on its way (a loop then polls instead of spinning).
  package let prefetchStalled = Atomic<Bool>(false)
  let stopping = Atomic<Bool>(false)
  /// Orders prefetch copies running outside the session lock against event reads.
  let gate = CopyGate()
  private let wakeup: (read: Int32, write: Int32)
  /// Zeros in the largest page size, for zero-filling pages ZEROPAGE cannot (hugetlbfs).
  private let zeros: AnonymousMemory
  /// Where read(2) puts a fault-around window's content before it is installed (read installs).
  private let staging: AnonymousMemory?
  /// Pages this session serves instead of the snapshot's (restore-time writes of one clone).
  let overlay: SessionOverlay?
  /// Hears each fault's service time (the pager's metrics); called on the serving thread.
  private let observer: (any FaultObserver)?
  /// Faults an event loop must retry after the events pending before them (EAGAIN), with when
  /// they were read. Only the loop that drives this server touches it.
  private let loopDeferred = Mutex<[(fault: PageFault, readAt: ContinuousClock.Instant)]>([])

  /// Serves `regions` of the memory behind `uffd` from `snapshot`.
  ///
  /// - Throws: `UserfaultfdError.invalidArgument` for regions that are misaligned, overlap,
  ///   or reach beyond the snapshot, or settings out of range, before anything is served.
  public convenience init(uffd: Userfaultfd, regions: [GuestRegion], snapshot: SnapshotFile,
                          configuration: Configuration = Configuration()) throws(UserfaultfdError) {
    try self.init(uffd: uffd, regions: regions, snapshot: snapshot, configuration: configuration, overlay: nil, observer: nil)
  }

  /// The pager's initializer: with a session's overlay pages and a latency observer.
  package init(uffd: Userfaultfd, regions: [GuestRegion], snapshot: SnapshotFile,
               configuration: Configuration, overlay: SessionOverlay?,
               observer: (any FaultObserver)?) throws(UserfaultfdError) {
    guard Configuration.faultAroundRange.contains(configuration.faultAroundPages) else {
      throw .invalidArgument(.serve, .outOfRange(
        parameter: "faultAroundPages", value: configuration.faultAroundPages, valid: Configuration.faultAroundRange))
    }
    guard Configuration.prefetchRange.contains(configuration.prefetchPages) else {
      throw .invalidArgument(.serve, .outOfRange(
        parameter: "prefetchPages", value: configuration.prefetchPages, valid: Configuration.prefetchRange))
    }
    guard Configuration.prefetchThreadsRange.contains(configuration.prefetchThreads) else {
      throw .invalidArgument(.serve, .outOfRange(
        parameter: "prefetchThreads", value: configuration.prefetchThreads, valid: Configuration.prefetchThreadsRange))
    }
    let map = try RestorePageMap(regions, snapshotLength: snapshot.length)
    if let overlay { try overlay.check(against: map) }
    var fds: [Int32] = [-1, -1]
    guard cuffd_pipe_nonblocking(&fds) == 0 else { throw .systemCallFailed("pipe2", .current) }
    let largest = map.regions.map(\.pageSize).max() ?? PageSize.base
    if configuration.install == .readAndMove {
      // Capabilities at setup: MOVE moves within the process that created the descriptor, base
      // pages only, and only where this kernel's MOVE can be trusted.
      guard !uffd.servesAnotherProcess, largest == PageSize.base,
            uffd.supportedFeatures.contains(.move), PageMover.moveVerdict.isUsable
      else {
        _ = close(fds[0])
        _ = close(fds[1])
        throw .notSupported(
          .move, "read+move installs need this process's own base-page memory and a usable UFFDIO_MOVE"
            + " (Linux 6.8+; here: \(PageMover.moveVerdict)); use read+copy or copy")
      }
    }
    do {
      zeros = try AnonymousMemory(length: largest)
      staging = configuration.install == .copyFromMapping
        ? nil : try AnonymousMemory(length: configuration.faultAroundPages * largest)
    } catch {
      _ = close(fds[0])
      _ = close(fds[1])
      throw error
    }
    self.uffd = uffd
    self.regions = regions
    self.snapshot = snapshot
    self.configuration = configuration
    self.wakeup = (fds[0], fds[1])
    self.overlay = overlay
    self.observer = observer
    let action = configuration.onUnresolvable.effective(on: uffd)
    state = Mutex(ServingState(map: map, action: action, window: min(ServingState.initialWindow, configuration.faultAroundPages)))
  }

  deinit {
    _ = close(wakeup.read)
    _ = close(wakeup.write)
  }

  /// Accepts one client on `listener` (waiting up to `timeout`), receives its userfaultfd and the
  /// JSON array of its regions in one message (Firecracker's handshake), and returns a server for
  /// them with the connection, which the client keeps open while it runs. Nil on timeout.
  public static func accept(
    on listener: UnixSocket, snapshot: SnapshotFile, configuration: Configuration = Configuration(),
    timeout: Duration? = nil
  ) throws(UserfaultfdError) -> (server: SnapshotServer, client: UnixSocket)? {
    // Everything a first fault runs, once, before a client waits for its first page: the first
    // use of the JSON decoder, the page map and the latency histogram instantiates runtime
    // metadata, which costs hundreds of microseconds a restore's first byte should not pay.
    warmUp(snapshot)
    guard let client = try listener.accept(timeout: timeout) else { return nil }
    guard let message = try client.receive(timeout: .seconds(30)) else {
      throw .invalidArgument(.serve, .badRegions("the client hung up before sending its regions"))
    }
    let regions = try decodeRegions(message.bytes)
    let uffd = try Userfaultfd(adopting: try message.takeDescriptor(), origin: .anotherProcess)
    return (try SnapshotServer(uffd: uffd, regions: regions, snapshot: snapshot, configuration: configuration), client)
  }

  static func warmUp(_ snapshot: SnapshotFile) {
    let sample = #"[{"base_host_virt_addr":4096,"size":4096,"offset":0,"page_size":4096}]"#
    guard let regions = try? RegionsJSON.decode(Array(sample.utf8)),
          let map = try? RestorePageMap(regions, snapshotLength: max(snapshot.length, 4096))
    else { return }
    var state = ServingState(map: map, action: .zeroPage, window: 1)
    state.recordLatency(since: ContinuousClock.now, clock: ContinuousClock())
    _ = state.window(for: 4096, pageSize: 4096, limit: 1)
  }

  /// Asks a running ``run(client:progress:)`` to finish (from any thread).
  public func stop() {
    stopping.store(true, ordering: .releasing)
    wakeServingThread()
  }

  /// Wakes ``run(client:progress:)``'s poll, from any thread. (An event loop driving the server
  /// copies its prefetch on its own thread: no other thread has anything to tell it.)
  func wakeServingThread() {
    var byte: UInt8 = 1
    _ = write(wakeup.write, &byte, 1)  // a full pipe has a wake-up pending already
  }

  /// A snapshot of the counters (any thread, any time).
  public var statistics: Statistics { state.withLock { $0.statistics } }

  /// Serves until `client` hangs up, the process whose memory this is exits, or ``stop()``;
  /// returns the summary. `progress` hears the counters about once a second. Runs on the calling
  /// thread, which must not be one whose faults this server resolves.
  public func run(client: UnixSocket? = nil, progress: ((Statistics) -> Void)? = nil) -> Statistics {
    let clock = ContinuousClock()
    let start = clock.now
    state.withLock { $0.start = start }
    // The prefetchers start once the first fault is served (or after 5 ms without one), so a
    // restore's first byte never waits behind their start-up or their first copy.
    var prefetchers: [DedicatedThread] = []
    var prefetchDue = configuration.prefetch
    guard let buffer = try? EventBuffer(capacity: 256) else {
      stop()
      return finish(clock: clock, start: start, reason: .failed)
    }
    // Deferred faults, each with whether it still counts in `faultsWaiting` (one left to a
    // prefetch copy in flight does not: the copy wakes its thread).
    var deferred: [(fault: PageFault, readAt: ContinuousClock.Instant, counted: Bool)] = []
    var drain = [UInt8](repeating: 0, count: 64)
    var lastReport = start
    var reason = Statistics.EndReason.stopped
    loop: while !stopping.load(ordering: .acquiring) {
      var entries = [
        pollfd(fd: uffd.fileDescriptor.rawValue, events: Int16(POLLIN), revents: 0),
        pollfd(fd: wakeup.read, events: Int16(POLLIN), revents: 0),
        pollfd(fd: client?.fileDescriptor.rawValue ?? -1, events: Int16(POLLIN), revents: 0),
      ]
      let ready = poll(&entries, 3, !deferred.isEmpty ? 1 : prefetchDue ? 5 : 200)
      if ready < 0 && errno != EINTR { reason = .failed; break }
      if entries[2].revents != 0, let client, (try? client.peerHasHungUp()) != false {
        reason = .clientHungUp
        break
      }
      if entries[0].revents & Int16(POLLERR | POLLHUP) != 0 { reason = .processGone; break }
      if entries[1].revents != 0 { _ = drain.withUnsafeMutableBytes { read(wakeup.read, $0.baseAddress, $0.count) } }
      // Every event read in this batch is applied before any fault: a REMOVE that precedes a
      // fault causally may arrive after it (faults are read first).
      var faults = deferred
      deferred.removeAll(keepingCapacity: true)
      // Read with no prefetch copy in flight (the gate) and under the session's lock, which a
      // chunked snapshot's prefetcher copies under: the kernel zaps a REMOVE's range only after
      // its event is read, so a prefetch copy between the read and the marking below could land
      // after the zap and put snapshot bytes where the client released its pages (they must
      // read zero).
      gate.exclusive { state.withLock { serving in
        while let count = try? uffd.readEvents(into: buffer), count > 0 {
          let readAt = clock.now
          for index in 0..<count {
            switch buffer.event(at: index, of: uffd) {
            case .pageFault(let fault):
              faults.append((fault, readAt, true))
              faultsWaiting.add(1, ordering: .relaxed)
            case .remove(let start, let end), .unmap(let start, let end):
              serving.release(start: start.rawValue, end: end.rawValue)
            case .fork(let child):
              child.close()
            case .remap, .unrecognized:
              serving.statistics.otherEvents += 1
            }
          }
        }
      } }
      for item in faults {
        switch serve(item.fault, readAt: item.readAt, clock: clock) {
        case .done:
          if item.counted { faultsWaiting.subtract(1, ordering: .relaxed) }
        case .awaitingCopy:
          if item.counted { faultsWaiting.subtract(1, ordering: .relaxed) }
          deferred.append((item.fault, item.readAt, false))
        case .retry:
          deferred.append(item)
        case .gone:
          reason = .processGone
          break loop
        case .endSession:
          reason = .failed
          break loop
        }
      }
      if prefetchDue, state.withLock({ $0.statistics.faults > 0 }) || clock.now - start >= .milliseconds(5) {
        prefetchDue = false
        let threads = prefetchesInParallel ? configuration.prefetchThreads : 1
        for _ in 0..<threads {
          if let thread = try? DedicatedThread({ [self] in prefetch() }) { prefetchers.append(thread) }
        }
      }
      if let progress, clock.now - lastReport >= .seconds(1) {
        lastReport = clock.now
        progress(statistics)
      }
    }
    stop()
    for thread in prefetchers { thread.join() }
    return finish(clock: clock, start: start, reason: reason)
  }

  private func finish(clock: ContinuousClock, start: ContinuousClock.Instant, reason: Statistics.EndReason) -> Statistics {
    state.withLock { serving in
      serving.statistics.elapsed = clock.now - start
      serving.statistics.endReason = reason
      serving.statistics.untouchedPages = serving.map.untouched
      serving.statistics.faultLatencyP50 = .nanoseconds(Int64(serving.latency.valueAtPercentile(50)))
      serving.statistics.faultLatencyP99 = .nanoseconds(Int64(serving.latency.valueAtPercentile(99)))
      return serving.statistics
    }
  }

  /// What serving one fault came to (`endSession`: a chunk could not be had and the policy ends
  /// the session; `awaitingCopy`: the page is in a prefetch copy in flight, whose end wakes the
  /// faulting thread: the fault is looked at again then, for its bookkeeping).
  enum Served { case done, retry, awaitingCopy, gone, endSession }

  /// Serves one fault: from the snapshot with fault-around, zeros for a released page, a wake for
  /// a page the prefetcher filled meanwhile.
  private func serve(_ fault: PageFault, readAt: ContinuousClock.Instant, clock: ContinuousClock) -> Served {
    let address = fault.address.rawValue
    return state.withLock { serving in
      // The page map is read in place: a local copy would make the marks below copy its states
      // (copy-on-write), a byte per guest page per fault.
      guard let region = serving.map.region(containing: address) else {
        // Not a page of any region: the client registered more than it described. Fail it.
        serving.fail(address: fault.pageAddress.rawValue, errno: .invalidArgument, uffd: uffd, zeros: zeros)
        return .done
      }
      let page = serving.map.page(of: address, in: region)
      let pageSize = serving.map.regions[region].pageSize
      let target = serving.map.address(ofPage: page, in: region)
      let answer: KernelAnswer
      var pages = 1
      var fromSnapshot = false
      switch serving.map.states[page] {
      case .served, .zeroFilled:
        // Filled meanwhile (by the prefetcher, or a fault-around): the thread only needs waking.
        _ = RangeIoctl.wake(uffd.coreDescriptor, target, length: pageSize)
        serving.statistics.wakes += 1
        observe(serving.recordLatency(since: readAt, clock: clock))
        return .done
      case .inFlight:
        serving.faultsOnCopies = true
        return .awaitingCopy
      case .released:
        answer = serving.zeroFill(target, pageSize: pageSize, uffd: uffd, zeros: zeros)
        if answer.outcome == .failed, answer.errno == .noSuchFileOrDirectory, serving.handedBack > 0 {
          // Handed back to the kernel meanwhile (unregistered): it zero-fills the page itself.
          _ = RangeIoctl.wake(uffd.coreDescriptor, target, length: pageSize)
          return .done
        }
      case .untouched:
        pages = serving.window(for: target, pageSize: pageSize, limit: configuration.faultAroundPages)
        pages = max(1, serving.map.untouchedRun(from: page, in: region, limit: pages))
        let fileOffset = serving.map.fileOffset(ofPage: page, in: region)
        if let overlay, let source = overlay.source(at: fileOffset) {
          // This session's own content for the page: one page, never the snapshot's.
          let copied = RangeIoctl.copy(uffd.coreDescriptor, target, from: source, length: pageSize)
          if copied.bytesDone == pageSize {
            serving.map.mark(page..<(page + 1), .served)
            serving.statistics.overlayPages += 1
            serving.statistics.bytesServed += pageSize
            serving.statistics.faults += 1
            observe(serving.recordLatency(since: readAt, clock: clock))
            serving.noteResidency(clock: clock)
            return .done
          }
          answer = copied
        } else {
          if let overlay { pages = overlay.pagesBeforeOverlay(from: fileOffset, pages: pages, pageSize: pageSize) }
          if let chunked = snapshot.chunked {
            // A chunked snapshot: from the host's chunk cache; a chunk still on its way is waited
            // for by retrying (never by blocking this thread), up to the fault's deadline.
            switch chunked.content(at: fileOffset, maxBytes: pages * pageSize, minBytes: pageSize) {
            case .ready(let source, let bytes, let keep):
              pages = bytes / pageSize
              answer = withExtendedLifetime(keep) { RangeIoctl.copy(uffd.coreDescriptor, target, from: source, length: pages * pageSize) }
            case .pending:
              guard clock.now - readAt < chunked.cache.configuration.faultDeadline else {
                return failRemoteFault(&serving, target: target, page: page, pageSize: pageSize)
              }
              return .retry
            case .failed:
              return failRemoteFault(&serving, target: target, page: page, pageSize: pageSize)
            }
          } else {
            answer = install(pages * pageSize, at: target, fileOffset: fileOffset)
          }
          fromSnapshot = true
        }
      }
      let done = answer.bytesDone / pageSize
      if done > 0 {
        serving.map.mark(page..<(page + done), fromSnapshot ? .served : .zeroFilled)
        if fromSnapshot { serving.statistics.pagesByFault += done } else { serving.statistics.zeroPages += done }
        if fromSnapshot, serving.trace != nil {
          serving.trace?.record(fileOffset: serving.map.fileOffset(ofPage: page, in: region), pages: done, pageSize: pageSize, at: readAt)
        }
        serving.statistics.bytesServed += done * pageSize
      }
      switch answer.outcome {
      case .done:
        break
      case .partial where done > 0:
        break
      case .alreadyPresent:
        // The page at `done` is mapped already (a racing fill): it is resident.
        serving.map.mark((page + done)..<(page + done + 1), .served)
        if done == 0 { _ = RangeIoctl.wake(uffd.coreDescriptor, target, length: pageSize) }
      case .retryAfterEvents, .partial:
        serving.statistics.eagainRetries += 1
        return .retry
      case .processGone:
        return .gone
      case .sourceMissing, .busy, .failed:
        serving.fail(address: target, errno: answer.errno ?? .ioError, uffd: uffd, zeros: zeros)
        return .done
      }
      serving.statistics.faults += 1
      observe(serving.recordLatency(since: readAt, clock: clock))
      serving.noteResidency(clock: clock)
      return .done
    }
  }

  /// Installs `length` bytes of the snapshot from `fileOffset` at `target`, as configured.
  private func install(_ length: Int, at target: UInt, fileOffset: Int) -> KernelAnswer {
    let fd = uffd.coreDescriptor
    guard configuration.install != .copyFromMapping, let staging else {
      return RangeIoctl.copy(fd, target, from: snapshot.address(at: fileOffset).rawValue, length: length)
    }
    guard snapshot.read(length, at: fileOffset, into: staging.baseAddress) else {
      return KernelAnswer(.copy, failed: .ioError, length: length)
    }
    let from = Address(staging.baseAddress).rawValue
    guard configuration.install == .readAndMove else { return RangeIoctl.copy(fd, target, from: from, length: length) }
    let moved = RangeIoctl.move(fd, target, from: from, length: length)
    // A staging page is this thread's alone, so MOVE should never find it busy; if it does, the
    // content is still there to copy.
    guard moved.outcome == .busy else { return moved }
    return RangeIoctl.copy(fd, target + UInt(moved.bytesDone), from: from + UInt(moved.bytesDone), length: length - moved.bytesDone)
  }

  /// One background prefetcher of the pool: copies runs of untouched pages from the prefetch
  /// cursor on (in parallel with the others for a local snapshot; alone, under the session lock,
  /// for a chunked one), and steps aside whenever a fault is waiting.
  private func prefetch() {
    let parallel = prefetchesInParallel
    // At the serving thread's priority: it waits for the copies in flight before it reads events
    // (``CopyGate``), so a copier held back by a lower priority would hold back its faults.
    var backOff = 0
    while !stopping.load(ordering: .acquiring) {
      if faultsWaiting.load(ordering: .relaxed) > 0 {
        usleep(50)
        continue
      }
      switch parallel ? prefetchChunk() : prefetchStep() {
      case .finished: return
      case .copied: backOff = 0
      case .wait:
        backOff = min(backOff + 1, 10)
        usleep(UInt32(10 << backOff))
      }
    }
  }

  /// Copies one run (at most ``Configuration/prefetchPages``) of the next untouched pages of a
  /// chunked snapshot, under the session lock.
  private func prefetchStep() -> PrefetchStep {
    let clock = ContinuousClock()
    return state.withLock { serving in
      var next = serving.prefetchNext
      defer { serving.prefetchNext = next }
      while next < serving.map.states.count && serving.map.states[next] != .untouched { next += 1 }
      guard next < serving.map.states.count, let region = serving.map.regions.lastIndex(where: { $0.firstPage <= next }) else {
        return .finished
      }
      let pageSize = serving.map.regions[region].pageSize
      var pages = max(1, serving.map.untouchedRun(from: next, in: region, limit: configuration.prefetchPages))
      let fileOffset = serving.map.fileOffset(ofPage: next, in: region)
      var keep: ChunkBuffer?
      var (source, overlaid) = (UInt(0), false)
      (source, pages, overlaid) = copySource(at: fileOffset, pages: pages, pageSize: pageSize)
      if let chunked = snapshot.chunked, !overlaid {
        switch chunked.content(at: fileOffset, maxBytes: pages * pageSize, minBytes: pageSize) {
        case .ready(let address, let bytes, let buffer):
          source = address
          pages = bytes / pageSize
          keep = buffer
          prefetchStalled.store(false, ordering: .relaxed)
        case .pending:
          prefetchStalled.store(true, ordering: .relaxed)
          return .wait
        case .failed:
          serving.statistics.prefetchErrors += 1
          next += 1  // Left for a fault, which applies the failure policy.
          return .copied
        }
      }
      let target = serving.map.address(ofPage: next, in: region)
      let answer = withExtendedLifetime(keep) { RangeIoctl.copy(uffd.coreDescriptor, target, from: source, length: pages * pageSize) }
      let done = answer.bytesDone / pageSize
      if done > 0 {
        serving.map.mark(next..<(next + done), .served)
        if overlaid { serving.statistics.overlayPages += done } else { serving.statistics.pagesByPrefetch += done }
        serving.statistics.bytesServed += done * pageSize
        serving.noteResidency(clock: clock)
      }
      switch answer.outcome {
      case .done:
        next += done
        return .copied
      case .partial where done > 0:
        next += done
        return .copied
      case .alreadyPresent:
        serving.map.mark((next + done)..<(next + done + 1), .served)
        next += done + 1
        return .copied
      case .retryAfterEvents, .partial:
        return .wait  // A REMOVE is pending: the serving thread reads it first.
      case .processGone:
        return .finished
      case .sourceMissing, .busy, .failed:
        serving.statistics.prefetchErrors += 1
        next += max(done, 1)  // Left for a fault, which fails it visibly if it must.
        return .copied
      }
    }
  }

  private func observe(_ nanoseconds: UInt64) { observer?.faultServed(nanoseconds: nanoseconds) }

  // MARK: Driven by an event loop (the pager)

  /// What a turn of an event loop found for this server.
  package enum Turn: Sendable, Equatable {
    /// Still serving.
    case serving
    /// Serving is over, for this reason.
    case ended(Statistics.EndReason)
  }

  /// Marks the start (the clock of first-fault and residency times) when an event loop takes the
  /// server instead of ``run(client:progress:)``.
  package func begin() {
    state.withLock { $0.start = ContinuousClock.now }
  }

  /// Reads the pending events (at most `maxBatches` reads of `buffer`, so a flooding client cannot
  /// hold the loop) and serves the faults among them, faults retried from the last turn first.
  /// Never blocks: the handle must be non-blocking.
  package func serviceEvents(buffer: EventBuffer, maxBatches: Int = 4) -> Turn {
    let clock = ContinuousClock()
    var faults = loopDeferred.withLock { pending in
      defer { pending.removeAll(keepingCapacity: true) }
      return pending
    }
    var batches = 0
    var gone = false
    // Read with no prefetch copy in flight (``CopyGate``): a copy still running when a REMOVE is
    // read could land after the kernel zapped the range.
    gate.exclusive { while batches < maxBatches {
      let count: Int
      do {
        count = try uffd.readEvents(into: buffer)
      } catch {
        gone = true
        return
      }
      guard count > 0 else { break }
      batches += 1
      let readAt = clock.now
      for index in 0..<count {
        switch buffer.event(at: index, of: uffd) {
        case .pageFault(let fault):
          faults.append((fault, readAt))
        case .remove(let start, let end):
          state.withLock { $0.release(start: start.rawValue, end: end.rawValue) }
          handBack(start: start.rawValue, end: end.rawValue)
        case .unmap(let start, let end):
          state.withLock { $0.release(start: start.rawValue, end: end.rawValue) }
        case .fork(let child):
          child.close()
        case .remap, .unrecognized:
          state.withLock { $0.statistics.otherEvents += 1 }
        }
      }
    } }
    if gone { return .ended(.processGone) }
    var retry: [(fault: PageFault, readAt: ContinuousClock.Instant)] = []
    for item in faults {
      switch serve(item.fault, readAt: item.readAt, clock: clock) {
      case .done: break
      case .retry, .awaitingCopy: retry.append(item)
      case .gone: return .ended(.processGone)
      case .endSession: return .ended(.failed)
      }
    }
    if !retry.isEmpty { loopDeferred.withLock { $0.append(contentsOf: retry) } }
    return .serving
  }

  /// Whether faults wait for a retry (the loop should come back within a millisecond).
  package var hasDeferredFaults: Bool { loopDeferred.withLock { !$0.isEmpty } }

  /// One replay step of the session's working set while it has one, then one prefetch copy when
  /// the configuration asks for prefetching; false once nothing is left (or neither is on). A loop
  /// calls it only when no fault of any session is ready.
  package func prefetchOnce() -> Bool {
    if replayStep() { return true }  // a working set first, in its recorded order
    guard configuration.prefetch else { return false }
    return (prefetchesInParallel ? prefetchChunk() : prefetchStep()) != .finished
  }

  /// Ends serving for `reason` and returns the summary.
  package func end(reason: Statistics.EndReason) -> Statistics {
    stopping.store(true, ordering: .releasing)
    let start = state.withLock { $0.start } ?? ContinuousClock.now
    return finish(clock: ContinuousClock(), start: start, reason: reason)
  }

  /// Parses the JSON array of regions a client sends.
  static func decodeRegions(_ bytes: [UInt8]) throws(UserfaultfdError) -> [GuestRegion] {
    do {
      return try RegionsJSON.decode(bytes)
    } catch {
      throw .invalidArgument(.serve, .badRegions("not a JSON array of regions: \(error)"))
    }
  }
}

extension SnapshotServer {
  /// Where a run of `pages` pages from snapshot offset `fileOffset` is copied from: this session's
  /// own overlay page (alone, `overlaid`), or the snapshot mapping for the run cut short before the
  /// next overlay page. The one rule for prefetch, replay and the prefetch pool.
  func copySource(at fileOffset: Int, pages: Int, pageSize: Int) -> (source: UInt, pages: Int, overlaid: Bool) {
    guard let overlay else { return (snapshot.address(at: fileOffset).rawValue, pages, false) }
    if let own = overlay.source(at: fileOffset) { return (own, 1, true) }
    return (snapshot.address(at: fileOffset).rawValue,
            overlay.pagesBeforeOverlay(from: fileOffset, pages: pages, pageSize: pageSize), false)
  }
}
