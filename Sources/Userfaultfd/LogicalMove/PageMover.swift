import Glibc
import CUserfaultfd
import SystemPackage

/// The logical move the UFFDIO_MOVE thread asked for: move this data, zero-copy where possible,
/// with a correct copy fallback where asked, and an account of what happened to every page.
///
/// The kernel's MOVE is strict: a page that is not exclusively mapped (shared with a forked child,
/// merged by KSM, pinned) fails with EBUSY. `PageMover` issues MOVE in batches (cut at 2 MiB source
/// boundaries so aligned huge pages move as whole PMDs), resumes by itself after partial progress
/// and after transient EAGAIN, and depending on ``MovePolicy`` skips holes and copies busy pages.
///
/// ## The copy fallback is atomic
/// The naive fallback, UFFDIO_COPY then MADV_DONTNEED of the source, loses any write that lands on
/// the source between the two calls. Instead the fallback first *takes* the busy pages out of the
/// source with one `mremap(MREMAP_MAYMOVE | MREMAP_FIXED | MREMAP_DONTUNMAP)` into a private scratch
/// range. That is a single page-table operation under the mmap lock: a writer either wrote before
/// it (the write travels with the page) or after it (it finds the source empty: a hole reading
/// zero, or a userfault if the source is registered), exactly as after a real MOVE. The scratch
/// pages, which nobody else can see, are then copied to the destination with UFFDIO_COPY (waking
/// its faulting threads) and dropped. Nothing needs the source to be registered, and no writer is
/// blocked. This was chosen over write-protecting the source with UFFDIO_WRITEPROTECT because that
/// needs the source registered in WP mode with a userfaultfd whose events somebody reads, which a
/// source already registered with another handler cannot be.
///
/// Caveats: a page pinned for DMA stays pinned to the old physical page, so device writes after
/// the take land in the scratch copy and are lost (the report names such pages `likely-pinned`);
/// if the source is registered with a userfaultfd that has ``Features/eventRemap``, the mremap
/// raises a remap event and waits until it is read. If the destination turns out to be populated
/// during the copy (another agent resolved it), the untouched scratch pages are put back in the
/// source (by UFFDIO_MOVE when the source is registered with this userfaultfd, else by mremap).
public struct PageMover: Sendable {
  /// The userfaultfd the destination is registered with.
  public let uffd: Userfaultfd
  /// Whether UFFDIO_MOVE is used. False on kernels without it (Linux < 6.8): then only the
  /// copy-fallback policy works, and copies every page.
  public let usesMove: Bool

  /// A mover that uses UFFDIO_MOVE when this kernel's ``MoveVerdict`` says so (decided at run
  /// time, once per process: the feature bit, the kernel version, a self-test); otherwise only the
  /// copy-fallback policy works, and copies every page.
  public init(_ uffd: Userfaultfd) {
    self.uffd = uffd
    self.usesMove = uffd.supportedFeatures.contains(.move) && Self.moveVerdict.isUsable && !uffd.servesAnotherProcess
  }

  /// This process's verdict on UFFDIO_MOVE, from one probe (cached).
  public static var moveVerdict: MoveVerdict { cachedVerdict }
  private static let cachedVerdict: MoveVerdict = KernelProbe.run().moveVerdict

  /// A mover with UFFDIO_MOVE forced on or off: off behaves as on a kernel without MOVE (for tests,
  /// and for machines where copying wins).
  public init(_ uffd: Userfaultfd, usingMove: Bool) {
    self.uffd = uffd
    self.usesMove = usingMove && uffd.supportedFeatures.contains(.move) && !uffd.servesAnotherProcess
  }

  /// Most retries of an ioctl that made no progress with EAGAIN (events pending) before giving up.
  static let maxRetries = 2_000

