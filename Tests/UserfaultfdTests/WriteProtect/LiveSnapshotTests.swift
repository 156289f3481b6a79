import Foundation
import Synchronization
import SystemPackage
import Testing
import Userfaultfd

/// A writer thread for snapshot tests: stores an increasing sequence number into the first and
/// last word of random pages of its share (every `writers`-th page from `first`), remembers the
/// last number each page got, and stops writing while a pause is requested, so the test can read
/// that record at the cut.
final class SequenceWriter: @unchecked Sendable {
  // @unchecked: `lastWritten` is written by the writer thread only while it runs unpaused, and read
  // by the test only while the writer is paused or finished (the flags order the accesses).
  let pauseRequested = Atomic<Bool>(false)
  let paused = Atomic<Bool>(false)
  let stop = Atomic<Bool>(false)
  let writes = Atomic<Int>(0)
  private(set) var lastWritten: [UInt64]
  private var thread: TestThread?

  init(base: Address, pages: Int, pageSize: Int, first: Int, every writers: Int, initial: [UInt64]) {
    lastWritten = initial
    thread = TestThread { [unowned self] in
      self.run(base: base, pages: pages, pageSize: pageSize, first: first, every: writers)
    }
  }

  private func run(base: Address, pages: Int, pageSize: Int, first: Int, every writers: Int) {
    var state = UInt64(0x2545_F491_4F6C_DD1D) &+ UInt64(first)
    var sequence = UInt64(first + 1) << 40
    let share = (pages - first + writers - 1) / writers
    while !stop.load(ordering: .acquiring) {
      if pauseRequested.load(ordering: .acquiring) {
        paused.store(true, ordering: .releasing)
        while pauseRequested.load(ordering: .acquiring) && !stop.load(ordering: .acquiring) { usleep(50) }
        paused.store(false, ordering: .releasing)
        continue
      }
      state ^= state << 13; state ^= state >> 7; state ^= state << 17
      let index = first + Int(state % UInt64(share)) * writers
      guard index < pages else { continue }
      sequence += 1
      let page = (base + index * pageSize).mapped
      page.storeBytes(of: sequence, as: UInt64.self)
      (page + pageSize - 8).storeBytes(of: sequence, as: UInt64.self)
      lastWritten[index] = sequence
      let count = writes.wrappingAdd(1, ordering: .relaxed).newValue
      if count & 127 == 0 { usleep(20) }
    }
  }

  /// Asks the writer to pause and waits (at most `seconds`) until it has.
  func pause(seconds: Double = 10) -> Bool {
    pauseRequested.store(true, ordering: .releasing)
    return eventually(seconds: seconds) { paused.load(ordering: .acquiring) }
  }

  func resume() { pauseRequested.store(false, ordering: .releasing) }

  /// Stops the writer and waits (at most `seconds`) for it.
  func finish(seconds: Double = 20) -> Bool {
    stop.store(true, ordering: .releasing)
    return thread?.join(seconds: seconds) ?? true
  }
}

extension KernelTests {
@Suite("Live snapshots")
struct LiveSnapshotTests {
  static let hasWriteProtect = Tracking.has(.writeProtectFaults)

  @Test(.enabled(if: hasWriteProtect, Tracking.needs(.writeProtectFaults)), arguments: LiveSnapshot.Resolver.allCases)
  func everyPageHoldsItsStateAtTheCut(resolver: LiveSnapshot.Resolver) throws {
    try checkSnapshot(resolver: resolver, kind: .anonymous, pages: 2048, writers: 2)
  }

  @Test(.enabled(if: Tracking.has(.writeProtectFaults, .shmem), Tracking.needs(.writeProtectFaults, .shmem)),
        arguments: LiveSnapshot.Resolver.allCases)
  func everyShmemPageHoldsItsStateAtTheCut(resolver: LiveSnapshot.Resolver) throws {
    try checkSnapshot(resolver: resolver, kind: .shmem, pages: 2048, writers: 2)
  }

  @Test(.enabled(if: Tracking.has(.writeProtectFaults, .hugetlb), Tracking.needs(.writeProtectFaults, .hugetlb)),
        .enabled(if: HugePages.canReserve, "needs 2 MiB hugetlb pages: none could be reserved (vm.nr_hugepages)"),
        arguments: LiveSnapshot.Resolver.allCases)
  func everyHugetlbPageHoldsItsStateAtTheCut(resolver: LiveSnapshot.Resolver) throws {
    try HugePages.withReserved(8) { try checkSnapshot(resolver: resolver, kind: .hugetlb, pages: 8, writers: 2) }
  }

