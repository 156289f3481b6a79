import Glibc
import Synchronization
import SystemPackage

/// Serves page faults of a userfaultfd on a dedicated thread: waits for events, reads them in
/// batches, asks a resolver how to fill each faulting page, and handles the kernel's answers.
///
/// - EEXIST (another thread already mapped the page): wake and carry on.
/// - EAGAIN with nothing done (a remove, unmap or remap event is pending, and faults and such events
///   can arrive out of order): read the pending events first, then retry the fault, a bounded
///   number of times (``Configuration/maxAttempts``).
/// - A resolution that cannot succeed (a MOVE from a hole, a COPY from unmapped memory, a source
///   that is itself a missing page registered with this handle) *fails the fault* with
///   ``Configuration/onUnresolvable``: the page is poisoned (the access raises SIGBUS) or
///   zero-filled, and the failure is counted and reported to `onFailure`. The faulting thread is
///   never left retrying forever.
/// - `.move` where the kernel has no UFFDIO_MOVE (Linux < 6.8), or refuses it with EBUSY (the
///   source is shared with a forked child), is done as COPY, then the source page is dropped.
/// - Fork, remap, remove and unmap events go to the event handler and to ``events``.
///
/// **Waiting.** By default the thread sleeps in `poll(2)` on the userfaultfd and a wake-up pipe.
/// With ``Configuration/busyPoll`` it spins on non-blocking reads instead, at the cost of one core
/// kept busy. For the lowest latency use ``SigbusRegion`` (the faulting thread resolves its own
/// fault). The README has the measured round trips.
///
/// **No allocation on the serving thread.** With ``Features/eventFork``, a thread calling fork()
/// holds glibc's malloc locks until the server has read the fork event; a server that allocated
/// before reading would deadlock with it. The serving thread reads into preallocated buffers,
/// queues faults in a fixed-capacity buffer, and hands what Swift code downstream needs (the
/// ``events`` stream, fork events, failure reports) to a second, *delivery* thread through a
/// fixed ring: that thread may wait on malloc's locks without stopping fault service. The resolver
/// and the event handler (for remap, remove and unmap) run on the serving thread: when other
/// threads fork, keep them allocation-free too. Fork events reach the event handler on the
/// delivery thread.
///
/// **Shutdown never strands a thread.** ``stop()`` (also run when the server is dropped) first
/// unregisters every range the handle registered (``Userfaultfd/unregisterAll()``) while the
/// server still reads, so the kernel wakes all threads still waiting (they retry their access as an
/// ordinary fault: anonymous memory then reads zero) and no new event can arrive; the server then
/// reads until no fork, remove or unmap event is under way (a thread of this process that forks
/// waits for its event to be read, holding malloc's locks), and only then stops. Close the handle
/// soon after: until then a fork that started under a registration, in the rare case the drain's
/// bound (10 s) ran out, still waits for its event.
///
/// **Registering never blocks fault service.** The handle's table of registered ranges is read by
/// the serving thread under a lock no allocation ever happens under; ``register(_:length:mode:)``
/// builds the new table outside it.
public final class FaultServer: Sendable {
  /// Server settings.
  public struct Configuration: Sendable {
    /// Spin on non-blocking reads instead of sleeping in poll(2).
    public var busyPoll: Bool
    /// Most events read per read(2): 1 to ``FaultServer/maxBatchSize``.
    public var batchSize: Int
    /// What a fault gets that cannot be resolved (see ``UnresolvableFaultAction``).
    public var onUnresolvable: UnresolvableFaultAction
    /// How many times one fault is tried while the kernel answers EAGAIN (events pending) before
    /// it is failed: 1 to 1,000,000. Each retry follows a read of the pending events.
    public var maxAttempts: Int
    /// Creates a configuration.
    public init(
      busyPoll: Bool = false, batchSize: Int = 64, onUnresolvable: UnresolvableFaultAction = .poison,
      maxAttempts: Int = 10_000
    ) {
      self.busyPoll = busyPoll
      self.batchSize = batchSize
      self.onUnresolvable = onUnresolvable
      self.maxAttempts = maxAttempts
    }
  }

  /// The largest ``Configuration/batchSize``.
  public static let maxBatchSize = 4096

  /// Decides how to fill a faulting page. Runs on the server thread.
  public typealias Resolver = @Sendable (PageFault) -> Resolution
  /// Hears every non-fault event: remap, remove and unmap on the server thread, in order with the
  /// faults; fork on the delivery thread.
  public typealias EventHandler = @Sendable (Event) -> Void
  /// Hears every fault that could not be resolved (after it was poisoned or zero-filled). Runs on
  /// the delivery thread, so it may allocate, log and block.
  public typealias FailureHandler = @Sendable (UnresolvedFault) -> Void

  /// The userfaultfd served; opened with ``Userfaultfd/Options/nonBlocking``.
  public let uffd: Userfaultfd
  /// Every event the server read, faults included (after they were resolved), for code that wants
  /// Swift concurrency. Fed by the delivery thread, buffering the newest 4096; finishes on stop.
  /// Other events arrive at once; resolved faults in batches, within 100 ms (the serving thread
  /// does not wake the delivery thread for each fault: that would double the fault's round trip).
  public let events: AsyncStream<Event>
  /// What an unresolvable fault gets on this kernel (``UnresolvableFaultAction/poison`` becomes
  /// ``UnresolvableFaultAction/zeroPage`` where the kernel has no UFFDIO_POISON).
  public let failureAction: UnresolvableFaultAction