  /// Moves `length` bytes from `source` to `destination`, whose range is registered with ``uffd``.
  ///
  /// - Returns: the report of a complete move: every page moved, copied, or (when allowed)
  ///   skipped as a hole. The source range is then empty.
  /// - Throws: ``UserfaultfdError/moveStopped(_:)`` with the report when it stops early: the report
  ///   says which pages moved and why it stopped; every page not reported moved or copied is still
  ///   in the source. Bad arguments throw before anything moves.
  public func move(
    from source: UnsafeMutableRawPointer, to destination: UnsafeMutableRawPointer, length: Int,
    policy: MovePolicy = .strict
  ) throws(UserfaultfdError) -> MoveReport {
    let (origin, target) = try PageRange.pair(
      source: source, destination: destination, length: length, operation: .move)
    guard MovePolicy.validPagesPerIoctl.contains(policy.maxPagesPerIoctl) else {
      throw .invalidArgument(
        .move, .outOfRange(parameter: "maxPagesPerIoctl", value: policy.maxPagesPerIoctl, valid: MovePolicy.validPagesPerIoctl))
    }
    if !usesMove && policy.busyPages != .copy {
      throw .notSupported(
        .move, "UFFDIO_MOVE is not supported by this kernel (Linux 6.8 or later); use the"
          + " copy-fallback policy to copy instead")
    }
    // What can fail is checked before anything is taken.
    _ = try uffd.fd(for: .move)
    if policy.checkDestinationEmpty { try Self.requireEmpty(target) }
    var run = Run(mover: self, source: origin.start, destination: target.start, policy: policy,
                  report: MoveReport(length: length))
    try run.execute()
    return run.report
  }

  /// Throws unless every destination page is missing, so bad input moves nothing.
  private static func requireEmpty(_ target: PageRange) throws(UserfaultfdError) {
    let pages = target.length / PageSize.base
    guard let map = PageMap(), let entries = map.entries(at: target.start, count: pages) else {
      return  // No pagemap: the kernel's EEXIST still stops the move, with an exact report.
    }
    if let index = entries.firstIndex(where: { !$0.isHole }) {
      throw .invalidArgument(.move, .destinationPopulated(page: index, address: Address(rawValue: target.start) + index * PageSize.base))
    }
  }
}

extension PageMover {
  /// The state of one logical move.
  struct Run {
    let mover: PageMover
    let source: UInt
    let destination: UInt
    let policy: MovePolicy
    var report: MoveReport
    var offset = 0
    var retries = 0
    var scratch: AnonymousMemory?
    /// A shorter step forced by a mapping boundary, for the next ioctl only.
    var limit: Int?

    var page: Int { PageSize.base }
    var length: Int { report.length }

    mutating func execute() throws(UserfaultfdError) {
      while offset < length {
        let chunk = chunkLength()
        if mover.usesMove {
          try moveChunk(chunk)
        } else {
          try fallback(pages: chunk / page)
        }
      }
    }

    /// The next ioctl's length: at most `maxPagesPerIoctl`, never across a 2 MiB source boundary.
    mutating func chunkLength() -> Int {
      let step = min(
        PageSize.current.stepLength(at: source + UInt(offset), remaining: length - offset,
                                    maxPages: policy.maxPagesPerIoctl),
        limit ?? Int.max)
      limit = nil
      return step
    }

    mutating func moveChunk(_ chunk: Int) throws(UserfaultfdError) {
      let src = UnsafeMutableRawPointer(bitPattern: source + UInt(offset))
      let dst = UnsafeMutableRawPointer(bitPattern: destination + UInt(offset))
      guard let src, let dst else { throw .invalidArgument(.move, .nullAddress(role: src == nil ? .source : .destination)) }
      let options: Userfaultfd.MoveOptions = policy.wake ? [] : .dontWake
      do {
        try mover.uffd.move(from: src, to: dst, length: chunk, options: options)
        report.moveIoctls += 1
        if chunk == PageSize.huge, isHugePageStep(src: src, dst: dst) {
          report.hugePageMoves += 1
        }
        advance(.moved, bytes: chunk)
      } catch {
        let failure: OperationFailure
        switch error {
        case .operationFailed(let refused):
          failure = refused
        case .invalidArgument(_, .moveProtections):
          // The kernel's EINVAL, diagnosed by the move: keep its answer in the report.
          report.moveIoctls += 1
          let refused = OperationFailure(
            operation: .move, errno: .invalidArgument, destination: Address(dst), source: Address(src), length: chunk)
          try stop(.notAttempted, failure: refused, cause: .protectionsDiffer, "\(error); every page from here is still in the source")
        case .closed:
          // The handle was closed meanwhile: nothing of this step moved.
          try stop(.notAttempted, failure: nil, cause: .handleClosed, "\(error); every page from here is still in the source")
        default:
          try stop(.notAttempted, failure: nil, cause: .refused, "\(error); every page from here is still in the source")
        }
        report.moveIoctls += 1
        if failure.bytesDone > 0 {
          advance(.moved, bytes: failure.bytesDone)
          return
        }
        try handleRefusal(failure, chunk: chunk)
      }
    }

