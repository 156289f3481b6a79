import Glibc
import CUserfaultfd
import Synchronization
import SystemPackage

/// Everything a ``FaultServer``'s two threads share. The threads hold this, never the public
/// server object, so dropping the server stops them (its `deinit` runs `stop()`) and nothing is
/// kept alive by a cycle.
///
/// @unchecked Sendable: the raw buffers (`records`, `pending`, `attempts`, `pollDescriptors`) are
/// touched only by the serving thread; the delivery ring has one producer (the serving thread) and
/// one consumer (the delivery thread), ordered by `ringHead` / `ringTail`; everything else is
/// immutable or atomic.
final class ServerCore: @unchecked Sendable {
  let uffd: Userfaultfd
  let configuration: FaultServer.Configuration
  let action: UnresolvableFaultAction
  let resolver: FaultServer.Resolver
  let onEvent: FaultServer.EventHandler?
  let onFailure: FaultServer.FailureHandler?
  let continuation: AsyncStream<Event>.Continuation
  let counters = ServerCounters()
  let hasMove: Bool

  private let stopping = Atomic<Bool>(false)
  /// Set by stop() before it unregisters: a resolution that fails from then on met a range
  /// unregistered under it (its thread is woken by the unregistering), not a failure to report.
  private let unregistering = Atomic<Bool>(false)
  private let ready = Atomic<Bool>(false)
  private let wakePipe: (read: Int32, write: Int32)
  // Serving thread only (allocated once, so its loop never calls malloc).
  private let records: UnsafeMutableRawBufferPointer
  private let pending: UnsafeMutableBufferPointer<PageFault>
  private let attempts: UnsafeMutableBufferPointer<Int>
  private let pollDescriptors: UnsafeMutablePointer<pollfd>
  private let pagemap: Int32
  /// 2 MiB of zeros (mapped, never touched: no memory), for zero-filling a hugetlbfs page, which
  /// has no zero page; allocated at setup because the serving thread must not allocate.
  private let hugeZeros: UInt
  // The delivery ring: the serving thread produces, the delivery thread consumes.
  private let ring: UnsafeMutableBufferPointer<DeliveryItem>
  private let ringHead = Atomic<Int>(0)
  private let ringTail = Atomic<Int>(0)
  private let deliverySleeping = Atomic<Bool>(false)
  private let deliveryStopping = Atomic<Bool>(false)
  private let deliveryPipe: (read: Int32, write: Int32)

  static let ringCapacity = 4096

