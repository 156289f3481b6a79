import Foundation
import PropertyBased
import Synchronization
import Testing
import Userfaultfd

/// A flag test threads share with the test (an `Atomic` itself cannot be captured).
final class SharedFlag: Sendable {
  let value = Atomic<Bool>(false)
}

/// Runs `body` on a thread of its own and waits at most `seconds` for it: a test step that could
/// wait on a fault the code under test must resolve becomes a failure instead of a hang.
func bounded(_ what: String, seconds: Double = 10, sourceLocation: SourceLocation = #_sourceLocation,
             _ body: @escaping @Sendable () -> Void) {
  if !TestThread(body).join(seconds: seconds) {
    Issue.record("\(what) did not finish within \(seconds) s", sourceLocation: sourceLocation)
  }
}

/// Which dirty-tracking backends this kernel offers, for the tests' enabling conditions.
enum Tracking {
  static func has(_ backend: DirtyTrackingBackend, _ kind: TrackedMemoryKind = .anonymous) -> Bool {
    DirtyTrackingBackend.available(for: kind).contains(backend)
  }

  /// The skip reason: the capability and the Linux release that brought it.
  static func needs(_ backend: DirtyTrackingBackend, _ kind: TrackedMemoryKind = .anonymous) -> Comment {
    Comment(rawValue: "\(backend) on \(kind.rawValue) memory needs \(backend.requirement(for: kind))")
  }

  /// Memory of `kind`, `pages` tracker pages long (hugetlb: the caller reserved the pages).
  static func memory(_ kind: TrackedMemoryKind, pages: Int, transparentHuge: Bool = false) throws -> AnonymousMemory {
    switch kind {
    case .anonymous:
      guard transparentHuge else { return try AnonymousMemory(length: pages * PageSize.base) }
      let memory = try AnonymousMemory(length: pages * PageSize.base, alignment: PageSize.huge)
      try memory.advise(.hugePage)
      return memory
    case .shmem: return try AnonymousMemory(length: pages * PageSize.base, sharing: .shared)
    case .hugetlb: return try AnonymousMemory.hugePages(length: pages * PageSize.huge)
    }
  }
}

extension KernelTests {
@Suite("Dirty tracking")
struct DirtyTrackerTests {
  @Test func theProbeChoosesTheBestBackendForEachKindOfMemory() throws {
    let release = (try? String(contentsOfFile: "/proc/sys/kernel/osrelease", encoding: .utf8))?
      .trimmingCharacters(in: .whitespacesAndNewlines) ?? "unknown"
    for kind in TrackedMemoryKind.allCases {
      let available = DirtyTrackingBackend.available(for: kind)
      let missing = DirtyTrackingBackend.allCases.filter { !available.contains($0) }
      print("dirty tracking on Linux \(release): \(kind.rawValue) -> \(available.first.map(\.rawValue) ?? "none")"
        + (available.count > 1 ? " (also \(available.dropFirst().map(\.rawValue).joined(separator: ", ")))" : "")
        + missing.map { "; no \($0): needs \($0.requirement(for: kind))" }.joined())
      if let first = available.first {
        #expect(try DirtyTrackingBackend.best(for: kind) == first)
      } else {
        #expect(throws: UserfaultfdError.self) { try DirtyTrackingBackend.best(for: kind) }
      }
    }
    // Asking for a backend this kernel lacks is refused at setup, naming the Linux release.
    for backend in DirtyTrackingBackend.allCases where !Tracking.has(backend) {
      let memory = try AnonymousMemory(length: 4 * PageSize.base)
      do {
        _ = try DirtyTracker(memory: memory, backend: backend)
        Issue.record("\(backend) started on a kernel without it")
      } catch {
        guard case .notSupported(.dirtyTracking, let reason) = error else {
          Issue.record("expected notSupported, got \(error)")
          continue
        }
        let requirement = backend.requirement(for: .anonymous)
        #expect(reason.contains(requirement.linux.map { "Linux \($0)" } ?? requirement.capability), "\(reason)")
      }
    }
  }

