import CUserfaultfd
import Synchronization
import SystemPackage

/// A range whose faults are resolved in the faulting thread itself (`UFFD_FEATURE_SIGBUS`): the
/// kernel sends SIGBUS instead of a fault event, and the package's handler fills the page before
/// the access is retried. This is Android ART's production design, and the fastest way to serve a
/// fault (see the README's table).
///
/// ## The rules of the resolver
/// It runs inside a signal handler, on whatever thread touched the page. It must be
/// async-signal-safe: no allocation, no locks, no Swift reference counting, no `print`. So it is a
/// C function pointer (or a Swift `@convention(c)` function that touches only raw memory and calls
/// only C functions such as the ioctl wrappers in `CUserfaultfd`) with a context pointer. The
/// built-in ``Source`` resolvers are written in C and satisfy these rules.
///
/// ## When a fault cannot be filled
/// A resolver that returns non-zero, or a built-in one whose ioctl fails (a source hole for MOVE,
/// an unreadable source for COPY), does not leave the thread retrying forever: the page gets the
/// region's ``UnresolvableFaultAction`` (poisoned, so the access raises a genuine SIGBUS that goes
/// to the previous handler; or zero-filled), and ``failedResolutions`` counts it.
///
/// ## System calls into the region
/// A system call that writes into a missing page of the region (`read(2)` into it, for instance)
/// cannot be given a signal: it fails with EFAULT ("Bad address"). Touch the page first, or use a
/// ``FaultServer``, which serves kernel-mode faults too.
///
/// A SIGBUS for an address outside every region, a poisoned page, and a signal sent by a process
/// go to the handler installed before this package's, or get the default action (the process
/// ends). Closing a region while threads fault in it is safe: a signal already on its way makes
/// the thread retry its access, which is an ordinary fault once the range is unregistered.
public final class SigbusRegion: @unchecked Sendable {
  // @unchecked: every stored property is immutable after init except `closed` (atomic); the
  // context memory is written once before the region is published and freed only after the C
  // table has retired the slot and no handler is inside it.

  /// Where the built-in resolver gets each page's content.
  public enum Source {
    /// UFFDIO_COPY from the page at the same offset in `base`.
    case copy(from: UnsafeRawPointer)
    /// UFFDIO_MOVE from the page at the same offset in `base` (Linux 6.8+; checked at setup).
    case move(from: UnsafeMutableRawPointer)
    /// UFFDIO_ZEROPAGE.
    case zeroPage
  }

  /// A resolver: `(context, pageAddress) -> 0` when the page is now mapped. See the type's rules.
  public typealias Resolver = @convention(c) (UnsafeMutableRawPointer?, UInt) -> Int32

  /// The userfaultfd the range is registered with (kept open while the region lives).
  public let uffd: Userfaultfd
  /// First byte of the range.
  public let start: UnsafeMutableRawPointer
  /// Length of the range in bytes.
  public let length: Int
  /// What a fault that cannot be filled gets, as this kernel can do it.
  public let failureAction: UnresolvableFaultAction
  private let slot: Int32
  private let context: UnsafeMutablePointer<cuffd_sigbus_source>?
  private let closed = Atomic<Bool>(false)

  /// Registers `length` bytes at `start` (MISSING mode) and resolves their faults from `source`.
  ///
  /// - Throws: ``UserfaultfdError/notSupported(_:_:)`` for `.move` on a kernel without UFFDIO_MOVE
  ///   (Linux < 6.8); ``InvalidArgument/sourceNotReadable(_:_:)`` for a `.copy` source whose
  ///   first page's mapping cannot be read, ``InvalidArgument/moveProtections(source:destination:)``
  ///   for a `.move` source whose protection MOVE does not take (both before anything is
  ///   registered: at fault time they could only fail the fault); see the designated initializer
  ///   for the rest.
  public convenience init(
    uffd: Userfaultfd, start: UnsafeMutableRawPointer, length: Int, source: Source,
    onFailure: UnresolvableFaultAction = .poison
  ) throws(UserfaultfdError) {
    let (base, useMove): (UInt, Int32) =
      switch source {
      case .copy(let from): (UInt(bitPattern: from), 0)
      case .move(let from): (UInt(bitPattern: from), 1)
      case .zeroPage: (0, 0)
      }
    if useMove == 1 {
      guard uffd.supportedFeatures.contains(.move), PageMover.moveVerdict.isUsable else {
        throw .notSupported(.move, "SigbusRegion(source: .move) needs UFFDIO_MOVE (Linux 6.8 or later), which"
          + " is not usable here (\(PageMover.moveVerdict)); use .copy on this kernel")
      }
      _ = try PageRange.pair(source: UnsafeRawPointer(bitPattern: base) ?? UnsafeRawPointer(start),
                             destination: start, length: length, operation: .sigbusRegion)
      // Checked now, not at fault time, where it could only poison the page.
      if let origin = Mapping.containing(base), let target = Mapping.containing(UInt(bitPattern: start)),
         origin.protection != target.protection || !origin.isWritable {
        throw .invalidArgument(.sigbusRegion, .moveProtections(source: origin.protection, destination: target.protection))
      }
    } else if base != 0 {
      _ = try PageRange.pair(source: UnsafeRawPointer(bitPattern: base) ?? UnsafeRawPointer(start),
                             destination: start, length: length, operation: .sigbusRegion)
      if let origin = Mapping.containing(base), !origin.isReadable {
        throw .invalidArgument(.sigbusRegion, .sourceNotReadable(Address(rawValue: base), origin.protection))
      }
    }
    let context = UnsafeMutablePointer<cuffd_sigbus_source>.allocate(capacity: 1)
    context.initialize(to: cuffd_sigbus_source(
      uffd: uffd.fileDescriptor.rawValue, use_move: useMove, region_base: UInt(bitPattern: start),
      source_base: base, page_size: PageSize.base))
    do {
      try self.init(uffd: uffd, start: start, length: length, owned: context,
                    resolver: cuffd_sigbus_resolve_from_source, context: UnsafeMutableRawPointer(context),
                    onFailure: onFailure)
    } catch {
      context.deallocate()
      throw error
    }
  }

