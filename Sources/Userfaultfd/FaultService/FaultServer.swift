#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import Synchronization
import SystemPackage

/// Serves page faults of a userfaultfd on a dedicated thread: waits for events, reads them in
/// batches, asks a resolver how to fill each faulting page, and handles the kernel's answers.
///
/// - EEXIST (another thread already mapped the page): wake and carry on.
/// - EAGAIN with nothing done (a remove, unmap or remap event is pending, and faults and such events
///   can arrive out of order): read the pending events first, then retry the fault.
/// - Fork, remap, remove and unmap events go to the event handler and to ``events``.
///
/// **Waiting.** By default the thread sleeps in `poll(2)` on the userfaultfd and a wake-up pipe:
/// measured here a fault round trip costs 55-80 µs at the median. With ``Configuration/busyPoll``
/// it spins on non-blocking reads instead (~15 µs here) at the cost of one core kept busy. For the
/// lowest latency use ``SigbusRegion`` (the faulting thread resolves its own fault, ~5 µs).
///
/// **No allocation on the read path.** With ``Features/eventFork``, a thread calling fork() holds
/// glibc's malloc locks until the server has read the fork event; a server that allocated before
/// reading would deadlock with it. The server's own loop reads into preallocated buffers and
/// queues faults in a fixed-capacity buffer. Resolvers and event handlers run on the server thread:
/// when other threads fork, keep them allocation-free too.
///
/// **Shutdown never strands a thread.** ``stop()`` wakes the server, lets it resolve what it has
/// read, then unregisters every range registered through ``register(_:length:mode:)``: the
/// kernel wakes all threads still waiting there, and they retry their access as an ordinary fault
/// (anonymous memory then reads zero).
public final class FaultServer: @unchecked Sendable {
  /// Server settings.
  public struct Configuration: Sendable {
    /// Spin on non-blocking reads instead of sleeping in poll(2).
    public var busyPoll: Bool
    /// Most events read per read(2).
    public var batchSize: Int
    /// Creates a configuration.
    public init(busyPoll: Bool = false, batchSize: Int = 64) {
      self.busyPoll = busyPoll
      self.batchSize = batchSize
    }
  }

  /// Decides how to fill a faulting page. Runs on the server thread.
  public typealias Resolver = @Sendable (PageFault) -> Resolution
  /// Hears every non-fault event (fork, remap, remove, unmap). Runs on the server thread.
  public typealias EventHandler = @Sendable (Event) -> Void

  /// The userfaultfd served; opened with ``Userfaultfd/Options/nonBlocking``.
  public let uffd: Userfaultfd
  /// Every event the server read, faults included (after they were resolved), for code that wants
  /// Swift concurrency. Fed by the server thread, buffering the newest 4096; finishes on stop.
  public let events: AsyncStream<Event>

  private let configuration: Configuration
  private let resolver: Resolver
  private let onEvent: EventHandler?
  private let continuation: AsyncStream<Event>.Continuation
  private let stopping = Atomic<Bool>(false)
  private let stopped = Atomic<Bool>(false)
  private let ready = Atomic<Bool>(false)
  private let wakeRead: FileDescriptor
  private let wakeWrite: FileDescriptor
  private let ranges = Mutex<[(start: UInt, length: Int)]>([])
  private let thread = Mutex<DedicatedThread?>(nil)
  private let counters = Counters()
  // Touched only by the server thread (allocated once, so its loop never calls malloc).
  private let records: UnsafeMutableRawBufferPointer
  private let pending: UnsafeMutableBufferPointer<PageFault>
  private let pollDescriptors: UnsafeMutablePointer<pollfd>

  /// Counts of what the server did.
  public struct Statistics: Sendable, Hashable {
    /// Faults resolved by copy, move, zero page or continue.
    public var resolved: UInt64
    /// Faults found already resolved (EEXIST, or ENOENT for a move): woken instead.
    public var alreadyResolved: UInt64
    /// Retries after EAGAIN or a `later` answer.
    public var retries: UInt64
    /// Non-fault events.
    public var otherEvents: UInt64
    /// Operations that failed otherwise (the thread was woken to retry its access).
    public var errors: UInt64
  }

