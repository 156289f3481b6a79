import Foundation
import Synchronization
import Userfaultfd

/// `uffd stress`: UFFDIO_MOVE's guarantees under load. The kernel's own uffd-stress checks COPY
/// only; this checks MOVE.
///
/// Logical page `i` lives at `A[i]` or `B[i]`, two areas registered (MISSING) with one
/// userfaultfd. Writer threads atomically increment their own counter in page `i` wherever they
/// believe it is; a mover thread moves pages back and forth between the areas, singly and in
/// 8-page runs; a handler thread resolves a fault at `X[i]` by moving the page in from the other
/// area. Each increment is one locked instruction, so it lands in exactly one physical page, which
/// always exists in exactly one area. At the end every page must be in exactly one place, carry
/// its id and checksum, and hold exactly the increments its writers made.
package final class MoveStress: @unchecked Sendable {
  // @unchecked: configuration and areas are immutable after init; the shared state is atomics
  // (`location`, counters, flags) and a Mutex (`errors`); page contents are shared through the
  // kernel by design (that is what the test checks).
  /// How the mover thread relocates pages.
  package enum Mover: String, CaseIterable, Sendable {
    /// UFFDIO_MOVE: atomic, zero-copy.
    case move
    /// The library's logical move with MOVE forced off: every page goes through the atomic copy
    /// fallback (mremap take + UFFDIO_COPY).
    case logicalCopy = "logical-copy"
    /// The naive fallback, UFFDIO_COPY then MADV_DONTNEED: loses writes that land in between. A
    /// control showing the check detects loss; expected to fail.
    case naiveCopy = "naive-copy"
  }

  package struct Configuration: Sendable {
    package var seconds: Double = 10
    package var writers: Int = 2
    package var pages: Int = 256
    package var mover: Mover = .move
    /// Mover threads: more than one race each other for the same pages, so a destination page is
    /// often filled by another mover (or the fault handler) while a move or copy fallback is
    /// under way.
    package var movers: Int = 1
    /// Let the fault handler use UFFDIO_MOVE where it is usable (false: always the copy fallback,
    /// as on a kernel without MOVE).
    package var handlerMayMove: Bool = true

    package init(
      seconds: Double = 10, writers: Int = 2, pages: Int = 256, mover: Mover = .move, movers: Int = 1,
      handlerMayMove: Bool = true
    ) {
      self.seconds = seconds
      self.writers = writers
      self.pages = pages
      self.mover = mover
      self.movers = movers
      self.handlerMayMove = handlerMayMove
    }
  }

  /// What a run found.
  package struct Result: Encodable, Sendable {
    package var mover: String
    package var movers: Int
    package var seconds: Double
    package var threads: Int
    package var pages: Int
    package var writes: UInt64
    package var moves: UInt64
    package var faults: UInt64
    package var lostUpdates: UInt64
    package var lostPages: Int
    package var duplicatedPages: Int
    package var corruptedPages: Int
    package var errors: [String]
    package var verified: Bool
  }

  let configuration: Configuration
  let uffd: Userfaultfd
  /// Whether the fault handler moves pages with UFFDIO_MOVE (else with the atomic copy fallback).
  let handlerUsesMove: Bool
  let areaA: AnonymousMemory
  let areaB: AnonymousMemory
  let page = PageSize.base
  /// Where each page is believed to be: 0 = A, 1 = B. A hint: a stale one costs a fault.
  let location: UnsafeMutablePointer<Atomic<UInt8>>
  let stopping = Atomic<Bool>(false)
  /// Set once every writer has returned.
  let writersOut = Atomic<Bool>(false)
  let moves = Atomic<UInt64>(0)
  let faults = Atomic<UInt64>(0)
  let errors = Mutex<[String]>([])

  /// Word 0: id (i + 1); word 1: checksum; word 2 + w: writer w's counter.
  static let checksumSeed: UInt64 = 0x5EED_0F_DA7A_C0DE
  package static let maxWriters = 64
  /// Pages: at least one per mover batch; at most 1 GiB in each of the two areas.
  package static let minPages = 8
  package static let maxPages = 1 << 18
  /// One day: a run is bounded in time.
  package static let maxSeconds = 86_400.0
  /// Mover threads racing for the same pages.
  package static let maxMovers = 8

  package init(_ configuration: Configuration) throws {
    guard configuration.writers >= 1, configuration.writers <= Self.maxWriters else {
      throw ToolError("--threads must be between 1 and \(Self.maxWriters)")
    }
    guard (Self.minPages...Self.maxPages).contains(configuration.pages) else {
      throw ToolError("--pages must be \(Self.minPages) to \(Self.maxPages), got \(configuration.pages)")
    }
    guard configuration.seconds.isFinite, configuration.seconds > 0, configuration.seconds <= Self.maxSeconds else {
      throw ToolError("--seconds must be more than 0 and at most \(Int(Self.maxSeconds)), got \(configuration.seconds)")
    }
    guard (1...Self.maxMovers).contains(configuration.movers) else {
      throw ToolError("--movers must be 1 to \(Self.maxMovers), got \(configuration.movers)")
    }
    self.configuration = configuration
    uffd = try Userfaultfd(options: .nonBlocking)
    // Capabilities at setup: only the `move` mover needs MOVE; without it the fault handler
    // brings pages back through the atomic copy fallback.
    handlerUsesMove = configuration.handlerMayMove && PageMover.moveVerdict.isUsable
    guard configuration.mover != .move || handlerUsesMove else {
      throw ToolError("--mover move needs UFFDIO_MOVE, which is not usable here (\(PageMover.moveVerdict));"
        + " use --mover logical-copy")
    }
    let bytes = configuration.pages * PageSize.base
    areaA = try AnonymousMemory(length: bytes)
    areaB = try AnonymousMemory(length: bytes)
    for area in [areaA, areaB] {
      try area.advise(.noHugePage)
      try area.advise(.dontFork)
    }
    location = .allocate(capacity: configuration.pages)
    for index in 0..<configuration.pages {
      (location + index).initialize(to: Atomic<UInt8>(0))
      let words = (areaA.baseAddress + index * PageSize.base).assumingMemoryBound(to: UInt64.self)
      words[0] = UInt64(index + 1)
      words[1] = UInt64(index + 1) ^ Self.checksumSeed
    }
    try uffd.register(areaA.baseAddress, length: bytes, mode: .missing)
    try uffd.register(areaB.baseAddress, length: bytes, mode: .missing)
  }

  deinit {
    location.deinitialize(count: configuration.pages)
    location.deallocate()
  }

  func area(_ index: UInt8) -> AnonymousMemory { index == 0 ? areaA : areaB }

  func fail(_ message: String) {
    errors.withLock { if $0.count < 20 { $0.append(message) } }
  }

  /// Runs for the configured time, reporting progress about once a second.
  package func run(progress: (String) -> Void) -> Result {
    let pages = configuration.pages
    let writerCounts = Mutex<[[UInt64]]>(Array(repeating: [], count: configuration.writers))
    let writersDone = DispatchGroup()
    let moverDone = DispatchSemaphore(value: 0)
    let handlerDone = DispatchSemaphore(value: 0)
    var threads: [Thread] = []
    threads.append(Thread { [self] in
      handleFaults()
      handlerDone.signal()
    })
    for writer in 0..<configuration.writers {
      writersDone.enter()
      threads.append(Thread { [self] in
        let counts = write(slot: writer)
        writerCounts.withLock { $0[writer] = counts }
        writersDone.leave()
      })
    }
    for mover in 0..<configuration.movers {
      threads.append(Thread { [self] in
        moveAround(start: mover * pages / configuration.movers)
        moverDone.signal()
      })
    }
    threads.forEach { $0.start() }

    let start = Date()
    while Date().timeIntervalSince(start) < configuration.seconds {
      Thread.sleep(forTimeInterval: min(1, max(0, configuration.seconds - Date().timeIntervalSince(start))))
      progress(String(format: "%.0fs: moves %llu, faults %llu", Date().timeIntervalSince(start),
                      moves.load(ordering: .relaxed), faults.load(ordering: .relaxed)))
    }
    stopping.store(true, ordering: .releasing)
    // Writers first: the handler keeps resolving their faults until every one is out.
    writersDone.wait()
    writersOut.store(true, ordering: .releasing)
    for _ in 0..<configuration.movers { moverDone.wait() }
    handlerDone.wait()
    return verify(pages: pages, writerCounts: writerCounts.withLock { $0 })
  }

  /// A writer: increments its slot in random pages; returns how often it hit each page.
  func write(slot: Int) -> [UInt64] {
    var counts = [UInt64](repeating: 0, count: configuration.pages)
    var state = UInt64(slot + 1) &* 0x9E37_79B9_7F4A_7C15
    let pages = UInt64(configuration.pages)
    while !stopping.load(ordering: .relaxed) {
      for _ in 0..<64 {
        state ^= state << 13
        state ^= state >> 7
        state ^= state << 17
        let index = Int(state % pages)
        let here = location[index].load(ordering: .relaxed)
        let word = (area(here).baseAddress + index * page + 8 * (2 + slot))
          .assumingMemoryBound(to: Atomic<UInt64>.self)
        // One locked instruction: if the page is not here it faults, the handler brings it here,
        // and the instruction runs again whole.
        word.pointee.wrappingAdd(1, ordering: .relaxed)
        counts[index] += 1
      }
    }
    return counts
  }

  /// The mover: sweeps the pages, moving each to the other area, every fourth step an 8-page run.
  func moveAround(start: Int) {
    let pages = configuration.pages
    var index = start % pages
    var step = 0
    while !stopping.load(ordering: .relaxed) {
      step += 1
      let run = (configuration.mover == .move && step % 4 == 0 && index + 8 <= pages) ? 8 : 1
      let from = location[index].load(ordering: .acquiring)
      let sameRun = (index..<(index + run)).allSatisfy { location[$0].load(ordering: .relaxed) == from }
      let count = sameRun ? run : 1
      let to: UInt8 = from == 0 ? 1 : 0
      var done = 0
      while done < count {
        let offset = (index + done) * page
        do {
          try relocate(from: area(from).baseAddress + offset, to: area(to).baseAddress + offset,
                       length: (count - done) * page)
          for moved in (index + done)..<(index + count) { location[moved].store(to, ordering: .releasing) }
          moves.wrappingAdd(UInt64(count - done), ordering: .relaxed)
          done = count
        } catch {
          let movedBytes = error.bytesDone
          if movedBytes > 0 {
            let movedPages = movedBytes / page
            for moved in (index + done)..<(index + done + movedPages) {
              location[moved].store(to, ordering: .releasing)
            }
            moves.wrappingAdd(UInt64(movedPages), ordering: .relaxed)
            done += movedPages
            continue
          }
          switch error.failureKind {
          case .sourceMissing?, .alreadyPresent?:
            // The handler already moved this page to `to`: someone else did it.
            location[index + done].store(to, ordering: .releasing)
            done += 1
          case .retryAfterEvents?, .partial?:
            continue
          default:
            fail("mover: \(error)")
            done = count
          }
        }
      }
      index = (index + count) % pages
    }
  }

  /// Moves `length` bytes the configured way.
  func relocate(
    from source: UnsafeMutableRawPointer, to destination: UnsafeMutableRawPointer, length: Int
  ) throws(UserfaultfdError) {
    switch configuration.mover {
    case .move:
      try uffd.move(from: source, to: destination, length: length)
    case .logicalCopy:
      // No pre-check: a destination the handler filled first is the kernel's EEXIST, below.
      var policy = MovePolicy.copyFallback
      policy.checkDestinationEmpty = false
      do {
        _ = try PageMover(uffd, usingMove: false).move(
          from: source, to: destination, length: length, policy: policy)
      } catch .moveStopped(let report) {
        if report.returnedPages != nil {
          fail("mover: taken pages could not be put back: \(report)")
        }
        if let failure = report.stop?.failure { throw .operationFailed(failure) }
        throw .moveStopped(report)
      }
      // A source that was a hole (page already elsewhere) is skipped as a hole: nothing to do.
    case .naiveCopy:
      try uffd.copy(from: source, to: destination, length: length)
      // The window: a write landing here, after the copy, is lost by the next line.
      let result = madvise(source, length, MADV_DONTNEED)
      if result != 0 { throw .systemCallFailed("madvise", .init(rawValue: errno)) }
    }
  }

  /// The handler: resolves each fault by moving the page in from the other area.
  func handleFaults() {
    var descriptor = pollfd(fd: uffd.fileDescriptor.rawValue, events: Int16(POLLIN), revents: 0)
    var deferred: [UInt] = []
    while true {
      let ready = poll(&descriptor, 1, deferred.isEmpty ? 20 : 0)
      var addresses = deferred
      deferred.removeAll()
      if ready > 0 {
        do {
          for event in try uffd.readEvents() {
            if case .pageFault(let fault) = event { addresses.append(fault.pageAddress.rawValue) }
          }
        } catch {
          fail("handler: \(error)")
        }
      }
      if addresses.isEmpty {
        // Exit only once every writer has returned: none can still be waiting on a fault.
        if writersOut.load(ordering: .acquiring) && ready == 0 { return }
        continue
      }
      for address in addresses where !resolve(address) { deferred.append(address) }
    }
  }

  /// Moves the page for a fault at `address` in from the other area. False: retry later.
  func resolve(_ address: UInt) -> Bool {
    let a = UInt(bitPattern: areaA.baseAddress), b = UInt(bitPattern: areaB.baseAddress)
    let length = UInt(configuration.pages * page)
    let here: UInt8 = (address >= a && address < a + length) ? 0 : 1
    let base = here == 0 ? a : b
    guard address >= base, address < base + length else {
      fail("handler: fault outside the areas at 0x\(String(address, radix: 16))")
      return true
    }
    let index = Int(address - base) / page
    let other: UInt8 = here == 0 ? 1 : 0
    guard let destination = UnsafeMutableRawPointer(bitPattern: address) else { return true }
    do {
      try bringBack(from: area(other).baseAddress + index * page, to: destination)
      location[index].store(here, ordering: .releasing)
      faults.wrappingAdd(1, ordering: .relaxed)
      return true
    } catch {
      switch error.failureKind {
      case .alreadyPresent?, .sourceMissing?:
        // Already here, or in flight elsewhere: wake the writer; if the page is still missing it
        // faults again and we try again.
        try? uffd.wake(destination, length: page)
        return true
      case .retryAfterEvents?, .partial?:
        return false
      default:
        fail("handler: \(error)")
        try? uffd.wake(destination, length: page)
        return true
      }
    }
  }

  /// Moves one page for the handler: UFFDIO_MOVE, or where it is unusable the logical move's
  /// atomic copy fallback, with its answers translated to MOVE's (a source hole is ENOENT).
  func bringBack(from source: UnsafeMutableRawPointer, to destination: UnsafeMutableRawPointer) throws(UserfaultfdError) {
    if handlerUsesMove {
      try uffd.move(from: source, to: destination, length: page)
      return
    }
    var policy = MovePolicy.copyFallback
    policy.checkDestinationEmpty = false
    do throws(UserfaultfdError) {
      let report = try PageMover(uffd, usingMove: false).move(from: source, to: destination, length: page, policy: policy)
      if report.holeBytes > 0 {
        throw UserfaultfdError.operationFailed(OperationFailure(
          operation: .move, errno: .noSuchFileOrDirectory, destination: Address(destination), length: page))
      }
    } catch {
      guard case .moveStopped(let report) = error else { throw error }
      if report.returnedPages != nil { fail("handler: taken page could not be put back: \(report)") }
      throw .operationFailed(report.stop?.failure ?? OperationFailure(
        operation: .move, errno: .ioError, destination: Address(destination), length: page))
    }
  }

  /// Checks every page after the threads stopped.
  func verify(pages: Int, writerCounts: [[UInt64]]) -> Result {
    let bytes = pages * page
    // Unregistered, a hole reads zero instead of faulting.
    do {
      try uffd.unregister(areaA.baseAddress, length: bytes)
      try uffd.unregister(areaB.baseAddress, length: bytes)
    } catch {
      fail("verify: \(error)")
    }
    var lostUpdates: UInt64 = 0
    var lostPages = 0, duplicated = 0, corrupted = 0
    var writes: UInt64 = 0
    for counts in writerCounts { writes += counts.reduce(0, +) }
    for index in 0..<pages {
      let slots = [areaA, areaB].map { ($0.baseAddress + index * page).assumingMemoryBound(to: UInt64.self) }
      // A page with counters but no id is a second physical page for this logical page: corrupt.
      for words in slots where words[0] == 0 && words[1] == 0 {
        if (0..<writerCounts.count).contains(where: { words[2 + $0] != 0 }) { corrupted += 1 }
      }
      let copies = slots.filter { $0[0] != 0 || $0[1] != 0 }
      guard let words = copies.first else {
        lostPages += 1
        lostUpdates += writerCounts.reduce(0) { $0 + $1[index] }
        continue
      }
      if copies.count > 1 { duplicated += 1 }
      if words[0] != UInt64(index + 1) || words[1] != UInt64(index + 1) ^ Self.checksumSeed {
        corrupted += 1
      }
      for (slot, counts) in writerCounts.enumerated() {
        let expected = counts[index], found = words[2 + slot]
        lostUpdates += expected > found ? expected - found : found - expected
      }
    }
    let errorList = errors.withLock { $0 }
    return Result(
      mover: configuration.mover.rawValue, movers: configuration.movers, seconds: configuration.seconds, threads: configuration.writers, pages: pages, writes: writes,
      moves: moves.load(ordering: .relaxed), faults: faults.load(ordering: .relaxed),
      lostUpdates: lostUpdates, lostPages: lostPages, duplicatedPages: duplicated,
      corruptedPages: corrupted, errors: errorList,
      verified: lostUpdates == 0 && lostPages == 0 && duplicated == 0 && corrupted == 0 && errorList.isEmpty)
  }
}

extension MoveStress.Result {
  /// The result as the tool prints it.
  package var table: String {
    var lines = [
      "UFFDIO_MOVE stress (\(mover) mover x \(movers)): \(threads) writers, \(pages) pages, \(seconds) s",
      "writes            \(writes)",
      "moves             \(moves)",
      "faults            \(faults)",
      "lost_updates      \(lostUpdates)",
      "lost_pages        \(lostPages)",
      "duplicated_pages  \(duplicatedPages)",
      "corrupted_pages   \(corruptedPages)",
      "verified          \(verified ? "yes" : "NO")",
    ]
    lines += errors.map { "error: \($0)" }
    return lines.joined(separator: "\n")
  }
}
