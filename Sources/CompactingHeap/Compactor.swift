#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import Synchronization
import Userfaultfd

/// How compacted pages are mapped into the heap.
public enum MappingStrategy: String, Sendable, CaseIterable {
  /// Compact into recycled dead from-space pages and UFFDIO_MOVE them in: no allocation, no
  /// memcpy in the kernel, no madvise, RSS never doubles. A buffer and COPY early on, when no dead
  /// page is free yet.
  case move
  /// Compact into a buffer, UFFDIO_COPY it in, release from-space with MADV_DONTNEED in 8 MiB steps.
  case copy
}

/// How mutator faults reach the compaction code.
public enum FaultMode: String, Sendable, CaseIterable {
  /// A ``FaultServer`` thread compacts the faulting page.
  case thread
  /// The faulting mutator compacts the page in its own SIGBUS handler (not built yet).
  case sigbus
}

/// One compaction cycle's settings.
public struct CompactionConfiguration: Sendable {
  /// How pages are mapped.
  public var strategy: MappingStrategy
  /// How mutator faults are served.
  public var faultMode: FaultMode
  /// Seed of the mutators' choices.
  public var seed: UInt64

  /// Creates a configuration.
  public init(strategy: MappingStrategy = .move, faultMode: FaultMode = .thread, seed: UInt64 = 1) {
    self.strategy = strategy
    self.faultMode = faultMode
    self.seed = seed
  }
}

/// What one cycle did and measured.
public struct CompactionResult: Sendable {
  /// The strategy used.
  public var strategy: MappingStrategy
  /// Live bytes compacted.
  public var liveBytes: Int
  /// Heap bytes in use before.
  public var usedBytesBefore: Int
  /// The stop-the-world pause: roots, register, mremap.
  public var pauseNanoseconds: Int64
  /// The compaction thread's wall time and CPU time.
  public var compactionWallNanoseconds: Int64
  public var compactionCPUNanoseconds: Int64
  /// Pages compacted by the GC thread and by mutator faults.
  public var pagesByGC: Int
  public var pagesByMutators: Int
  /// UFFDIO_MOVE and UFFDIO_COPY ioctls, and refusals seen (EEXIST and the like).
  public var moveIoctls: Int
  public var copyIoctls: Int
  public var refusals: [String: Int]
  /// Mutator writes made during compaction, all verified present.
  public var mutatorWrites: Int
  /// Resident memory before the pause, and the peak during the cycle (process-wide).
  public var residentBefore: Int
  public var peakResident: Int
  /// The graph check passed (byte-for-byte against a stop-the-world reference, with the mutators'
  /// writes applied). A failure throws instead.
  public var verified: Bool
}

/// Runs concurrent compaction cycles on a ``Heap`` (ART's concurrent mark-compact shape, see
/// ../shared/docs/compaction.md): stop-the-world mark and address computation; a short pause that
/// rewrites the roots, registers the heap and moves all its pages to a from-space with
/// `mremap(MREMAP_DONTUNMAP)`; then a GC thread fills the heap page by page, top down, while
/// mutators run, and any mutator touching a page not yet there faults into the same page-compaction
/// routine.
public final class Compactor: @unchecked Sendable {
  let heap: Heap
  let configuration: CompactionConfiguration
  let mutators: Int

  /// Page states: unprocessed → processing (GC) | mutatorProcessing → mapped.
  enum State: UInt8 {
    case unprocessed = 0, processing, mutatorProcessing, mapped
  }

  /// Prepares to compact `heap`, whose roots belong to its mutators.
  public init(heap: Heap, configuration: CompactionConfiguration) throws(HeapError) {
    guard configuration.faultMode == .thread else {
      throw .invalidConfiguration(
        "fault mode 'sigbus' is not built yet for the compacting heap: use 'thread'")
    }
    self.heap = heap
    self.configuration = configuration
    self.mutators = heap.roots.count
  }