    /// A MOVE that made no progress: decide by what the refusal means and by policy.
    mutating func handleRefusal(_ failure: OperationFailure, chunk: Int) throws(UserfaultfdError) {
      switch failure.kind {
      case .retryAfterEvents, .partial:
        try backOff(failure)
      case .sourceMissing:
        try checkMapped(failure)
        guard policy.holes == .skip else {
          try stop(.hole, failure: failure, cause: .sourceHole(Address(rawValue: source + UInt(offset))),
                   "source page at \(hex(source + UInt(offset))) is a hole (never touched, or already"
                     + " moved); pass a policy that skips holes to count them")
        }
        let holes = leadingPages(chunk: chunk) { $0.isHole }
        if holes == 0 { try backOff(failure) } else { advance(.hole, bytes: holes * page) }
      case .busy:
        let reason = BusyReason.diagnose(source + UInt(offset))
        let pages = max(1, leadingPages(chunk: chunk) { $0.isSwapped || ($0.isPresent && !$0.isExclusive) })
        report.busy.append(BusyRun(offset: offset, pages: pages, reason: reason))
        guard policy.busyPages == .copy else {
          try stop(.busy, failure: failure, cause: .busy(reason), "\(reason); \(reason.remedy)")
        }
        try fallback(pages: pages)
      case .alreadyPresent:
        if movedDespiteExisting() {
          report.movesAnsweredExisting += 1
          advance(.moved, bytes: page)
          return
        }
        try stop(.alreadyPresent, failure: failure, cause: .destinationPopulated(Address(rawValue: destination + UInt(offset))), failure.explanation)
      case .refused where failure.errno == .invalidArgument:
        // A range that spans two mappings (after an madvise split one, say) is refused whole:
        // cut the step at the first mapping boundary and go on.
        if let shorter = boundedByMappings(chunk), shorter < chunk {
          limit = shorter
          return
        }
        try checkMapped(failure)
        let (cause, message) = Self.explainInvalid(source + UInt(offset), destination + UInt(offset), failure)
        try stop(.notAttempted, failure: failure, cause: cause, message)
      default:
        try stop(.notAttempted, failure: failure, cause: .refused, failure.explanation)
      }
    }

    /// `chunk` cut at the end of the source's and the destination's mapping; nil when either
    /// address is unmapped.
    func boundedByMappings(_ chunk: Int) -> Int? {
      let from = source + UInt(offset)
      let to = destination + UInt(offset)
      guard let origin = Mapping.containing(from), let target = Mapping.containing(to) else { return nil }
      return min(chunk, Int(origin.end - from), Int(target.end - to))
    }

    /// Stops with a precise message when the source or destination page is not mapped at all
    /// (the kernel says ENOENT for a hole and for an unmapped range alike).
    mutating func checkMapped(_ failure: OperationFailure?) throws(UserfaultfdError) {
      let to = destination + UInt(offset)
      let from = source + UInt(offset)
      if Mapping.containing(to) == nil {
        try stop(.notAttempted, failure: failure, cause: .destinationUnmapped(Address(rawValue: to)),
                 "destination page at \(hex(to)) is not mapped: map and register the destination first;"
                   + " the source is untouched from here on")
      }
      if Mapping.containing(from) == nil {
        try stop(.notAttempted, failure: failure, cause: .sourceUnmapped(Address(rawValue: from)),
                 "source page at \(hex(from)) is not mapped: there is nothing to move there")
      }
    }

    static func explainInvalid(_ from: UInt, _ to: UInt, _ failure: OperationFailure) -> (StopCause, String) {
      if let origin = Mapping.containing(from), !origin.isPrivateAnonymous {
        return (.sourceNotPrivateAnonymous(Address(rawValue: from)),
                "the source at \(hex(from)) is \(origin.isShared ? "shared" : "file-backed") memory:"
                  + " pages can be moved only out of private anonymous memory; nothing was taken")
      }
      return (.refused, failure.explanation)
    }

