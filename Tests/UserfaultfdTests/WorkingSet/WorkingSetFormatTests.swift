import Foundation
import Glibc
import Testing
@testable import SnapshotPager
import Userfaultfd

/// The working-set file, the settle detector and the merge, without a kernel: round trips, every
/// kind of damaged or hostile file refused with its reason, and the merge's order.
@Suite("Working-set format")
struct WorkingSetFormatTests {
  static let identity = SnapshotIdentity(size: 64 << 20, device: 2049, inode: 1234, modifiedNanoseconds: 1_700_000_000_123_456_789)

  static func sample(pages: [UInt64] = [7, 3, 4, 5, 100, 0], traces: Int = 1) -> WorkingSet {
    WorkingSet(snapshot: identity, pages: pages, traces: traces, settled: true, recordingMilliseconds: 1500)
  }

  @Test func roundTripsThroughBytesAndFiles() throws {
    let set = Self.sample()
    let bytes = set.encode()
    #expect(bytes.count == 80 + 8 * 6 + 4)
    #expect(Array(bytes[0..<8]) == Array("UFFDWSET".utf8))
    #expect(try WorkingSet.decode(bytes, expecting: Self.identity) == set)
    let path = "/tmp/uffd-test-\(getpid())-roundtrip.wset"
    defer { unlink(path) }
    try set.write(to: path)
    #expect(try WorkingSet.read(from: path, expecting: Self.identity) == set)
    #expect(access("\(path).tmp-\(getpid())", F_OK) != 0, "no temporary file is left behind")
    let empty = WorkingSet(snapshot: Self.identity, pages: [])
    #expect(try WorkingSet.decode(empty.encode()) == empty)
  }