  private final class Counters: Sendable {
    let resolved = Atomic<UInt64>(0)
    let alreadyResolved = Atomic<UInt64>(0)
    let retries = Atomic<UInt64>(0)
    let otherEvents = Atomic<UInt64>(0)
    let errors = Atomic<UInt64>(0)
  }

  /// What the server has done so far.
  public var statistics: Statistics {
    Statistics(
      resolved: counters.resolved.load(ordering: .relaxed),
      alreadyResolved: counters.alreadyResolved.load(ordering: .relaxed),
      retries: counters.retries.load(ordering: .relaxed),
      otherEvents: counters.otherEvents.load(ordering: .relaxed),
      errors: counters.errors.load(ordering: .relaxed))
  }

  /// Starts serving `uffd` on a new thread.
  ///
  /// - Throws: ``UserfaultfdError/invalidArgument(_:_:)`` when `uffd` is blocking (the server
  ///   must never sleep inside read(2), or stop could not wake it) or uses SIGBUS mode (no fault
  ///   events are delivered then).
  public init(
    uffd: Userfaultfd, configuration: Configuration = Configuration(),
    onEvent: EventHandler? = nil, resolver: @escaping Resolver
  ) throws(UserfaultfdError) {
    guard uffd.isNonBlocking else {
      throw .invalidArgument(.readEvents, "the fault server needs a userfaultfd opened with .nonBlocking")
    }
    guard !uffd.features.contains(.sigbus) else {
      throw .invalidArgument(
        .readEvents, "this userfaultfd uses UFFD_FEATURE_SIGBUS: faults arrive as signals, use SigbusRegion")
    }
    guard configuration.batchSize > 0 else {
      throw .invalidArgument(.readEvents, "batchSize must be positive")
    }
    let pipe: (readEnd: FileDescriptor, writeEnd: FileDescriptor)
    do {
      pipe = try FileDescriptor.pipe()
    } catch {
      throw .systemCallFailed("pipe", (error as? Errno) ?? .ioError)
    }
    self.uffd = uffd
    self.configuration = configuration
    self.resolver = resolver
    self.onEvent = onEvent
    (self.events, self.continuation) = AsyncStream.makeStream(
      of: Event.self, bufferingPolicy: .bufferingNewest(4096))
    self.wakeRead = pipe.readEnd
    self.wakeWrite = pipe.writeEnd
    self.records = .allocate(byteCount: configuration.batchSize * Userfaultfd.eventSize, alignment: 8)
    self.pending = .allocate(capacity: configuration.batchSize * 4)
    self.pollDescriptors = .allocate(capacity: 2)
    pollDescriptors[0] = pollfd(fd: uffd.fileDescriptor.rawValue, events: Int16(POLLIN), revents: 0)
    pollDescriptors[1] = pollfd(fd: pipe.readEnd.rawValue, events: Int16(POLLIN), revents: 0)
    let started = try DedicatedThread { [self] in serve() }
    thread.withLock { $0 = started }
    // Wait until the server has run its read path once: first use instantiates Swift runtime
    // metadata, which allocates, and must not happen while a forking thread holds malloc's locks.
    while !ready.load(ordering: .acquiring) { sched_yield() }
  }

  deinit {
    try? wakeRead.close()
    try? wakeWrite.close()
    records.deallocate()
    pending.deallocate()
    pollDescriptors.deallocate()
  }

  /// Registers a range with the served userfaultfd and remembers it, so ``stop()`` can release
  /// the threads waiting there.
  @discardableResult
  public func register(
    _ start: UnsafeMutableRawPointer, length: Int, mode: RegisterMode = .missing
  ) throws(UserfaultfdError) -> Ioctls {
    let ioctls = try uffd.register(start, length: length, mode: mode)
    ranges.withLock { $0.append((UInt(bitPattern: start), length)) }
    return ioctls
  }