  private let core: ServerCore
  private let threads: Mutex<(server: DedicatedThread?, delivery: DedicatedThread?)>
  private let stopped = Atomic<Bool>(false)

  /// Counts of what the server did.
  public struct Statistics: Sendable, Hashable {
    /// Faults resolved by copy, move, zero page or continue.
    public var resolved: UInt64
    /// Faults found already resolved (EEXIST): woken instead.
    public var alreadyResolved: UInt64
    /// Retries after EAGAIN or a `later` answer.
    public var retries: UInt64
    /// Non-fault events.
    public var otherEvents: UInt64
    /// Faults that could not be resolved and were poisoned or zero-filled instead.
    public var failed: UInt64
    /// Faults of a process that has exited (ESRCH): nothing left to serve.
    public var abandoned: UInt64
    /// Events not delivered to ``FaultServer/events`` because the delivery ring was full.
    public var droppedEvents: UInt64
    /// Earlier name of ``failed``.
    @available(*, deprecated, renamed: "failed")
    public var errors: UInt64 { failed }
  }

  /// What the server has done so far.
  public var statistics: Statistics { core.counters.snapshot() }

  /// The last fault that could not be resolved, if any.
  public var lastFailure: UnresolvedFault? { core.counters.lastFailure(action: failureAction) }

  /// Starts serving `uffd` on a new thread.
  ///
  /// - Throws: ``UserfaultfdError/invalidArgument(_:_:)`` when `uffd` is blocking (the server
  ///   must never sleep inside read(2), or stop could not wake it), uses SIGBUS mode (no fault
  ///   events are delivered then), or the configuration is out of range;
  ///   ``UserfaultfdError/closed(_:)`` when `uffd` is closed.
  public init(
    uffd: Userfaultfd, configuration: Configuration = Configuration(),
    onEvent: EventHandler? = nil, onFailure: FailureHandler? = nil, resolver: @escaping Resolver
  ) throws(UserfaultfdError) {
    guard uffd.isNonBlocking else {
      throw .invalidArgument(.readEvents, .handleIsBlocking)
    }
    guard !uffd.features.contains(.sigbus) else {
      throw .invalidArgument(.readEvents, .handleUsesSigbus)
    }
    guard (1...Self.maxBatchSize).contains(configuration.batchSize) else {
      throw .invalidArgument(
        .readEvents, .outOfRange(parameter: "batchSize", value: configuration.batchSize, valid: 1...Self.maxBatchSize))
    }
    guard (1...1_000_000).contains(configuration.maxAttempts) else {
      throw .invalidArgument(
        .readEvents, .outOfRange(parameter: "maxAttempts", value: configuration.maxAttempts, valid: 1...1_000_000))
    }
    _ = try uffd.fd(for: .readEvents)
    let action = configuration.onUnresolvable.effective(on: uffd)
    let (stream, continuation) = AsyncStream.makeStream(
      of: Event.self, bufferingPolicy: .bufferingNewest(4096))
    let core = try ServerCore(
      uffd: uffd, configuration: configuration, action: action, resolver: resolver,
      onEvent: onEvent, onFailure: onFailure, continuation: continuation)
    self.uffd = uffd
    self.events = stream
    self.failureAction = action
    self.core = core
    let delivery = try DedicatedThread { core.deliver() }
    let server: DedicatedThread
    do {
      server = try DedicatedThread { core.serve() }
    } catch {
      core.stopDelivery()
      delivery.join()
      throw error
    }
    self.threads = Mutex((server, delivery))
    // Wait until the server has run its read path once: first use instantiates Swift runtime
    // metadata, which allocates, and must not happen while a forking thread holds malloc's locks.
    core.waitUntilReady()
  }

  deinit { stop() }

  /// Registers a range with the served userfaultfd (see ``Userfaultfd/register(_:length:mode:)``).
  ///
  /// - Throws: ``UserfaultfdError/invalidArgument(_:_:)`` once the server is stopped: nobody
  ///   would serve the range's faults, and a thread touching it would wait forever.
  @discardableResult
  public func register(
    _ start: UnsafeMutableRawPointer, length: Int, mode: RegisterMode = .missing
  ) throws(UserfaultfdError) -> Ioctls {
    guard !stopped.load(ordering: .acquiring) else {
      throw .invalidArgument(.register, .serverStopped)
    }
    return try uffd.register(start, length: length, mode: mode)
  }

  /// Stops the server and releases every waiting thread (see the type's documentation). Safe to
  /// call more than once, from any thread but the server's own.
  public func stop() {
    guard !stopped.exchange(true, ordering: .acquiringAndReleasing) else { return }
    // Unregister while the serving thread still reads: with EVENT_FORK (or REMOVE / UNMAP) a
    // thread of this process that forks (or unmaps) waits until its event is read, holding
    // malloc's locks for a fork; a reader stopped first would leave it, and this thread's own
    // allocations, waiting for good. Unregistering releases every waiter and ends new events;
    // the serving thread then drains the events already under way before it returns.
    core.beginUnregistering()
    uffd.unregisterAll()
    core.stopServing()
    let (server, delivery) = threads.withLock { threads in
      defer { threads = (nil, nil) }
      return threads
    }
    server?.join()
    core.stopDelivery()
    delivery?.join()
    core.finish()
  }
}