  /// Runs one full cycle with the heap's mutators working throughout the concurrent phase, then
  /// verifies the result.
  public func run() throws(HeapError) -> CompactionResult {
    let page = PageSize.base
    let usedBefore = heap.top
    // 1. Mark and plan (stop-the-world; the mutators have not started).
    let map = LiveMap(marking: heap)
    let plan = CompactionPlan(heap: heap, map: map)
    // The reference the result must equal: a stop-the-world compaction of the same heap, kept as
    // one hash per page so that it does not count against the cycle's memory.
    let reference = ReferenceCompaction.image(of: heap, map: map)
    let referencePages = Self.pageHashes(reference.words, count: plan.pageCount)
    let residentBefore = ProcessMemory.resident
    ProcessMemory.resetPeak()

    let uffd: Userfaultfd
    let fromSpace: AnonymousMemory
    do {
      uffd = try Userfaultfd(options: .nonBlocking)
      fromSpace = try AnonymousMemory(length: heap.capacity, alignment: PageSize.huge)
    } catch {
      throw .system(error)
    }
    let states = UnsafeMutablePointer<Atomic<UInt8>>.allocate(capacity: max(1, plan.pageCount))
    for index in 0..<plan.pageCount { (states + index).initialize(to: Atomic(State.unprocessed.rawValue)) }
    defer {
      states.deinitialize(count: plan.pageCount)
      states.deallocate()
    }
    let counters = Counters()

    // 2. The pause: roots, register, move every page to from-space in one mremap.
    let pauseStart = Clock.now()
    let originalRoots = heap.roots
    heap.roots = reference.roots
    do {
      try uffd.register(heap.memory.baseAddress, length: heap.capacity, mode: .missing)
    } catch {
      heap.roots = originalRoots
      throw .system(error)
    }
    do {
      try heap.memory.movePages(to: fromSpace)
    } catch {
      try? uffd.unregister(heap.memory.baseAddress, length: heap.capacity)
      heap.roots = originalRoots
      throw .system(error)
    }
    let pauseNanoseconds = Clock.now() - pauseStart
    heap.top = map.liveBytes
    let from = fromSpace.baseAddress.assumingMemoryBound(to: UInt64.self)

    // 3. Mutator faults: compact the page in the server thread (one buffer: it is one thread).
    // Page-aligned buffers: UFFDIO_COPY wants an aligned source.
    let serverPage: AnonymousMemory
    let gcPage: AnonymousMemory
    do {
      serverPage = try AnonymousMemory(length: page, populate: true)
      gcPage = try AnonymousMemory(length: page, populate: true)
    } catch {
      throw .system(error)
    }
    let serverBuffer = serverPage.baseAddress.assumingMemoryBound(to: UInt64.self)
    let server: FaultServer
    let shared = SharedPointers(states: states, from: from, buffer: serverBuffer)
    do {
      server = try FaultServer(uffd: uffd) { [plan, heap] fault in
        let index = Int(fault.pageAddress - heap.start) / page
        guard index < plan.pageCount else { return .zeroPage }
        if shared.states[index].compareExchange(expected: State.unprocessed.rawValue, desired: State.mutatorProcessing.rawValue,
                                 ordering: .acquiring).exchanged {
          plan.compactPage(index, fromSpace: shared.from, into: shared.buffer)
          Self.copy(shared.buffer, to: fault.pageAddress, uffd: uffd, counters: counters)
          shared.states[index].store(State.mapped.rawValue, ordering: .releasing)
          counters.pagesByMutators.wrappingAdd(1, ordering: .relaxed)
          return .wake
        }
        return shared.states[index].load(ordering: .acquiring) == State.mapped.rawValue ? .wake : .later
      }
    } catch {
      throw .system(error)
    }

    // 4. Mutators work while the GC thread compacts.
    let done = StopFlag()
    let logs = Mutex<[MutatorLog]>([])
    var threads: [DedicatedThread] = []
    do {
      for mutator in 0..<mutators {
        let roots = heap.roots[mutator]
        let seed = configuration.seed &+ UInt64(mutator) &* 0x9E37_79B9
        threads.append(try DedicatedThread { [heap] in
          let log = Self.mutate(heap: heap, roots: roots, seed: seed, until: done)
          logs.withLock { $0.append(log) }
        })
      }
    } catch {
      done.set()
      threads.forEach { $0.join() }
      server.stop()
      throw .system(error)
    }
    let wallStart = Clock.now()
    let cpuStart = Clock.threadCPU()
    compactAll(plan: plan, usedBefore: usedBefore, states: states, from: from, fromSpace: fromSpace,
               buffer: gcPage.baseAddress.assumingMemoryBound(to: UInt64.self), uffd: uffd, counters: counters)
    let compactionCPU = Clock.threadCPU() - cpuStart
    let compactionWall = Clock.now() - wallStart
    done.set()
    threads.forEach { $0.join() }
    server.stop()  // Unregisters the heap.
    let peak = ProcessMemory.peak

    // 5. Verify: every logged write present; with the original values put back, every page equal
    //    to the stop-the-world reference.
    let allLogs = logs.withLock { $0 }
    let writes = try Self.verify(heap: heap, plan: plan, referencePages: referencePages, logs: allLogs)
    return CompactionResult(
      strategy: configuration.strategy, liveBytes: map.liveBytes, usedBytesBefore: usedBefore,
      pauseNanoseconds: pauseNanoseconds, compactionWallNanoseconds: compactionWall,
      compactionCPUNanoseconds: compactionCPU,
      pagesByGC: counters.pagesByGC.load(ordering: .relaxed),
      pagesByMutators: counters.pagesByMutators.load(ordering: .relaxed),
      moveIoctls: counters.moveIoctls.load(ordering: .relaxed),
      copyIoctls: counters.copyIoctls.load(ordering: .relaxed),
      refusals: counters.refusalCounts(), mutatorWrites: writes, residentBefore: residentBefore,
      peakResident: peak, verified: true)
  }

