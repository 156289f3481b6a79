import Glibc
import Userfaultfd

/// Prefetch in parallel: copies of the untouched rest of a local snapshot that may run on several
/// threads at once (the standalone server's prefetch pool) beside the thread that serves the
/// faults; the pager's serving loops make the same copies on their own thread, between faults.
///
/// One copy claims a run of untouched pages under the session lock (they become in flight), makes
/// the ioctls outside it, then marks them served under it again: the lock is held for the page
/// states only, never across a copy, so faults and other copiers are not queued behind one. A
/// fault on a page in flight is left to the copy, whose end wakes the faulting thread. Runs of
/// all-zero snapshot pages are mapped with UFFDIO_ZEROPAGE (the shared zero page: nothing copied,
/// nothing allocated until the client writes). Copies and event reads are ordered by the session's
/// ``CopyGate``.
extension SnapshotServer {
  /// What one prefetch step came to.
  package enum PrefetchStep { case copied, wait, finished }

  /// The most bytes one prefetch ioctl copies (for base pages and 2 MiB huge pages alike: at
  /// least one page): large enough that the ioctl's fixed cost vanishes, small enough that an
  /// event read waits for little (a 2 MiB copy takes about half a millisecond here).
  static var prefetchIoctlBytes: Int { 2 << 20 }

  /// Whether this session's prefetch copies may run on several threads: a local snapshot. A
  /// chunked one's pages come through the chunk cache, one serving loop at a time.
  package var prefetchesInParallel: Bool { snapshot.chunked == nil }

  /// A run of pages one copier has claimed.
  struct PrefetchClaim {
    var first: Int
    var pages: Int
    var pageSize: Int
    var target: UInt
    var source: UInt
    /// The session's own page (an overlay), not the snapshot's.
    var overlaid: Bool
  }

  /// What the copies of a claim did: pages copied, pages mapped to the zero page, pages found
  /// present already, and why it stopped short (nil: every page is in).
  struct PrefetchCopies {
    var copied = 0
    var zeroed = 0
    var present = 0
    var stop: KernelOutcome?
    var done: Int { copied + zeroed + present }
  }

  /// One prefetch copy, from any thread, beside other copiers and the serving thread: the next
  /// run of untouched pages (at most ``Configuration/prefetchPages`` and
  /// ``prefetchIoctlBytes``). `wait`: a reader holds the gate or an event is pending (try again
  /// shortly); `finished`: no untouched page is left for a copier to claim, or serving is over.
  package func prefetchChunk() -> PrefetchStep {
    guard !stopping.load(ordering: .acquiring) else { return .finished }
    guard gate.enter() else { return .wait }
    defer { gate.leave() }
    guard let claim = claimPrefetch() else { return .finished }
    let copies = copy(claim)
    return finish(claim, copies)
  }

  /// Claims the next run of untouched pages from the prefetch cursor (marks them in flight).
  private func claimPrefetch() -> PrefetchClaim? {
    state.withLock { serving -> PrefetchClaim? in
      var next = serving.prefetchNext
      let count = serving.map.states.count
      while next < count && serving.map.states[next] != .untouched { next += 1 }
      serving.prefetchNext = next
      guard next < count else { return nil }
      let region = Self.region(of: next, in: serving.map)
      let pageSize = serving.map.regions[region].pageSize
      let limit = max(1, min(configuration.prefetchPages, Self.prefetchIoctlBytes / pageSize))
      let fileOffset = serving.map.fileOffset(ofPage: next, in: region)
      let (source, pages, overlaid) = copySource(
        at: fileOffset, pages: max(1, serving.map.untouchedRun(from: next, in: region, limit: limit)), pageSize: pageSize)
      serving.map.mark(next..<(next + pages), .inFlight)
      serving.prefetchNext = next + pages
      return PrefetchClaim(
        first: next, pages: pages, pageSize: pageSize, target: serving.map.address(ofPage: next, in: region),
        source: source, overlaid: overlaid)
    }
  }