  /// Stops the server and releases every waiting thread (see the type's documentation). Safe to
  /// call more than once, from any thread but the server's own.
  public func stop() {
    guard !stopped.exchange(true, ordering: .acquiringAndReleasing) else { return }
    stopping.store(true, ordering: .releasing)
    var byte: UInt8 = 1
    _ = withUnsafeBytes(of: &byte) { try? wakeWrite.write($0) }
    thread.withLock { $0 }?.join()
    for range in ranges.withLock({ $0 }) {
      if let start = UnsafeMutableRawPointer(bitPattern: range.start) {
        try? uffd.unregister(start, length: range.length)
      }
    }
    continuation.finish()
  }

  // MARK: The server thread

  private func serve() {
    var queued = readEvents(queued: 0)
    queued = resolveQueued(queued)
    ready.store(true, ordering: .releasing)
    while !stopping.load(ordering: .acquiring) {
      if !configuration.busyPoll {
        pollDescriptors[0].revents = 0
        pollDescriptors[1].revents = 0
        // With faults waiting for a retry, only peek; otherwise sleep until something happens.
        _ = poll(pollDescriptors, 2, queued == 0 ? -1 : 1)
        if pollDescriptors[1].revents != 0 { break }
      }
      queued = readEvents(queued: queued)
      if queued > 0 { queued = resolveQueued(queued) }
    }
    // Whatever was read before the stop is still resolved.
    queued = readEvents(queued: queued)
    _ = resolveQueued(queued)
  }

  /// Reads what is pending while the queue has room; faults are queued, other events handed on
  /// at once. Returns the new queue length.
  private func readEvents(queued: Int) -> Int {
    var queued = queued
    let room = min(configuration.batchSize, pending.count - queued)
    guard room > 0 else { return queued }
    let window = UnsafeMutableRawBufferPointer(rebasing: records[0..<(room * Userfaultfd.eventSize)])
    guard let count = try? uffd.readRecords(into: window) else { return queued }
    for index in 0..<count {
      let event = uffd.decodeEvent(uffd.record(index, in: UnsafeRawBufferPointer(records)))
      if case .pageFault(let fault) = event {
        pending[queued] = fault
        queued += 1
      } else {
        counters.otherEvents.wrappingAdd(1, ordering: .relaxed)
        onEvent?(event)
        continuation.yield(event)
      }
    }
    return queued
  }

  /// Resolves the queued faults in place; returns how many remain queued for a retry.
  private func resolveQueued(_ count: Int) -> Int {
    var kept = 0
    for index in 0..<count {
      let fault = pending[index]
      if apply(resolver(fault), to: fault) {
        continuation.yield(.pageFault(fault))
      } else {
        counters.retries.wrappingAdd(1, ordering: .relaxed)
        pending[kept] = fault
        kept += 1
      }
    }
    return kept
  }

  /// Performs one resolution. False: try again later.
  private func apply(_ resolution: Resolution, to fault: PageFault) -> Bool {
    let page = PageSize.base
    guard let target = UnsafeMutableRawPointer(bitPattern: fault.pageAddress) else { return true }
    do {
      switch resolution {
      case .copy(let source): try uffd.copy(from: source, to: target, length: page)
      case .move(let source): try uffd.move(from: source, to: target, length: page)
      case .zeroPage: try uffd.zeroPage(target, length: page)
      case .continueMapping: try uffd.continue(target, length: page)
      case .wake:
        try uffd.wake(target, length: page)
        counters.alreadyResolved.wrappingAdd(1, ordering: .relaxed)
        return true
      case .later: return false
      }
      counters.resolved.wrappingAdd(1, ordering: .relaxed)
      return true
    } catch {
      let alreadyDone = error.errno == .fileExists
        || (error.errno == .noSuchFileOrDirectory && isMove(resolution))
      if alreadyDone {
        // Already mapped, or (for a move) the source page already moved: wake and carry on.
        counters.alreadyResolved.wrappingAdd(1, ordering: .relaxed)
        try? uffd.wake(target, length: page)
        return true
      }
      switch error.errno {
      case .resourceTemporarilyUnavailable? where error.bytesDone == 0:
        return false  // Events are pending: they are read before the retry.
      default:
        counters.errors.wrappingAdd(1, ordering: .relaxed)
        try? uffd.wake(target, length: page)
        return true
      }
    }
  }

  private func isMove(_ resolution: Resolution) -> Bool {
    if case .move = resolution { return true }
    return false
  }
}