  /// Registers `length` bytes at `start` (MISSING mode) and resolves their faults with `resolver`.
  ///
  /// - Throws: ``UserfaultfdError/invalidArgument(_:_:)`` when `uffd` lacks ``Features/sigbus``,
  ///   the range is misaligned, or it overlaps another live region (nothing is registered then);
  ///   ``UserfaultfdError/closed(_:)`` for a closed handle; the register ioctl's failure.
  public convenience init(
    uffd: Userfaultfd, start: UnsafeMutableRawPointer, length: Int, resolver: Resolver,
    context: UnsafeMutableRawPointer?, onFailure: UnresolvableFaultAction = .poison
  ) throws(UserfaultfdError) {
    try self.init(uffd: uffd, start: start, length: length, owned: nil, resolver: resolver,
                  context: context, onFailure: onFailure)
  }

  private init(
    uffd: Userfaultfd, start: UnsafeMutableRawPointer, length: Int,
    owned: UnsafeMutablePointer<cuffd_sigbus_source>?, resolver: Resolver,
    context: UnsafeMutableRawPointer?, onFailure: UnresolvableFaultAction
  ) throws(UserfaultfdError) {
    guard uffd.features.contains(.sigbus) else {
      throw .invalidArgument(.sigbusRegion, .handleLacksFeatures(.sigbus))
    }
    let range = try PageRange(start, length: length, role: .range, operation: .sigbusRegion)
    let fd = try uffd.fd(for: .sigbusRegion)
    guard cuffd_sigbus_install() == 0 else {
      throw .systemCallFailed("sigaction(SIGBUS)", .current)
    }
    let action = onFailure.effective(on: uffd)
    // Claim the slot first: an overlap is refused before the range is registered, so the
    // failure cannot unregister a live region's pages.
    let slot = cuffd_sigbus_claim(
      range.start, length, fd, PageSize.base,
      action == .poison ? CUFFD_SIGBUS_FAIL_POISON : CUFFD_SIGBUS_FAIL_ZEROPAGE, resolver, context)
    guard slot >= 0 else {
      if Errno.current == .fileExists {
        throw .invalidArgument(.sigbusRegion, .overlapsLiveRegion(Address(rawValue: range.start)..<Address(rawValue: range.end)))
      }
      throw .invalidArgument(.sigbusRegion, .tooManyRegions(max: Int(CUFFD_SIGBUS_MAX_REGIONS)))
    }
    do {
      try uffd.register(start, length: length, mode: .missing)
    } catch {
      cuffd_sigbus_release(slot)
      throw error
    }
    cuffd_sigbus_activate(slot)
    self.uffd = uffd
    self.start = start
    self.length = length
    self.failureAction = action
    self.slot = slot
    self.context = owned
  }

  deinit { close() }

  /// Withdraws the resolver (waiting for any call under way), then unregisters the range. Later
  /// accesses are ordinary faults; a thread whose SIGBUS was already on its way retries its access
  /// instead of dying. Safe to call more than once.
  public func close() {
    guard !closed.exchange(true, ordering: .acquiringAndReleasing) else { return }
    cuffd_sigbus_retire(slot)
    try? uffd.unregister(start, length: length)
    if let context {
      context.deinitialize(count: 1)
      context.deallocate()
    }
  }

  /// Faults this region resolved so far.
  public var resolvedCount: UInt64 { stats.resolved }
  /// Faults this region could not resolve and failed with ``failureAction``.
  public var failedResolutions: UInt64 { stats.failed }
  /// The last fault this region could not resolve, if any.
  public var lastFailure: UnresolvedFault? {
    let stats = self.stats
    guard stats.failed > 0 else { return nil }
    return UnresolvedFault(
      pageAddress: Address(rawValue: stats.last_failed_address),
      errno: stats.last_failed_errno == 0 ? nil : stats.last_failed_errno, action: failureAction)
  }

  private var stats: cuffd_sigbus_slot_stats {
    var stats = cuffd_sigbus_slot_stats()
    if !closed.load(ordering: .acquiring) { cuffd_sigbus_slot_stats(slot, &stats) }
    return stats
  }

  /// Faults resolved by SIGBUS handlers in this process so far.
  public static var resolvedCount: UInt64 { cuffd_sigbus_resolved_count() }
  /// Faults no resolver could fill, failed with their region's action, in this process so far.
  public static var failedCount: UInt64 { cuffd_sigbus_failed_count() }
  /// SIGBUS signals passed on to the previous handler or the default action.
  public static var forwardedCount: UInt64 { cuffd_sigbus_forwarded_count() }
}