  @Test func everyTruncationIsRefused() {
    let bytes = Self.sample().encode()
    for length in [0, 7, 11, 12, 79, 80, 83, 90, bytes.count - 1] {
      #expect(throws: WorkingSetError.self, "\(length) of \(bytes.count) bytes") {
        _ = try WorkingSet.decode(Array(bytes.prefix(length)))
      }
    }
    #expect(throws: WorkingSetError.truncated(expected: bytes.count, found: bytes.count + 1)) {
      _ = try WorkingSet.decode(bytes + [0])
    }
  }

  @Test func everyFlippedBitIsCaught() {
    let bytes = Self.sample().encode()
    // Every bit of the file, one at a time: refused, whatever field it lands in.
    for index in 0..<bytes.count {
      for bit in 0..<8 {
        var damaged = bytes
        damaged[index] ^= UInt8(1 << bit)
        #expect(throws: WorkingSetError.self, "byte \(index) bit \(bit)") { _ = try WorkingSet.decode(damaged) }
      }
    }
  }

  @Test func theReasonsAreNamed() throws {
    var bytes = Self.sample().encode()
    bytes[0] = UInt8(ascii: "X")
    #expect(throws: WorkingSetError.badMagic) { _ = try WorkingSet.decode(bytes) }
    bytes = Self.sample().encode()
    bytes[8] = 2
    #expect(throws: WorkingSetError.unsupportedVersion(2)) { _ = try WorkingSet.decode(bytes) }
    bytes = Self.sample().encode()
    bytes[90] ^= 0xFF
    do {
      _ = try WorkingSet.decode(bytes)
      Issue.record("a damaged page entry was accepted")
    } catch {
      guard case .checksumMismatch = error else { Issue.record("\(error)"); return }
      #expect("\(error)".contains("corrupt"))
    }
    var other = Self.identity
    other.modifiedNanoseconds += 1
    #expect(throws: WorkingSetError.otherSnapshot(recorded: Self.identity, current: other)) {
      _ = try WorkingSet.decode(Self.sample().encode(), expecting: other)
    }
    #expect("\(WorkingSetError.otherSnapshot(recorded: Self.identity, current: other))".contains("stale"))
  }

  @Test func hostileButWellChecksummedFilesAreRefused() {
    // A file whose checksum is right but whose pages are not: past the snapshot, listed twice.
    let pastTheEnd = Self.sample(pages: [1, 2, UInt64(Self.identity.size / 4096)])
    #expect(throws: WorkingSetError.badPage(index: 2, offset: Self.identity.size, why: "past the end of the \(Self.identity.size)-byte snapshot")) {
      _ = try WorkingSet.decode(pastTheEnd.encode())
    }
    let huge = Self.sample(pages: [UInt64.max])
    #expect(throws: WorkingSetError.self) { _ = try WorkingSet.decode(huge.encode()) }
    let twice = Self.sample(pages: [1, 2, 1])
    #expect(throws: WorkingSetError.badPage(index: 2, offset: 4096, why: "listed twice")) { _ = try WorkingSet.decode(twice.encode()) }
    var zeroTraces = Self.sample()
    zeroTraces.traces = 0
    #expect(throws: WorkingSetError.badHeader("no trace")) { _ = try WorkingSet.decode(zeroTraces.encode()) }
    var badGranule = Self.sample()
    badGranule.granule = 12_345
    #expect(throws: WorkingSetError.self) { _ = try WorkingSet.decode(badGranule.encode()) }
  }

  @Test func aLyingPageCountIsRefusedBeforeAnythingIsAllocated() {
    var bytes = Self.sample().encode()
    // 2^40 pages claimed in a file of a few bytes.
    for (index, byte) in [0, 0, 0, 0, 0, 1, 0, 0].enumerated() { bytes[72 + index] = UInt8(byte) }
    #expect(throws: WorkingSetError.self) { _ = try WorkingSet.decode(bytes) }
  }

  @Test func identityFollowsTheFile() throws {
    let path = "/tmp/uffd-test-\(getpid())-identity.snap"
    defer { unlink(path) }
    try Data(repeating: 7, count: 8192).write(to: URL(fileURLWithPath: path))
    let before = try SnapshotIdentity(path: path)
    #expect(before.size == 8192)
    #expect(try SnapshotIdentity(path: path) == before)
    // A rewrite (new content, same size) is another generation.
    var times = [timespec(tv_sec: 1_000_000, tv_nsec: 0), timespec(tv_sec: 1_000_000, tv_nsec: 0)]
    #expect(utimensat(AT_FDCWD, path, &times, 0) == 0)
    #expect(try SnapshotIdentity(path: path) != before)
    #expect(throws: WorkingSetError.self) { _ = try SnapshotIdentity(path: "/nonexistent/uffd-snapshot") }
  }

  // MARK: Settle detector

  /// `isSettled` outside the `#expect` macro (which cannot call a mutating method).
  func settled(_ detector: inout SettleDetector, _ now: ContinuousClock.Instant) -> Bool { detector.isSettled(at: now) }

  @Test func settlesWhenAWindowAddsFewPages() {
    let start = ContinuousClock.now
    var detector = SettleDetector(window: .seconds(1), minimumNewPages: 16, fraction: 0.01)
    #expect(!settled(&detector, start + .seconds(10)), "nothing recorded: not settled")
    detector.observe(newPages: 1000, at: start)
    detector.observe(newPages: 500, at: start + .milliseconds(500))
    #expect(!settled(&detector, start + .milliseconds(900)), "the first window is not over")
    #expect(!settled(&detector, start + .milliseconds(1000)), "the first window added 1500 pages")
    detector.observe(newPages: 10, at: start + .milliseconds(1200))
    #expect(!settled(&detector, start + .milliseconds(1900)))
    #expect(settled(&detector, start + .milliseconds(2000)), "the second window added 10 (at most 16 or 1%)")
  }

  @Test func keepsRecordingWhileTheRestoreIsBusyAndStopsAtTheLimit() {
    let start = ContinuousClock.now
    var detector = SettleDetector(window: .seconds(1), minimumNewPages: 16, fraction: 0.01, maximumDuration: .seconds(10))
    detector.observe(newPages: 100, at: start)
    for second in 1..<10 {
      #expect(!settled(&detector, start + .seconds(second)), "second \(second): 100 new pages a window")
      detector.observe(newPages: 100, at: start + .seconds(second) + .milliseconds(1))
    }
    #expect(settled(&detector, start + .seconds(10)), "the maximum duration ends it")
    // A long silence after a busy window counts as settled too.
    var quiet = SettleDetector(window: .seconds(1))
    quiet.observe(newPages: 5000, at: start)
    #expect(settled(&quiet, start + .seconds(3)))
    #expect(quiet.threshold(total: 5000) == 50 && quiet.threshold(total: 10) == 16)
  }

  // MARK: Merge

  @Test func mergeIsTheUnionInMedianRankOrder() throws {
    let a = Self.sample(pages: [1, 2, 3, 4])
    let b = Self.sample(pages: [2, 1, 3, 5])
    let c = Self.sample(pages: [1, 2, 6, 3])
    let merged = try WorkingSet.merge([a, b, c])
    #expect(Set(merged.pages) == [1, 2, 3, 4, 5, 6], "the union")
    #expect(merged.pages.count == 6, "each page once")
    #expect(Array(merged.pages.prefix(2)) == [1, 2], "what every clone touches first stays first")
    #expect(merged.traces == 3 && merged.settled && merged.recordingMilliseconds == 1500)
    // A merged input weighs as the traces it holds.
    let again = try WorkingSet.merge([merged, Self.sample(pages: [6, 5, 4, 3, 2, 1])])
    #expect(again.traces == 4 && Array(again.pages.prefix(2)) == [1, 2])
    #expect(try WorkingSet.merge([a]) == a)
    #expect(try WorkingSet.decode(again.encode()) == again, "a merge is a valid file")
  }

  @Test func mergeRefusesOtherSnapshots() {
    var other = Self.sample()
    other.snapshot.inode += 1
    #expect(throws: WorkingSetError.self) { _ = try WorkingSet.merge([Self.sample(), other]) }
    #expect(throws: WorkingSetError.self) { _ = try WorkingSet.merge([]) }
  }

  @Test func sessionRecordsRoundTripThroughTheirHandWrittenJSON() throws {
    let record = SessionRecord(
      session: 42, pid: 1234, startTime: 98_765, uffdDescriptor: 7, snapshot: "/srv/a \"b\"\\c\u{1}é.mem",
      regions: [GuestRegion(base: Address(rawValue: 0x7F00_0000_0000), size: 1 << 30, offset: 0),
                GuestRegion(base: Address(rawValue: 0x7F10_0000_0000), size: 2 << 20, offset: 1 << 30, pageSize: 2 << 20)])
    var kibOnly = record
    kibOnly.regions[1].pageSize = nil  // the older spelling alone
    let decoded = try JSONDecoder().decode(SessionRecord.self, from: Data(record.json()))
    #expect(decoded == record)
    #expect(try JSONDecoder().decode(SessionRecord.self, from: Data(kibOnly.json())) == kibOnly)
  }

  @Test func theCRCIsCRC32C() {
    // The standard check value of CRC-32C.
    #expect(CRC32C.checksum(Array("123456789".utf8)) == 0xE306_9283)
  }
}