  init(
    uffd: Userfaultfd, configuration: FaultServer.Configuration, action: UnresolvableFaultAction,
    resolver: @escaping FaultServer.Resolver, onEvent: FaultServer.EventHandler?,
    onFailure: FaultServer.FailureHandler?, continuation: AsyncStream<Event>.Continuation
  ) throws(UserfaultfdError) {
    let wake = try Self.makePipe()
    let delivery: (read: Int32, write: Int32)
    do {
      delivery = try Self.makePipe()
    } catch {
      _ = close(wake.read)
      _ = close(wake.write)
      throw error
    }
    self.uffd = uffd
    self.configuration = configuration
    self.action = action
    self.resolver = resolver
    self.onEvent = onEvent
    self.onFailure = onFailure
    self.continuation = continuation
    // Decided at setup, like every capability: MOVE where the feature bit and the verdict allow it.
    self.hasMove = uffd.supportedFeatures.contains(.move) && PageMover.moveVerdict.isUsable && !uffd.servesAnotherProcess
    self.wakePipe = wake
    self.deliveryPipe = delivery
    self.records = .allocate(byteCount: configuration.batchSize * Userfaultfd.eventSize, alignment: 8)
    self.pending = .allocate(capacity: configuration.batchSize * 4)
    self.attempts = .allocate(capacity: configuration.batchSize * 4)
    self.ring = .allocate(capacity: Self.ringCapacity)
    self.pollDescriptors = .allocate(capacity: 2)
    self.pagemap = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC)
    let zeros = mmap(nil, PageSize.huge, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)
    self.hugeZeros = zeros == nil || zeros == cuffd_map_failed() ? 0 : UInt(bitPattern: zeros)
    pollDescriptors[0] = pollfd(fd: uffd.fileDescriptor.rawValue, events: Int16(POLLIN), revents: 0)
    pollDescriptors[1] = pollfd(fd: wake.read, events: Int16(POLLIN), revents: 0)
  }

  deinit {
    for fd in [wakePipe.read, wakePipe.write, deliveryPipe.read, deliveryPipe.write, pagemap] where fd >= 0 {
      _ = close(fd)
    }
    // Fork events never delivered still own their child descriptors.
    var tail = ringTail.load(ordering: .acquiring)
    while tail < ringHead.load(ordering: .acquiring) {
      let item = ring[tail % Self.ringCapacity]
      if item.kind == .event, item.eventCode == UInt8(CUFFD_EVENT_FORK) { _ = close(item.forkDescriptor) }
      tail += 1
    }
    if hugeZeros != 0, let zeros = UnsafeMutableRawPointer(bitPattern: hugeZeros) { _ = munmap(zeros, PageSize.huge) }
    records.deallocate()
    pending.deallocate()
    attempts.deallocate()
    ring.deallocate()
    pollDescriptors.deallocate()
  }

  private static func makePipe() throws(UserfaultfdError) -> (read: Int32, write: Int32) {
    var ends: [Int32] = [-1, -1]
    guard cuffd_pipe_nonblocking(&ends) == 0 else { throw .systemCallFailed("pipe2", .current) }
    return (ends[0], ends[1])
  }

  func waitUntilReady() {
    while !ready.load(ordering: .acquiring) { sched_yield() }
  }

  func beginUnregistering() {
    unregistering.store(true, ordering: .releasing)
  }

  func stopServing() {
    stopping.store(true, ordering: .releasing)
    var byte: UInt8 = 1
    _ = write(wakePipe.write, &byte, 1)
  }

  func stopDelivery() {
    deliveryStopping.store(true, ordering: .sequentiallyConsistent)
    var byte: UInt8 = 1
    _ = write(deliveryPipe.write, &byte, 1)
  }

  func finish() { continuation.finish() }

  // MARK: The serving thread

  func serve() {
    warmUp()
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
    // Whatever was read before the stop is still resolved; the rest is released by unregistering.
    queued = readEvents(queued: queued)
    queued = resolveQueued(queued)
    drainEventsUnderWay(queued: queued)
  }

  /// After stop() unregistered every range: reads until no event can still arrive, so no thread
  /// that forked (or unmapped) while the ranges were registered waits for a reader that is gone.
  /// The kernel refuses UFFDIO_ZEROPAGE with EAGAIN while such an event is under way on this
  /// handle (`mmap_changing`, checked before the address), so a ZEROPAGE on memory the handle
  /// never registered tells: EAGAIN, keep reading; anything else, done. Old kernels (before 5.19)
  /// keep that state in a flag that the first of two concurrent forks clears, so it must read
  /// clear twice, a millisecond apart, with nothing read between. Bounded (10 s): a process
  /// that forks without pause would otherwise hold the server; its next fork then waits until the
  /// handle is closed.
  private func drainEventsUnderWay(queued: Int) {
    guard hugeZeros != 0, unregistering.load(ordering: .acquiring) else { return }
    var queued = queued
    var quietChecks = 0
    var clock = timespec()
    clock_gettime(CLOCK_MONOTONIC, &clock)
    let deadline = clock.tv_sec + 10
    while quietChecks < 2 {
      let before = counters.otherEvents.load(ordering: .relaxed)
      queued = readEvents(queued: queued)
      queued = resolveQueued(queued)
      let changing = uffd.zeroPageCore(hugeZeros, length: PageSize.base, mode: 0).outcome == .retryAfterEvents
      let quiet = !changing && queued == 0 && counters.otherEvents.load(ordering: .relaxed) == before
      quietChecks = quiet ? quietChecks + 1 : 0
      clock_gettime(CLOCK_MONOTONIC, &clock)
      if clock.tv_sec >= deadline { return }
      pollDescriptors[0].revents = 0
      _ = poll(pollDescriptors, 1, 1)
    }
  }

  /// Runs every path the serving thread can take once, harmlessly, before the server is ready:
  /// the first run of Swift code instantiates runtime metadata, which allocates, and must not
  /// happen while a forking thread holds malloc's locks. The ioctls target address 0, which is
  /// never registered, so each fails at once without touching anything.
  private func warmUp() {
    let page = PageSize.base
    var sink = 0
    for answer in [
      uffd.copyCore(0, from: 0, length: page, mode: 0), uffd.moveCore(0, from: 0, length: page, mode: 0),
      uffd.zeroPageCore(0, length: page, mode: 0), uffd.continueCore(0, length: page, mode: 0),
      uffd.poisonCore(0, length: page, mode: 0), uffd.wakeCore(0, length: page),
      KernelAnswer(.copy, failed: .fileExists, length: page), KernelAnswer(.move, failed: .resourceBusy, length: page),
      KernelAnswer(.copy, failed: .noSuchProcess, length: page), KernelAnswer.done(length: page),
    ] {
      switch answer.outcome {
      case .done, .partial: sink += 1
      case .alreadyPresent: sink += 2
      case .retryAfterEvents: sink += 3
      case .processGone: sink += 4
      case .sourceMissing, .busy, .failed: sink += Int(answer.errno?.rawValue ?? 0)
      }
    }
    let fault = PageFault(address: Address(rawValue: 0), flags: [], threadID: nil)
    for item in [DeliveryItem.fault(fault, uffd: uffd), .failure(address: 0, errno: .deadlock)] {
      sink += Int(item.eventCode) + Int(item.forkDescriptor) + Int(item.errno)
    }
    sink += isMissingRegisteredPage(0) ? 1 : 0
    sink += uffd.registeredPageSize(at: 0) ?? 0
    // The lookups' found-a-range paths too, on a private table: a fork's malloc locks may be
    // held the first time a real fault takes them.
    var ranges = RegisteredRanges()
    ranges.insert(UInt(PageSize.base), UInt(2 * PageSize.base))
    sink += ranges.pageSize(at: UInt(PageSize.base)) + (ranges.contains(UInt(PageSize.base)) ? 1 : 0)
    sink += zeroFill(0, page: PageSize.base).bytesDone + zeroFill(0, page: PageSize.huge).bytesDone
    // The drain after stop(): its clock and its probe (memory this handle never registers).
    var clock = timespec()
    clock_gettime(CLOCK_MONOTONIC, &clock)
    sink += Int(clock.tv_sec & 1)
    if hugeZeros != 0, uffd.zeroPageCore(hugeZeros, length: PageSize.base, mode: 0).outcome == .retryAfterEvents { sink += 1 }
    pending[0] = fault
    attempts[0] = sink
    counters.recordFailure(address: 0, errno: .deadlock)
    counters.reset()
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
      let record = uffd.record(index, in: UnsafeRawBufferPointer(records))
      let code = record.load(fromByteOffset: Int(CUFFD_MSG_OFFSET_EVENT), as: UInt8.self)
      if Int32(code) == CUFFD_EVENT_FORK {
        // Decoding a fork allocates the child's handle: the delivery thread does it.
        counters.otherEvents.wrappingAdd(1, ordering: .relaxed)
        let item = DeliveryItem.event(record)
        // A full ring cannot take it: close the child's descriptor rather than leak it.
        if !push(item) { _ = close(item.forkDescriptor) }
        continue
      }
      let event = uffd.decodeEvent(record)
      if case .pageFault(let fault) = event {
        pending[queued] = fault
        attempts[queued] = 0
        queued += 1
      } else {
        counters.otherEvents.wrappingAdd(1, ordering: .relaxed)
        onEvent?(event)
        _ = push(.event(record))
      }
    }
    return queued
  }

  /// Resolves the queued faults in place; returns how many remain queued for a retry.
  private func resolveQueued(_ count: Int) -> Int {
    var kept = 0
    for index in 0..<count {
      let fault = pending[index]
      var tries = attempts[index]
      switch attempt(fault) {
      case .done:
        // For the events sequence only: no wake-up of its own (see push(_:urgent:)).
        _ = push(.fault(fault, uffd: uffd), urgent: false)
        continue
      case .retryAfterEvents:
        tries += 1
        if tries >= configuration.maxAttempts {
          let page = uffd.registeredPageSize(at: fault.address.rawValue) ?? PageSize.base
          fail(fault.address.rawValue & ~UInt(page - 1), page: page, errno: .resourceTemporarilyUnavailable)
          continue
        }
      case .later:
        break
      }
      counters.retries.wrappingAdd(1, ordering: .relaxed)
      pending[kept] = fault
      attempts[kept] = tries
      kept += 1
    }
    return kept
  }

  private enum Attempt { case done, retryAfterEvents, later }

  /// Performs one resolution and acts on the kernel's answer, in the page size of the registered
  /// memory (2 MiB or 1 GiB on hugetlbfs).
  private func attempt(_ fault: PageFault) -> Attempt {
    let page = uffd.registeredPageSize(at: fault.address.rawValue) ?? PageSize.base
    let target = fault.address.rawValue & ~UInt(page - 1)
    guard target != 0 else { return .done }
    let resolution = resolver(fault)
    let answer: KernelAnswer
    switch resolution {
    case .copy(let source):
      if isMissingRegisteredPage(source.rawValue) {
        // The kernel would fault on the source inside this thread's own ioctl, and wait for
        // this thread to resolve it.
        fail(target, page: page, errno: .deadlock)
        return .done
      }
      answer = uffd.copyCore(target, from: source.rawValue, length: page, mode: 0)
    case .move(let source):
      answer = move(from: source.rawValue, to: target, page: page)
    case .zeroPage:
      answer = zeroFill(target, page: page)
    case .continueMapping:
      answer = uffd.continueCore(target, length: page, mode: 0)
    case .wake:
      _ = uffd.wakeCore(target, length: page)
      counters.alreadyResolved.wrappingAdd(1, ordering: .relaxed)
      return .done
    case .later:
      return .later
    }
    switch answer.outcome {
    case .done, .partial:
      // One page: any progress is the whole page.
      counters.resolved.wrappingAdd(1, ordering: .relaxed)
    case .alreadyPresent:
      // Someone resolved it first (a second thread's fault on the same page), or a MOVE the
      // kernel answered EEXIST after moving (Linux 6.18, sources in transparent huge pages being
      // split; the two cannot be told apart here, the source being a hole after either): the
      // page is there either way.
      counters.alreadyResolved.wrappingAdd(1, ordering: .relaxed)
      _ = uffd.wakeCore(target, length: page)
    case .retryAfterEvents:
      return .retryAfterEvents
    case .processGone:
      counters.abandoned.wrappingAdd(1, ordering: .relaxed)
    case .sourceMissing, .busy, .failed:
      fail(target, page: page, errno: answer.errno ?? .ioError)
    }
    return .done
  }

  /// Zeros for a page: ZEROPAGE, or on hugetlbfs (no zero page) a copy of zeros.
  private func zeroFill(_ target: UInt, page: Int) -> KernelAnswer {
    if page == PageSize.base { return uffd.zeroPageCore(target, length: page, mode: 0) }
    guard page <= PageSize.huge, hugeZeros != 0 else { return KernelAnswer(.zeroPage, failed: .invalidArgument, length: page) }
    return uffd.copyCore(target, from: hugeZeros, length: page, mode: 0)
  }

  /// UFFDIO_MOVE of one page; as COPY then dropping the source where the kernel has no MOVE or
  /// refuses it with EBUSY (the source page is shared with a forked child).
  private func move(from source: UInt, to target: UInt, page: Int) -> KernelAnswer {
    if hasMove {
      let moved = uffd.moveCore(target, from: source, length: page, mode: 0)
      guard moved.outcome == .busy else { return moved }
    }
    if isMissingRegisteredPage(source) {
      return KernelAnswer(.copy, failed: .deadlock, length: page)
    }
    let copied = uffd.copyCore(target, from: source, length: page, mode: 0)
    if copied.errno == nil, let pointer = UnsafeMutableRawPointer(bitPattern: source) {
      _ = madvise(pointer, page, MADV_DONTNEED)
    }
    return copied
  }

  /// Whether the page at `address` is neither present nor swapped (false when the pagemap cannot
  /// be read). One pread, no allocation.
  private func isHole(_ address: UInt) -> Bool {
    guard pagemap >= 0 else { return false }
    var entry: UInt64 = 0
    let offset = off_t(address / UInt(PageSize.base)) * 8
    guard pread(pagemap, &entry, 8, offset) == 8 else { return false }
    return entry & (1 << 63 | 1 << 62) == 0
  }

  /// Whether `address` is a missing page in a range registered with this handle: reading it would
  /// raise a userfault that only this thread could resolve.
  private func isMissingRegisteredPage(_ address: UInt) -> Bool {
    uffd.faultsWhenMissing(at: address) && isHole(address)
  }

  /// Fails a fault: poisons or zero-fills its page (`page` bytes at `target`), counts it and
  /// reports it.
  private func fail(_ target: UInt, page: Int, errno: Errno) {
    if unregistering.load(ordering: .acquiring), uffd.registeredPageSize(at: target) == nil {
      // stop() unregistered the range under this fault: the kernel woke its thread, whose access
      // is an ordinary fault now. Nothing failed.
      _ = uffd.wakeCore(target, length: page)
      return
    }
    var filled = action == .poison ? uffd.poisonCore(target, length: page, mode: 0) : zeroFill(target, page: page)
    if action == .poison, filled.outcome == .failed {
      filled = zeroFill(target, page: page)
    }
    switch filled.outcome {
    case .alreadyPresent:
      // Someone mapped the page meanwhile: the fault is resolved after all.
      counters.alreadyResolved.wrappingAdd(1, ordering: .relaxed)
      _ = uffd.wakeCore(target, length: page)
      return
    case .done, .partial:
      break
    default:
      // Neither could be done (the range was unregistered meanwhile): wake the thread, whose
      // access then retries as an ordinary fault.
      _ = uffd.wakeCore(target, length: page)
    }
    counters.recordFailure(address: target, errno: errno)
    _ = push(.failure(address: target, errno: errno))
  }

  /// Hands an item to the delivery thread. False when the ring is full (the item is dropped).
  ///
  /// A sleeping delivery thread is woken for every event and failure, but for a resolved fault
  /// (`urgent` false: it only feeds ``FaultServer/events``) only once the ring is a quarter full;
  /// otherwise it finds the item at its next wake-up, within its 100 ms poll. Waking it for each
  /// fault cost a pipe write on the serving thread and a thread switch per fault: with it, the
  /// handler-thread round trip measured 1.8-2.1x the C loop's (`uffd bench faults`, p50), without
  /// it 0.94-1.10x in the same conditions.
  private func push(_ item: DeliveryItem, urgent: Bool = true) -> Bool {
    let head = ringHead.load(ordering: .relaxed)
    let backlog = head - ringTail.load(ordering: .acquiring)
    guard backlog < Self.ringCapacity else {
      counters.droppedEvents.wrappingAdd(1, ordering: .relaxed)
      return false
    }
    ring[head % Self.ringCapacity] = item
    ringHead.store(head + 1, ordering: .sequentiallyConsistent)
    guard urgent || backlog + 1 >= Self.ringCapacity / 4 else { return true }
    if deliverySleeping.load(ordering: .sequentiallyConsistent),
       deliverySleeping.exchange(false, ordering: .sequentiallyConsistent) {
      var byte: UInt8 = 1
      _ = write(deliveryPipe.write, &byte, 1)
    }
    return true
  }

  // MARK: The delivery thread

  func deliver() {
    var descriptor = pollfd(fd: deliveryPipe.read, events: Int16(POLLIN), revents: 0)
    var drain = [UInt8](repeating: 0, count: 64)
    while true {
      var tail = ringTail.load(ordering: .relaxed)
      while tail < ringHead.load(ordering: .acquiring) {
        handle(ring[tail % Self.ringCapacity])
        tail += 1
        ringTail.store(tail, ordering: .releasing)
      }
      if deliveryStopping.load(ordering: .sequentiallyConsistent),
         tail == ringHead.load(ordering: .sequentiallyConsistent) {
        return
      }
      deliverySleeping.store(true, ordering: .sequentiallyConsistent)
      if tail != ringHead.load(ordering: .sequentiallyConsistent)
        || deliveryStopping.load(ordering: .sequentiallyConsistent) {
        deliverySleeping.store(false, ordering: .sequentiallyConsistent)
        continue
      }
      descriptor.revents = 0
      _ = poll(&descriptor, 1, 100)
      _ = drain.withUnsafeMutableBytes { read(deliveryPipe.read, $0.baseAddress, $0.count) }
      deliverySleeping.store(false, ordering: .sequentiallyConsistent)
    }
  }

  private func handle(_ item: DeliveryItem) {
    switch item.kind {
    case .event:
      let event = withUnsafeBytes(of: item.record) { uffd.decodeEvent($0) }
      if case .fork = event { onEvent?(event) }
      continuation.yield(event)
    case .failure:
      let failure = UnresolvedFault(
        pageAddress: Address(rawValue: UInt(item.record.0)), errno: item.errno == 0 ? nil : item.errno, action: action)
      onFailure?(failure)
    }
  }
}

