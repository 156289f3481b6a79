import Userfaultfd
import Histogram
import SystemPackage

extension SnapshotServer {
  /// What a snapshot server did (``SnapshotServer/statistics``, and the summary ``run(client:progress:)``
  /// returns).
  public struct Statistics: Sendable, Hashable {
    /// Why serving ended.
    public enum EndReason: String, Sendable, Hashable, Codable {
      /// Still serving (a snapshot taken while running).
      case running
      /// The client closed its connection (it exited, or is done).
      case clientHungUp = "client-hung-up"
      /// The process whose memory this is has exited.
      case processGone = "process-gone"
      /// ``SnapshotServer/stop()`` was called.
      case stopped
      /// A system call the loop depends on failed.
      case failed
    }

    /// Faults served (each with one or more pages).
    public var faults = 0
    /// Pages brought in by faults, fault-around included.
    public var pagesByFault = 0
    /// Pages brought in by the background prefetcher.
    public var pagesByPrefetch = 0
    /// Of ``pagesByPrefetch``, all-zero snapshot pages mapped with UFFDIO_ZEROPAGE (nothing copied).
    public var zeroPagesByPrefetch = 0
    /// Pages brought in by replaying the snapshot's recorded working set.
    public var pagesByReplay = 0
    /// Pages served from the session's overlay instead of the snapshot.
    public var overlayPages = 0
    /// Pages zero-filled because the client had released them.
    public var zeroPages = 0
    /// Pages the client released (REMOVE and UNMAP events).
    public var releasedPages = 0
    /// Faults on pages already filled (only a wake was needed).
    public var wakes = 0
    /// Faults retried because an event was pending (EAGAIN).
    public var eagainRetries = 0
    /// Faults that could not be served (poisoned or zero-filled instead).
    public var failedFaults = 0
    /// Prefetch copies that failed (their pages were left to faults).
    public var prefetchErrors = 0
    /// Events other than faults and releases (remap, unknown).
    public var otherEvents = 0
    /// Bytes copied or zero-filled into the client.
    public var bytesServed = 0
    /// Pages never touched when serving ended.
    public var untouchedPages = 0
    /// From the start until the first fault was served.
    public var firstFault: Duration?
    /// From the start until no page was left untouched (every page resident or released).
    public var fullResidency: Duration?
    /// Median and 99th percentile of fault service time (from reading the fault to its answer).
    public var faultLatencyP50: Duration = .zero
    public var faultLatencyP99: Duration = .zero
    /// How long the server ran.
    public var elapsed: Duration = .zero
    /// Why it ended.
    public var endReason = EndReason.running
  }

  /// Everything the serving thread and the prefetcher share, behind one lock: a copy into the
  /// client and the page-state change that goes with it happen together, so a page released
  /// while it is being prefetched can never end up holding stale snapshot data.
  struct ServingState {
    var map: RestorePageMap
    let action: UnresolvableFaultAction
    /// The fault-around window, in pages, and where the last fault-around ended.
    var window: Int
    var lastEnd: UInt = 0
    var statistics = Statistics()
    var start: ContinuousClock.Instant?
    /// Where the prefetcher looks for the next untouched page.
    var prefetchNext = 0
    // Two significant digits (1%) are plenty for p50 / p99 and keep a session's histogram near 30 KiB
    // (three would be 216 KiB per session).
    /// The working-set recording and replay of this session, when it has them.
    var trace: AccessTrace?
    var replay: ReplayQueue?
    /// Released ranges unregistered (handed back to the kernel's zero-fill).
    var handedBack = 0
    /// A fault was left to a prefetch copy in flight: the copier wakes the serving thread when it
    /// is done, so the fault's bookkeeping does not wait for the next poll.
    var faultsOnCopies = false
    var latency = Histogram<UInt64>(highestTrackableValue: 60_000_000_000, numberOfSignificantValueDigits: .two)

    init(map: RestorePageMap, action: UnresolvableFaultAction, window: Int) {
      self.map = map
      self.action = action
      self.window = window
    }

    /// Pages a fault brings in after a jump: a few neighbours cost little next to a fault's round
    /// trip (a page copies in about a microsecond, a fault takes tens), and catch the locality
    /// most working sets have.
    static var initialWindow: Int { 4 }

    /// The adaptive fault-around window for a fault at `target`: doubles while faults follow each
    /// other sequentially (each at the end of the last window), back to the initial window on a
    /// jump.
    mutating func window(for target: UInt, pageSize: Int, limit: Int) -> Int {
      window = target == lastEnd ? min(window * 2, limit) : min(Self.initialWindow, limit)
      lastEnd = target + UInt(window * pageSize)
      return window
    }

    mutating func release(start: UInt, end: UInt) {
      statistics.releasedPages += map.release(start: start, end: end)
    }

    /// Zeros for a released page: ZEROPAGE for base pages, a copy of zeros where the kernel has
    /// no zero page for the memory (hugetlbfs).
    func zeroFill(_ target: UInt, pageSize: Int, uffd: Userfaultfd, zeros: AnonymousMemory) -> KernelAnswer {
      if pageSize == PageSize.base { return RangeIoctl.zeroPage(uffd.coreDescriptor, target, length: pageSize) }
      return RangeIoctl.copy(uffd.coreDescriptor, target, from: Address(zeros.baseAddress).rawValue, length: pageSize)
    }

    /// A fault that cannot be served: poison the page (the access raises SIGBUS in the client) or
    /// zero-fill it, per the configuration; the thread is never left waiting.
    mutating func fail(address: UInt, errno: Errno, uffd: Userfaultfd, zeros: AnonymousMemory) {
      statistics.failedFaults += 1
      guard let region = map.region(containing: address) else {
        _ = RangeIoctl.wake(uffd.coreDescriptor, address, length: PageSize.base)
        return
      }
      let pageSize = map.regions[region].pageSize
      let page = map.page(of: address, in: region)
      var answer = action == .poison
        ? RangeIoctl.poison(uffd.coreDescriptor, address, length: pageSize) : zeroFill(address, pageSize: pageSize, uffd: uffd, zeros: zeros)
      if answer.outcome == .failed { answer = zeroFill(address, pageSize: pageSize, uffd: uffd, zeros: zeros) }
      if answer.outcome == .done { map.mark(page..<(page + 1), .zeroFilled) }
      _ = RangeIoctl.wake(uffd.coreDescriptor, address, length: pageSize)
    }

    /// Records a fault's service time; returns it in nanoseconds.
    @discardableResult
    mutating func recordLatency(since read: ContinuousClock.Instant, clock: ContinuousClock) -> UInt64 {
      let now = clock.now
      let (seconds, attoseconds) = (now - read).components
      let nanoseconds = UInt64(max(0, seconds * 1_000_000_000 + attoseconds / 1_000_000_000))
      _ = latency.record(nanoseconds)
      if statistics.firstFault == nil, let start { statistics.firstFault = now - start }
      return nanoseconds
    }

    mutating func noteResidency(clock: ContinuousClock) {
      if map.untouched == 0, statistics.fullResidency == nil, let start {
        statistics.fullResidency = clock.now - start
      }
    }
  }
}