  @Test func badRangesAreRefusedBeforeAnythingIsRegistered() throws {
    let memory = try AnonymousMemory(length: 4 * PageSize.base)
    #expect(throws: UserfaultfdError.self) {
      try DirtyTracker(start: memory.baseAddress + 1, length: PageSize.base, kind: .anonymous)
    }
    #expect(throws: UserfaultfdError.self) {
      try DirtyTracker(start: memory.baseAddress, length: 0, kind: .anonymous)
    }
    #expect(throws: UserfaultfdError.self) {
      try DirtyTracker(start: memory.baseAddress, length: memory.length, kind: .anonymous, pageSize: 3000)
    }
    #expect(throws: UserfaultfdError.self) {
      try DirtyTracker(start: memory.baseAddress, length: memory.length, kind: .hugetlb, pageSize: PageSize.huge)
    }
    // Still free to register: nothing was left behind.
    let uffd = try Userfaultfd()
    try uffd.register(memory.baseAddress, length: memory.length, mode: .missing)
  }

  // MARK: Exactness, one backend and kind of memory at a time

  @Test(.enabled(if: Tracking.has(.asyncWriteProtect), Tracking.needs(.asyncWriteProtect)),
        arguments: [TrackedMemoryKind.anonymous, .shmem], [false, true])
  func wpAsyncReportsExactlyTheWrittenPages(kind: TrackedMemoryKind, transparentHuge: Bool) throws {
    guard kind == .anonymous || !transparentHuge else { return }
    try checkExactness(.asyncWriteProtect, kind, transparentHuge: transparentHuge)
  }

  @Test(.enabled(if: Tracking.has(.writeProtectFaults, .shmem), Tracking.needs(.writeProtectFaults, .shmem)),
        arguments: [TrackedMemoryKind.anonymous, .shmem], [false, true])
  func uffdWPReportsExactlyTheWrittenPages(kind: TrackedMemoryKind, transparentHuge: Bool) throws {
    guard kind == .anonymous || !transparentHuge else { return }
    try checkExactness(.writeProtectFaults, kind, transparentHuge: transparentHuge)
  }

  @Test(.enabled(if: Tracking.has(.writeProtectFaults) && !Tracking.has(.writeProtectFaults, .shmem),
                 "runs where anonymous uffd-wp exists but shmem's (Linux 5.19) does not"))
  func uffdWPOnAnonymousMemoryBefore519() throws {
    try checkExactness(.writeProtectFaults, .anonymous, transparentHuge: false)
  }

  @Test(.enabled(if: Tracking.has(.asyncWriteProtect, .hugetlb), Tracking.needs(.asyncWriteProtect, .hugetlb)),
        .enabled(if: HugePages.canReserve, "needs 2 MiB hugetlb pages: none could be reserved (vm.nr_hugepages)"))
  func wpAsyncTracksHugetlbInHugePages() throws {
    try HugePages.withReserved(8) { try checkExactness(.asyncWriteProtect, .hugetlb, transparentHuge: false) }
  }

  @Test(.enabled(if: Tracking.has(.writeProtectFaults, .hugetlb), Tracking.needs(.writeProtectFaults, .hugetlb)),
        .enabled(if: HugePages.canReserve, "needs 2 MiB hugetlb pages: none could be reserved (vm.nr_hugepages)"))
  func uffdWPTracksHugetlbInHugePages() throws {
    try HugePages.withReserved(8) { try checkExactness(.writeProtectFaults, .hugetlb, transparentHuge: false) }
  }

  @Test(.enabled(if: Tracking.has(.softDirty, .shmem), Tracking.needs(.softDirty)),
        arguments: [TrackedMemoryKind.anonymous, .shmem])
  func softDirtyReportsExactlyTheWrittenPages(kind: TrackedMemoryKind) throws {
    try checkExactness(.softDirty, kind, transparentHuge: false)
  }

  /// Soft-dirty bits are cleared for the whole process: two trackers in one process must not
  /// erase each other's writes.
  @Test(.enabled(if: Tracking.has(.softDirty), Tracking.needs(.softDirty)))
  func softDirtyTrackersKeepEachOthersWrites() throws {
    let one = try AnonymousMemory(length: 16 * PageSize.base)
    let two = try AnonymousMemory(length: 16 * PageSize.base)
    let first = try DirtyTracker(memory: one, backend: .softDirty)
    defer { first.stop() }
    (two.baseAddress + 3 * PageSize.base).storeBytes(of: 1, as: UInt64.self)
    let second = try DirtyTracker(memory: two, backend: .softDirty)  // clears the process's bits
    defer { second.stop() }
    (one.baseAddress + 5 * PageSize.base).storeBytes(of: 1, as: UInt64.self)
    (two.baseAddress + 7 * PageSize.base).storeBytes(of: 1, as: UInt64.self)
    let written = try second.collect()  // clears again: the first tracker's write must survive
    #expect(written.ranges == [Address(two.baseAddress + 7 * PageSize.base)..<Address(two.baseAddress + 8 * PageSize.base)])
    let firstWritten = try first.collect()
    #expect(firstWritten.ranges == [Address(one.baseAddress + 5 * PageSize.base)..<Address(one.baseAddress + 6 * PageSize.base)])
    #expect(!DirtyTrackingBackend.softDirty.isExactUnderConcurrentWrites)
  }

  /// Soft-dirty is exact for writes between collections (its documented use: writers paused
  /// around a collection): random writes, random drops, collect, mirror; the mirror must equal
  /// the memory after every round.
  @Test(.enabled(if: Tracking.has(.softDirty), Tracking.needs(.softDirty)))
  func softDirtyMissesNoWriteBetweenCollections() async {
    await propertyCheck(count: 24, input: Gen.int(in: 8...200), Gen.int(in: 1...6), Gen.bool) { pages, rounds, drop in
      do {
        let page = PageSize.base
        let memory = try AnonymousMemory(length: pages * page)
        let mirror = try AnonymousMemory(length: memory.length)
        for index in 0..<(pages / 2) { fill(memory.baseAddress + index * page, seed: UInt64(index)) }
        mirror.baseAddress.copyMemory(from: memory.baseAddress, byteCount: memory.length)
        let tracker = try DirtyTracker(memory: memory, backend: .softDirty)
        defer { tracker.stop() }
        var state = UInt64(pages * 7919 + rounds) | 1
        for round in 0..<rounds {
          for _ in 0..<(pages / 3 + 1) {
            state ^= state << 13; state ^= state >> 7; state ^= state << 17
            (memory.baseAddress + Int(state % UInt64(pages)) * page).storeBytes(of: state, as: UInt64.self)
          }
          if drop && round % 2 == 1 { _ = madvise(memory.baseAddress, 2 * page, MADV_DONTNEED) }
          for range in try tracker.collect().ranges {
            let offset = range.lowerBound - Address(memory.baseAddress)
            (mirror.baseAddress + offset).copyMemory(from: memory.baseAddress + offset, byteCount: range.upperBound - range.lowerBound)
          }
          #expect(memcmp(mirror.baseAddress, memory.baseAddress, memory.length) == 0, "soft-dirty, \(pages) pages, round \(round)")
        }
      } catch {
        Issue.record("soft-dirty: failed: \(error)")
      }
    }
  }

  /// Writes chosen pages (never-touched ones among them), collects, and expects exactly those;
  /// then nothing; then a second set; then MADV_DONTNEED'd pages, and writes to them afterwards.
  func checkExactness(_ backend: DirtyTrackingBackend, _ kind: TrackedMemoryKind, transparentHuge: Bool) throws {
    let pages = kind == .hugetlb ? 6 : (transparentHuge ? 1024 : 64)
    let memory = try Tracking.memory(kind, pages: pages, transparentHuge: transparentHuge)
    let page = memory.pageSize
    // Half the pages hold data before tracking starts; the rest were never touched.
    for index in stride(from: 0, to: pages / 2, by: 1) { fill(memory.baseAddress + index * page, seed: UInt64(index), length: page) }
    let tracker = try DirtyTracker(memory: memory, backend: backend)
    defer { tracker.stop() }
    #expect(tracker.backend == backend)
    #expect(tracker.pageSize == page)
    #expect(try tracker.collect().isEmpty, "nothing written since the start")

    // Writes run on a thread of their own with a bound: a write the tracker failed to release
    // would otherwise hang the test (stop() in the defer releases it).
    let base = Address(memory.baseAddress)
    func write(_ indices: [Int], sourceLocation: SourceLocation = #_sourceLocation) {
      bounded("writes to \(indices)", sourceLocation: sourceLocation) {
        for index in indices { (base + index * page).mapped.storeBytes(of: UInt64(index) | 1 << 40, as: UInt64.self) }
      }
    }
    func expectCollected(_ indices: [Int], _ what: String, sourceLocation: SourceLocation = #_sourceLocation) throws {
      let written = try tracker.collect()
      let found = (0..<pages).filter { written.contains(Address(memory.baseAddress + $0 * page)) }
      #expect(found == indices.sorted(), "\(backend) on \(kind.rawValue): \(what)", sourceLocation: sourceLocation)
      #expect(written.pageCount == indices.count, sourceLocation: sourceLocation)
    }
    // Touched and never-touched pages (a set: six hugetlb pages make some of these coincide).
    let first = Array(Set([0, 1, 2, pages / 2 - 1, pages / 2, pages / 2 + 1, pages - 1])).sorted()
    write(first)
    try expectCollected(first, "first writes, to populated and never-touched pages")
    try expectCollected([], "a second collection straight after")
    write([3, pages - 2])
    write([3])
    try expectCollected([3, pages - 2], "writes after the re-protect")
    // Dropped pages: their content changed (to zeros), so they are reported; writes to them later
    // are reported again.
    bounded("MADV_DONTNEED (waits until the tracker reads its remove event)") {
      _ = madvise((base + 4 * page).mapped, 2 * page, MADV_DONTNEED)
    }
    // Documented exception: on hugetlbfs the kernel keeps a dropped page's wp-async protection
    // marker, so the drop itself is not reported (the page reads zeros; its next write is).
    // On shmem dropping a mapping of a page does not change its content (the page cache keeps
    // it): reporting it is allowed, not required.
    if kind == .shmem {
      let written = try tracker.collect()
      let found = (0..<pages).filter { written.contains(Address(memory.baseAddress + $0 * page)) }
      #expect(Set(found).isSubset(of: [4, 5]), "\(backend) on shmem: \(found)")
    } else {
      let dropReported = !(backend == .asyncWriteProtect && kind == .hugetlb)
      try expectCollected(dropReported ? [4, 5] : [], "MADV_DONTNEED'd pages")
    }
    write([4])
    try expectCollected([4], "a write to a dropped page")
    #expect(tracker.releaseFailures == 0)
  }

  @Test(.enabled(if: !DirtyTrackingBackend.available(for: .anonymous).isEmpty, "needs uffd-wp (Linux 5.7)"))
  func unmappingPartOfTheRangeLeavesTheRestTracked() throws {
    for backend in DirtyTrackingBackend.available(for: .anonymous) {
      let memory = try AnonymousMemory(length: 8 * PageSize.base)
      let tracker = try DirtyTracker(memory: memory, backend: backend)
      defer { tracker.stop() }
      memory.baseAddress.storeBytes(of: 1, as: UInt64.self)
      _ = munmap(memory.baseAddress + 4 * PageSize.base, PageSize.base)
      let written = try tracker.collect()
      #expect(written.ranges == [Address(memory.baseAddress)..<Address(memory.baseAddress + PageSize.base)], "\(backend)")
      (memory.baseAddress + 6 * PageSize.base).storeBytes(of: 1, as: UInt64.self)
      let later = try tracker.collect()
      #expect(later.pageCount == 1 && later.contains(Address(memory.baseAddress + 6 * PageSize.base)), "\(backend)")
      tracker.stop()
      #expect(throws: UserfaultfdError.self) { try tracker.collect() }
    }
  }

  // MARK: Concurrent writers: nothing missed

  /// Writers store into random pages (a sequence number, first and last word) while the test
  /// collects and copies every reported page into a mirror; at the end (writers stopped, one last
  /// collection) the mirror must equal the memory byte for byte: a write no collection reported
  /// would leave its page stale there. Pages never written must never be reported.
  @Test(.enabled(if: Tracking.has(.asyncWriteProtect), Tracking.needs(.asyncWriteProtect)))
  func wpAsyncMissesNoWriteUnderConcurrentWriters() async {
    await concurrentWriterProperty(.asyncWriteProtect)
  }

  @Test(.enabled(if: Tracking.has(.writeProtectFaults), Tracking.needs(.writeProtectFaults)))
  func uffdWPMissesNoWriteUnderConcurrentWriters() async {
    await concurrentWriterProperty(.writeProtectFaults)
  }

  func concurrentWriterProperty(_ backend: DirtyTrackingBackend) async {
    let cases = Atomic<Int>(0)
    let input = Gen.int(in: 16...160)  // pages
    await propertyCheck(count: 24, input: input, Gen.int(in: 1...3), Gen.int(in: 2...6), Gen.bool, Gen.bool) {
      pages, writers, rounds, shared, dropSome in
      cases.wrappingAdd(1, ordering: .relaxed)
      do {
        try mirrorStaysExact(backend, pages: pages, writers: writers, rounds: rounds,
                             kind: shared && Tracking.has(backend, .shmem) ? .shmem : .anonymous, dropSome: dropSome)
      } catch {
        print("\(backend): failed: \(error)")
        Issue.record("\(backend): failed: \(error)")
      }
    }
    #expect(cases.load(ordering: .relaxed) >= 24)
  }

  func mirrorStaysExact(
    _ backend: DirtyTrackingBackend, pages: Int, writers: Int, rounds: Int, kind: TrackedMemoryKind, dropSome: Bool
  ) throws {
    let page = PageSize.base
    let memory = try Tracking.memory(kind, pages: pages)
    let mirror = try AnonymousMemory(length: memory.length)
    // A quarter stays untouched by the writers (never reported), half is populated before.
    let writable = pages - pages / 4
    for index in 0..<(pages / 2) { fill(memory.baseAddress + index * page, seed: UInt64(index)) }
    mirror.baseAddress.copyMemory(from: memory.baseAddress, byteCount: memory.length)
    let tracker = try DirtyTracker(memory: memory, backend: backend)
    defer { tracker.stop() }
    let stop = SharedFlag()
    let base = Address(memory.baseAddress)
    let threads = (0..<writers).map { writer in
      TestThread { [stop] in
        var state = UInt64(0x9E37_79B9 &* UInt64(writer + 1) | 1)
        var sequence = UInt64(writer) << 48
        while !stop.value.load(ordering: .relaxed) {
          state ^= state << 13; state ^= state >> 7; state ^= state << 17
          let target = (base + Int(state % UInt64(writable)) * page).mapped
          sequence += 1
          target.storeBytes(of: sequence, as: UInt64.self)
          (target + page - 8).storeBytes(of: sequence, as: UInt64.self)
          if sequence & 63 == 0 { usleep(50) }
        }
      }
    }
    var reportedOutside = 0
    func collectIntoMirror() throws {
      let written = try tracker.collect()
      for range in written.ranges {
        let offset = range.lowerBound - base
        let length = range.upperBound - range.lowerBound
        (mirror.baseAddress + offset).copyMemory(from: memory.baseAddress + offset, byteCount: length)
        if range.upperBound > base + writable * page { reportedOutside += 1 }
      }
    }
    var failure: Error?
    do {
      for round in 0..<rounds {
        usleep(2000)
        if dropSome && round == 1 {
          // A range dropped under the writers: reported (now zeros), and tracked on afterwards.
          bounded("MADV_DONTNEED under the writers") { _ = madvise((base + page).mapped, 2 * page, MADV_DONTNEED) }
        }
        try collectIntoMirror()
      }
    } catch {
      failure = error
    }
    stop.value.store(true, ordering: .relaxed)
    for thread in threads where !thread.join(seconds: 20) {
      Issue.record("\(backend): a writer did not finish within 20 s (a write fault left waiting)")
    }
    if let failure { throw failure }
    try collectIntoMirror()
    let equal = memcmp(mirror.baseAddress, memory.baseAddress, memory.length) == 0
    var stale: [Int] = []
    if !equal {
      stale = (0..<pages).filter { memcmp(mirror.baseAddress + $0 * page, memory.baseAddress + $0 * page, page) != 0 }
    }
    #expect(equal, "\(backend) on \(kind.rawValue), \(pages) pages, \(writers) writers: pages missed \(stale)")
    if !dropSome || writable * page > 3 * page {
      #expect(reportedOutside == 0, "\(backend): pages nobody wrote were reported")
    }
  }
}
}