/// One item for the delivery thread: a raw 32-byte event record, or a failure. Trivial, so the
/// serving thread can write it into the preallocated ring without allocating.
struct DeliveryItem {
  enum Kind: UInt8 { case event, failure }
  var kind: Kind
  var record: (UInt64, UInt64, UInt64, UInt64)
  var errno: Int32

  static func event(_ record: UnsafeRawBufferPointer) -> DeliveryItem {
    var item = DeliveryItem(kind: .event, record: (0, 0, 0, 0), errno: 0)
    withUnsafeMutableBytes(of: &item.record) { $0.copyMemory(from: UnsafeRawBufferPointer(rebasing: record[0..<32])) }
    return item
  }

  /// A resolved fault, re-encoded as the record it came from.
  static func fault(_ fault: PageFault, uffd: Userfaultfd) -> DeliveryItem {
    var item = DeliveryItem(kind: .event, record: (0, 0, 0, 0), errno: 0)
    withUnsafeMutableBytes(of: &item.record) { bytes in
      bytes.storeBytes(of: UInt8(CUFFD_EVENT_PAGEFAULT), toByteOffset: Int(CUFFD_MSG_OFFSET_EVENT), as: UInt8.self)
      let arg = Int(CUFFD_MSG_OFFSET_ARG)
      bytes.storeBytes(of: fault.flags.rawValue, toByteOffset: arg, as: UInt64.self)
      bytes.storeBytes(of: UInt64(fault.address.rawValue), toByteOffset: arg + 8, as: UInt64.self)
      bytes.storeBytes(of: fault.threadID ?? 0, toByteOffset: arg + 16, as: Int32.self)
    }
    return item
  }