  @Test(.enabled(if: hasWriteProtect, Tracking.needs(.writeProtectFaults)), arguments: LiveSnapshot.Resolver.allCases)
  func transparentHugePagesAreCopiedExactly(resolver: LiveSnapshot.Resolver) throws {
    try checkSnapshot(resolver: resolver, kind: .anonymous, pages: 2048, writers: 2, transparentHuge: true)
  }

  @Test(.enabled(if: hasWriteProtect, Tracking.needs(.writeProtectFaults)))
  func repeatedSnapshotsOfTheSameRangeAreEachExact() throws {
    for round in 0..<4 {
      try checkSnapshot(resolver: round % 2 == 0 ? .faultingThread : .handlerThread, kind: .anonymous,
                        pages: 512 + round * 100, writers: 1 + round % 2, holdCopy: round >= 2)
    }
  }

  /// Faults copy into the staging buffer, or write the file themselves when it is full or absent:
  /// the file is exact whichever way a page went. No staging: every fault wrote the file; one
  /// staging page: it fills at once, so both ways run; the default: the writers' faults stage.
  @Test(.enabled(if: hasWriteProtect, Tracking.needs(.writeProtectFaults)), .serialized,
        arguments: LiveSnapshot.Resolver.allCases, [0, PageSize.base, LiveSnapshot.defaultStagingBytes])
  func stagedAndDirectCopiesAreEachExact(resolver: LiveSnapshot.Resolver, stagingBytes: Int) throws {
    let report = try checkSnapshot(resolver: resolver, kind: .anonymous, pages: 1024, writers: 2, stagingBytes: stagingBytes)
    guard let report else { return }
    #expect(report.stagingPeakPages <= stagingBytes / PageSize.base)
    if stagingBytes == 0 { #expect(report.faultsThatWroteTheFile == report.copiedBeforeWrites) }
    if stagingBytes == LiveSnapshot.defaultStagingBytes && report.copiedBeforeWrites > 0 {
      #expect(report.stagingPeakPages > 0, "the writers' faults used the staging buffer")
    }
  }

  @discardableResult
  func checkSnapshot(
    resolver: LiveSnapshot.Resolver, kind: TrackedMemoryKind, pages: Int, writers: Int, transparentHuge: Bool = false,
    holdCopy: Bool = true, stagingBytes: Int = LiveSnapshot.defaultStagingBytes
  ) throws -> LiveSnapshotReport? {
    let memory = try Tracking.memory(kind, pages: pages, transparentHuge: transparentHuge)
    let page = memory.pageSize
    // Half the pages hold data before the snapshot; the rest were never touched.
    var initial = [UInt64](repeating: 0, count: pages)
    for index in 0..<(pages / 2) {
      let value = UInt64(index) | 1 << 63
      (memory.baseAddress + index * page).storeBytes(of: value, as: UInt64.self)
      (memory.baseAddress + index * page + page - 8).storeBytes(of: value, as: UInt64.self)
      initial[index] = value
    }
    let path = FilePath("/tmp/uffd-live-snapshot-\(getpid())-\(resolver.rawValue).bin")
    let file = try FileDescriptor.open(path, .readWrite, options: [.create, .truncate], permissions: [.ownerReadWrite])
    defer {
      try? file.close()
      _ = unlink(path.string)
    }
    let snapshot = try LiveSnapshot(memory: memory, file: file, resolver: resolver, stagingBytes: stagingBytes)
    let base = Address(memory.baseAddress)
    let team = (0..<writers).map {
      SequenceWriter(base: base, pages: pages, pageSize: page, first: $0, every: writers, initial: initial)
    }
    var expected = initial
    var report: LiveSnapshotReport?
    do {
      usleep(5000)
      for writer in team where !writer.pause() { Issue.record("a writer did not pause within 10 s") }
      for (number, writer) in team.enumerated() {
        for index in stride(from: number, to: pages, by: writers) { expected[index] = writer.lastWritten[index] }
      }
      // Half the time the background copy waits 200 ms, so the writers surely reach pages first
      // (even on a loaded machine) and the copy-before-write path runs; otherwise the two race.
      try snapshot.cut(holdingBackgroundCopyFor: holdCopy ? 0.2 : 0)
      for writer in team { writer.resume() }
      usleep(20_000)
      report = try snapshot.finish(timeoutSeconds: 60)
    } catch {
      snapshot.cancel()
      for writer in team { _ = writer.finish() }
      throw error
    }
    for writer in team where !writer.finish() { Issue.record("a writer did not finish within 20 s") }
    let totalWrites = team.reduce(0) { $0 + $1.writes.load(ordering: .relaxed) }
    guard let report else { return nil }
    print("live snapshot (\(resolver.rawValue), \(kind.rawValue), \(pages) pages, \(writers) writers):"
      + " \(report.copiedBeforeWrites) pages copied before a write (\(report.faultsThatWroteTheFile) of them written"
      + " to the file by the fault, staging peak \(report.stagingPeakPages) pages), \(report.copiedInBackground) in the background,"
      + " cut \(String(format: "%.2f", report.cutSeconds * 1000)) ms, \(totalWrites) writes, populated first: \(report.populatedFirst)")
    #expect(report.copiedBeforeWrites + report.copiedInBackground == pages, "every page copied exactly once")
    if holdCopy { #expect(report.copiedBeforeWrites > 0, "the writers reached pages before the copier") }
    // Compare the file with the state at the cut, page by page.
    var buffer = [UInt8](repeating: 0, count: page)
    var wrong: [Int] = []
    for index in 0..<pages {
      let read = try buffer.withUnsafeMutableBytes { try file.read(fromAbsoluteOffset: Int64(index * page), into: $0) }
      guard read == page else {
        wrong.append(index)
        continue
      }
      let first = buffer.withUnsafeBytes { $0.load(fromByteOffset: 0, as: UInt64.self) }
      let last = buffer.withUnsafeBytes { $0.load(fromByteOffset: page - 8, as: UInt64.self) }
      if first != expected[index] || last != expected[index] { wrong.append(index) }
    }
    #expect(wrong.count == 0, "\(resolver.rawValue) on \(kind.rawValue): \(wrong.count) pages differ from the cut, first \(wrong.prefix(8))")
    // The writers went on after the cut: the memory moved on while the file kept the cut.
    #expect(totalWrites > 0)
    return report
  }

  @Test(.enabled(if: hasWriteProtect, Tracking.needs(.writeProtectFaults)))
  func misuseIsRefusedAndCancellingReleasesTheRange() throws {
    let memory = try AnonymousMemory(length: 16 * PageSize.base)
    let path = FilePath("/tmp/uffd-live-snapshot-misuse-\(getpid()).bin")
    let file = try FileDescriptor.open(path, .readWrite, options: [.create, .truncate], permissions: [.ownerReadWrite])
    defer {
      try? file.close()
      _ = unlink(path.string)
    }
    #expect(throws: UserfaultfdError.self) {
      try LiveSnapshot(start: memory.baseAddress + 1, length: PageSize.base, kind: .anonymous, file: file, resolver: .handlerThread)
    }
    #expect(throws: UserfaultfdError.self) {
      try LiveSnapshot(memory: memory, file: file, fileOffset: -1, resolver: .handlerThread)
    }
    for stagingBytes in [-1, LiveSnapshot.maxStagingBytes + 1, Int.max] {
      #expect(throws: UserfaultfdError.self) {
        try LiveSnapshot(memory: memory, file: file, resolver: .handlerThread, stagingBytes: stagingBytes)
      }
    }
    let snapshot = try LiveSnapshot(memory: memory, file: file, resolver: .handlerThread)
    #expect(throws: UserfaultfdError.self) { try snapshot.finish() }  // before the cut
    try snapshot.cut()
    #expect(throws: UserfaultfdError.self) { try snapshot.cut() }  // twice
    snapshot.cancel()
    // Released: writable at once, and free to register again.
    let first = Address(memory.baseAddress)
    bounded("a write after cancel") { first.mapped.storeBytes(of: 7, as: UInt64.self) }
    let uffd = try Userfaultfd()
    try uffd.register(memory.baseAddress, length: memory.length, mode: .missing)
  }
}
}