  /// The ioctls of a claim, outside the session lock: runs of zero pages by ZEROPAGE (base pages:
  /// the kernel has no zero page for hugetlbfs), the rest by COPY from the shared mapping.
  private func copy(_ claim: PrefetchClaim) -> PrefetchCopies {
    let fd = uffd.coreDescriptor
    let size = claim.pageSize
    let zeroable = size == PageSize.base && !claim.overlaid
    var result = PrefetchCopies()
    while result.done < claim.pages {
      let at = result.done
      let left = claim.pages - at
      let source = claim.source + UInt(at * size)
      let target = claim.target + UInt(at * size)
      let zeros = zeroable ? Self.zeroPages(at: source, pages: left, pageSize: size) : 0
      let run = zeros > 0 ? zeros : zeroable ? Self.dataPages(at: source, pages: left, pageSize: size) : left
      let answer = zeros > 0
        ? RangeIoctl.zeroPage(fd, target, length: run * size) : RangeIoctl.copy(fd, target, from: source, length: run * size)
      let done = answer.bytesDone / size
      if zeros > 0 { result.zeroed += done } else { result.copied += done }
      switch answer.outcome {
      case .done:
        continue
      case .partial where done > 0:
        continue
      case .alreadyPresent:
        result.present += 1  // present already (a client that was re-adopted): never overwritten
      default:
        result.stop = answer.outcome
        return result
      }
    }
    return result
  }

  /// The page states of a claim after its copies: served up to where they stopped, untouched
  /// again from there (a pending event: the cursor comes back to them; a failure: left to a
  /// fault, which fails it visibly if it must).
  private func finish(_ claim: PrefetchClaim, _ copies: PrefetchCopies) -> PrefetchStep {
    let (step, waiting) = state.withLock { serving -> (PrefetchStep, Bool) in
      let end = claim.first + claim.pages
      let done = claim.first + copies.done
      // Only pages still in flight: none can have been released meanwhile (events are read with
      // no copy in flight), but a state is never overwritten on that belief alone.
      serving.map.settle(claim.first..<done, .served)
      serving.map.settle(done..<end, .untouched)
      if claim.overlaid {
        serving.statistics.overlayPages += copies.copied
      } else {
        serving.statistics.pagesByPrefetch += copies.copied + copies.zeroed
        serving.statistics.zeroPagesByPrefetch += copies.zeroed
      }
      serving.statistics.bytesServed += (copies.copied + copies.zeroed) * claim.pageSize
      serving.noteResidency(clock: ContinuousClock())
      let waiting = serving.faultsOnCopies
      serving.faultsOnCopies = false
      switch copies.stop {
      case nil:
        return (.copied, waiting)
      case .retryAfterEvents?, .partial?:
        // An event is pending: the serving thread reads it first; these pages are claimed again.
        serving.prefetchNext = min(serving.prefetchNext, done)
        return (.wait, waiting)
      case .processGone?:
        return (.finished, waiting)
      default:
        serving.statistics.prefetchErrors += 1
        // The failed page stays untouched behind the cursor, for a fault; the rest is claimed again.
        serving.prefetchNext = min(serving.prefetchNext, min(done + 1, end))
        return (.copied, waiting)
      }
    }
    // Faults read while these pages were in flight were woken by the copy itself; the serving
    // thread only has its bookkeeping to finish, and hears it now rather than at its next poll.
    if waiting { wakeServingThread() }
    return step
  }

  /// How many pages from `address` on (at most `pages`) hold only zeros.
  static func zeroPages(at address: UInt, pages: Int, pageSize: Int) -> Int {
    var count = 0
    while count < pages && isZero(address + UInt(count * pageSize), pageSize) { count += 1 }
    return count
  }

  /// How many pages from `address` on (at most `pages`) come before the next all-zero page.
  static func dataPages(at address: UInt, pages: Int, pageSize: Int) -> Int {
    var count = 0
    while count < pages && !isZero(address + UInt(count * pageSize), pageSize) { count += 1 }
    return count
  }

  /// Whether the page at `address` holds only zeros. A page with data usually says so in its
  /// first bytes, so telling costs a cache line; a zero page is read whole (and then not copied).
  @inline(__always)
  static func isZero(_ address: UInt, _ length: Int) -> Bool {
    guard let page = UnsafeRawPointer(bitPattern: address) else { return false }
    if page.load(as: UInt64.self) != 0 { return false }
    var offset = 0
    while offset < length {
      var bits: UInt64 = 0
      for word in 0..<8 { bits |= page.load(fromByteOffset: offset + word * 8, as: UInt64.self) }
      if bits != 0 { return false }
      offset += 64
    }
    return true
  }
}