  static func failure(address: UInt, errno: Errno) -> DeliveryItem {
    DeliveryItem(kind: .failure, record: (UInt64(address), 0, 0, 0), errno: errno.rawValue)
  }

  var eventCode: UInt8 { UInt8(truncatingIfNeeded: record.0) }
  var forkDescriptor: Int32 { Int32(truncatingIfNeeded: record.1) }
}

/// The server's counters, shared by both threads.
final class ServerCounters: Sendable {
  let resolved = Atomic<UInt64>(0)
  let alreadyResolved = Atomic<UInt64>(0)
  let retries = Atomic<UInt64>(0)
  let otherEvents = Atomic<UInt64>(0)
  let failed = Atomic<UInt64>(0)
  let abandoned = Atomic<UInt64>(0)
  let droppedEvents = Atomic<UInt64>(0)
  private let lastFailedAddress = Atomic<UInt>(0)
  private let lastFailedErrno = Atomic<Int32>(0)

  func recordFailure(address: UInt, errno: Errno) {
    lastFailedAddress.store(address, ordering: .relaxed)
    lastFailedErrno.store(errno.rawValue, ordering: .relaxed)
    failed.wrappingAdd(1, ordering: .releasing)
  }

  /// Back to zero (after the warm-up).
  func reset() {
    resolved.store(0, ordering: .relaxed)
    alreadyResolved.store(0, ordering: .relaxed)
    retries.store(0, ordering: .relaxed)
    otherEvents.store(0, ordering: .relaxed)
    failed.store(0, ordering: .relaxed)
    abandoned.store(0, ordering: .relaxed)
    droppedEvents.store(0, ordering: .relaxed)
    lastFailedAddress.store(0, ordering: .relaxed)
    lastFailedErrno.store(0, ordering: .relaxed)
  }

  func lastFailure(action: UnresolvableFaultAction) -> UnresolvedFault? {
    guard failed.load(ordering: .acquiring) > 0 else { return nil }
    let errno = lastFailedErrno.load(ordering: .relaxed)
    return UnresolvedFault(
      pageAddress: Address(rawValue: lastFailedAddress.load(ordering: .relaxed)), errno: errno == 0 ? nil : errno, action: action)
  }

  func snapshot() -> FaultServer.Statistics {
    FaultServer.Statistics(
      resolved: resolved.load(ordering: .relaxed),
      alreadyResolved: alreadyResolved.load(ordering: .relaxed),
      retries: retries.load(ordering: .relaxed),
      otherEvents: otherEvents.load(ordering: .relaxed),
      failed: failed.load(ordering: .relaxed),
      abandoned: abandoned.load(ordering: .relaxed),
      droppedEvents: droppedEvents.load(ordering: .relaxed))
  }
}