  /// The GC thread's work: every page top down; waits for pages a mutator is compacting.
  private func compactAll(
    plan: CompactionPlan, usedBefore: Int, states: UnsafeMutablePointer<Atomic<UInt8>>, from: UnsafeMutablePointer<UInt64>,
    fromSpace: AnonymousMemory, buffer: UnsafeMutablePointer<UInt64>, uffd: Userfaultfd, counters: Counters
  ) {
    let page = PageSize.base
    let fromPages = (usedBefore + page - 1) / page  // From-space pages holding old objects.
    var recycle = fromPages - 1  // MOVE: the next dead from-space page to compact into.
    var released = fromPages  // COPY: from-space pages at and above this are released.
    let releaseStep = (8 << 20) / page
    for index in stride(from: plan.pageCount - 1, through: 0, by: -1) {
      let target = heap.start + UInt(index * page)
      if states[index].compareExchange(expected: State.unprocessed.rawValue, desired: State.processing.rawValue,
                               ordering: .acquiring).exchanged {
        // A dead from-space page to compact into: above everything pages <= index still read.
        if configuration.strategy == .move, recycle > plan.lastSource[index] {
          let recycled = from + recycle * (page / 8)
          plan.compactPage(index, fromSpace: from, into: recycled)
          Self.move(UnsafeMutableRawPointer(recycled), to: target, uffd: uffd, counters: counters)
          recycle -= 1
        } else {
          plan.compactPage(index, fromSpace: from, into: buffer)
          Self.copy(buffer, to: target, uffd: uffd, counters: counters)
        }
        states[index].store(State.mapped.rawValue, ordering: .releasing)
        counters.pagesByGC.wrappingAdd(1, ordering: .relaxed)
      } else {
        // A mutator has it: wait until it is mapped before recycling what it reads.
        while states[index].load(ordering: .acquiring) != State.mapped.rawValue { sched_yield() }
      }
      // COPY: release the from-space no page below this one needs, in 8 MiB steps.
      if configuration.strategy == .copy {
        let needed = index > 0 ? plan.lastSource[index - 1] + 1 : 0
        if released - needed >= releaseStep || index == 0 {
          if needed < released {
            try? fromSpace.advise(.dontNeed, offset: needed * page, length: (released - needed) * page)
            released = needed
          }
        }
      }
    }
  }

  static func copy(_ buffer: UnsafeMutablePointer<UInt64>, to target: UInt, uffd: Userfaultfd, counters: Counters) {
    guard let destination = UnsafeMutableRawPointer(bitPattern: target) else { return }
    counters.copyIoctls.wrappingAdd(1, ordering: .relaxed)
    do {
      try uffd.copy(from: UnsafeRawPointer(buffer), to: destination, length: PageSize.base)
    } catch {
      counters.refuse(error, unblocking: destination, uffd: uffd)
    }
  }

  static func move(_ source: UnsafeMutableRawPointer, to target: UInt, uffd: Userfaultfd, counters: Counters) {
    guard let destination = UnsafeMutableRawPointer(bitPattern: target) else { return }
    counters.moveIoctls.wrappingAdd(1, ordering: .relaxed)
    do {
      try uffd.move(from: source, to: destination, length: PageSize.base)
    } catch {
      counters.refuse(error, unblocking: destination, uffd: uffd)
    }
  }
}

/// Raw memory the fault server thread shares with the cycle: page states (atomics), from-space,
/// and the server's own compaction buffer. Lives until the server is stopped.
struct SharedPointers: @unchecked Sendable {
  let states: UnsafeMutablePointer<Atomic<UInt8>>
  let from: UnsafeMutablePointer<UInt64>
  let buffer: UnsafeMutablePointer<UInt64>
}

/// Tells the mutators the concurrent phase is over.
final class StopFlag: Sendable {
  private let flag = Atomic<Bool>(false)
  func set() { flag.store(true, ordering: .releasing) }
  var isSet: Bool { flag.load(ordering: .acquiring) }
}

/// Shared counters of one cycle.
final class Counters: Sendable {
  let pagesByGC = Atomic<Int>(0)
  let pagesByMutators = Atomic<Int>(0)
  let moveIoctls = Atomic<Int>(0)
  let copyIoctls = Atomic<Int>(0)
  let refusals = Mutex<[String: Int]>([:])

  /// Records a page that could not be mapped, and maps zeros there so no mutator waits forever
  /// (the verification then fails and says so).
  func refuse(_ error: UserfaultfdError, unblocking page: UnsafeMutableRawPointer, uffd: Userfaultfd) {
    let name: String
    switch error {
    case .operationFailed(let failure): name = "\(failure.operation.rawValue) \(failure.errno)"
    default: name = "\(error)"
    }
    refusals.withLock { $0[name, default: 0] += 1 }
    if error.errno != .fileExists { try? uffd.zeroPage(page, length: PageSize.base) }
  }

  func refusalCounts() -> [String: Int] { refusals.withLock { $0 } }
}