    /// How many pages from `offset` (at most the chunk) satisfy `test`, per /proc/self/pagemap.
    func leadingPages(chunk: Int, _ test: (PageMap.Entry) -> Bool) -> Int {
      guard let map = PageMap(),
            let entries = map.entries(at: source + UInt(offset), count: chunk / page)
      else { return 1 }
      return entries.prefix(while: test).count
    }

    /// Retries later: EAGAIN without progress means events are pending or mappings are changing.
    mutating func backOff(_ failure: OperationFailure) throws(UserfaultfdError) {
      retries += 1
      guard retries <= PageMover.maxRetries else {
        try stop(.notAttempted, failure: failure, cause: .retriesExhausted,
                 "still EAGAIN after \(PageMover.maxRetries) retries: read this userfaultfd's pending"
                   + " events (remove, unmap, remap) so the kernel can proceed")
      }
      if retries < 16 {
        sched_yield()
      } else {
        var pause = timespec(tv_sec: 0, tv_nsec: min(1_000_000, 1_000 << min(retries - 16, 10)))
        nanosleep(&pause, nil)
      }
    }

    /// Whether a successful 2 MiB step moved a whole transparent huge page as one PMD: both ends
    /// 2 MiB-aligned and the page now at the destination a THP (/proc/kpageflags, root only).
    func isHugePageStep(src: UnsafeMutableRawPointer, dst: UnsafeMutableRawPointer) -> Bool {
      guard policy.inspectHugePages,
            UInt(bitPattern: src) % UInt(PageSize.huge) == 0,
            UInt(bitPattern: dst) % UInt(PageSize.huge) == 0,
            let map = PageMap(), let entry = map.entries(at: UInt(bitPattern: dst), count: 1)?.first
      else { return false }
      return PageMap.isTransparentHugePage(frame: entry.frame) ?? false
    }

    /// Whether a MOVE the kernel answered EEXIST for, with nothing done, in fact moved the page
    /// at `offset`: the source page is gone and the destination, checked empty before the move
    /// began, holds one. (Linux 6.18 answers so now and then when the source lies in a
    /// transparent huge page other threads are splitting; reading it as "destination populated"
    /// would report a page in the source that is in the destination.) Without that check, or
    /// without a readable pagemap, it cannot be told apart from a destination filled by someone
    /// else: false, and the move stops as before.
    func movedDespiteExisting() -> Bool {
      guard policy.checkDestinationEmpty, let map = PageMap(),
            let from = map.entry(at: source + UInt(offset)), let to = map.entry(at: destination + UInt(offset))
      else { return false }
      return from.isHole && to.isPresent
    }

    mutating func advance(_ outcome: PageOutcome, bytes: Int) {
      switch outcome {
      case .moved: report.bytesMoved += bytes
      case .copied: report.bytesCopied += bytes
      case .hole: report.holeBytes += bytes
      default: break
      }
      report.record(outcome, firstPage: offset / page, pages: bytes / page, keep: policy.recordPages)
      offset += bytes
      retries = 0
    }

    /// Ends the move: the page at `offset` gets `outcome`, the rest `notAttempted`.
    mutating func stop(
      _ outcome: PageOutcome, failure: OperationFailure?, cause: StopCause, _ message: String
    ) throws(UserfaultfdError) -> Never {
      try stop(outcomes: [(outcome, 1)], failure: failure, cause: cause, message)
    }

    /// Ends the move: from `offset` on, the pages get `outcomes` (runs of outcome and count), the
    /// rest `notAttempted`.
    mutating func stop(
      outcomes: [(PageOutcome, Int)], failure: OperationFailure?, cause: StopCause, _ message: String
    ) throws(UserfaultfdError) -> Never {
      var current = offset / page
      for (outcome, count) in outcomes {
        report.record(outcome, firstPage: current, pages: count, keep: policy.recordPages)
        current += count
      }
      report.record(.notAttempted, firstPage: current, pages: length / page - current,
                    keep: policy.recordPages)
      report.stop = MoveStop(offset: offset, outcome: outcomes.first?.0 ?? .notAttempted, failure: failure,
                             cause: cause, message: message)
      throw .moveStopped(report)
    }
  }
}
