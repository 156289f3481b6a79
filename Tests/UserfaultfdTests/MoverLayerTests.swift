import CUserfaultfdTestSupport
import Testing
@testable import Userfaultfd

/// The scenarios UFFDIO_MOVE and the logical move share, run through both layers with one
/// fixture: the raw ioctl (``Userfaultfd/move(from:to:length:options:)``) and ``PageMover``. Both
/// must agree on what happened to every page; the logical move's report says it page by page.
enum MoverLayer: String, CaseIterable, CustomTestStringConvertible, Sendable {
  case rawIoctl = "UFFDIO_MOVE"
  case pageMover = "PageMover"

  var testDescription: String { rawValue }

  /// What a move did, in terms both layers report.
  struct Outcome {
    /// Bytes that reached the destination before any stop.
    var bytesDone: Int
    /// What stopped it (nil when it completed).
    var stop: FailureKind?
    /// The logical move's report (nil for the raw ioctl).
    var report: MoveReport?
  }

  /// Moves `length` bytes through this layer; `holes` lets source holes count as moved.
  func move(_ f: MoverFixture, length: Int, holes: Bool = false) throws -> Outcome {
    switch self {
    case .rawIoctl:
      do {
        try f.uffd.move(from: f.source.baseAddress, to: f.destination.baseAddress, length: length,
                        options: holes ? .allowSourceHoles : [])
        return Outcome(bytesDone: length, stop: nil, report: nil)
      } catch .operationFailed(let failure) {
        return Outcome(bytesDone: failure.bytesDone, stop: failure.kind, report: nil)
      }
    case .pageMover:
      var policy: MovePolicy = holes ? .allowSourceHoles : .strict
      policy.recordPages = true
      do {
        let report = try PageMover(f.uffd).move(
          from: f.source.baseAddress, to: f.destination.baseAddress, length: length, policy: policy)
        return Outcome(bytesDone: report.bytesDone, stop: nil, report: report)
      } catch .moveStopped(let report) {
        return Outcome(bytesDone: report.bytesDone, stop: report.stop?.failure?.kind, report: report)
      }
    }
  }
}

/// Source pages, and destination pages registered (MISSING) with `uffd`.
struct MoverFixture {
  let uffd: Userfaultfd
  let source: AnonymousMemory
  let destination: AnonymousMemory
  let page = PageSize.base

  init(pages: Int, sourceSharing: AnonymousMemory.Sharing = .private) throws {
    uffd = try Userfaultfd(options: .nonBlocking)
    source = try AnonymousMemory(length: pages * PageSize.base, sharing: sourceSharing)
    destination = try AnonymousMemory(length: pages * PageSize.base)
    try uffd.register(destination.baseAddress, length: destination.length, mode: .missing)
  }

  /// Fills source page `index` with its pattern.
  func fillSource(_ index: Int) { fill(source.baseAddress + index * page, seed: UInt64(100 + index)) }
  func sourceHolds(_ index: Int) -> Bool { holds(source.baseAddress + index * page, seed: UInt64(100 + index)) }
  func destinationHolds(_ index: Int) -> Bool { holds(destination.baseAddress + index * page, seed: UInt64(100 + index)) }
}

extension KernelTests {
@Suite("Both move layers", .enabled(if: Kernel.hasMove, "needs UFFDIO_MOVE (Linux 6.8+)"))
struct MoverLayerTests {
  let page = PageSize.base

  @Test(arguments: MoverLayer.allCases)
  func movesEveryPageAndEmptiesTheSource(layer: MoverLayer) throws {
    let f = try MoverFixture(pages: 32)
    for index in 0..<32 { f.fillSource(index) }
    let outcome = try layer.move(f, length: 32 * page)
    #expect(outcome.stop == nil)
    #expect(outcome.bytesDone == 32 * page)
    for index in 0..<32 { #expect(f.destinationHolds(index)) }
    #expect(isZero(f.source.baseAddress, length: 32 * page))
    if let report = outcome.report {
      #expect(report.isComplete && report.bytesMoved == 32 * page && report.bytesCopied == 0)
      #expect(report.runs == [PageRun(outcome: .moved, firstPage: 0, count: 32)])
    }
  }

  @Test(arguments: MoverLayer.allCases)
  func aSourceHoleStopsTheMoveAndLaterPagesStay(layer: MoverLayer) throws {
    let f = try MoverFixture(pages: 6)
    for index in [0, 1, 3, 4, 5] { f.fillSource(index) }
    let outcome = try layer.move(f, length: 6 * page)
    #expect(outcome.bytesDone == 2 * page)
    // The raw ioctl stops early (EAGAIN after progress: resume to learn why); the logical move
    // resumes by itself and names the hole.
    #expect(outcome.stop == (layer == .rawIoctl ? .partial : .sourceMissing))
    #expect(f.destinationHolds(0) && f.destinationHolds(1))
    for index in [3, 4, 5] { #expect(f.sourceHolds(index), "page \(index) stays in the source") }
    if let report = outcome.report {
      #expect(report.stop?.offset == 2 * page)
      #expect(report.stop?.cause == .sourceHole(Address(f.source.baseAddress + 2 * page)))
      #expect(report.runs == [
        PageRun(outcome: .moved, firstPage: 0, count: 2), PageRun(outcome: .hole, firstPage: 2, count: 1),
        PageRun(outcome: .notAttempted, firstPage: 3, count: 3),
      ])
    }
  }

  @Test(arguments: MoverLayer.allCases)
  func aHoleAtTheStartMovesNothing(layer: MoverLayer) throws {
    let f = try MoverFixture(pages: 1)
    let outcome = try layer.move(f, length: page)
    #expect(outcome.bytesDone == 0)
    #expect(outcome.stop == .sourceMissing)
    #expect(!isPopulated(f.destination.baseAddress))
  }

  @Test(arguments: MoverLayer.allCases)
  func allowingSourceHolesCountsThem(layer: MoverLayer) throws {
    let f = try MoverFixture(pages: 8)
    for index in [0, 3, 4, 7] { f.fillSource(index) }
    let outcome = try layer.move(f, length: 8 * page, holes: true)
    #expect(outcome.stop == nil)
    for index in [0, 3, 4, 7] { #expect(f.destinationHolds(index)) }
    #expect(isZero(f.source.baseAddress, length: 8 * page))
    if let report = outcome.report {
      #expect(report.bytesMoved == 4 * page && report.holeBytes == 4 * page)
      #expect(report.runs == [
        PageRun(outcome: .moved, firstPage: 0, count: 1), PageRun(outcome: .hole, firstPage: 1, count: 2),
        PageRun(outcome: .moved, firstPage: 3, count: 2), PageRun(outcome: .hole, firstPage: 5, count: 2),
        PageRun(outcome: .moved, firstPage: 7, count: 1),
      ])
    }
  }

  @Test(arguments: MoverLayer.allCases)
  func aPageSharedWithAForkedChildIsBusyAndStays(layer: MoverLayer) throws {
    let f = try MoverFixture(pages: 2)
    f.fillSource(0)
    let child = cuffd_test_fork_holder()
    try #require(child > 0)
    defer { _ = cuffd_test_kill_and_wait(child) }
    f.fillSource(1)  // touched after the fork: this process's own page
    let outcome = try layer.move(f, length: 2 * page)
    #expect(outcome.bytesDone == 0)
    #expect(outcome.stop == .busy)
    #expect(f.sourceHolds(0) && f.sourceHolds(1), "nothing left the source")
    if let report = outcome.report {
      #expect(report.stop?.cause == .busy(.sharedWithForkedChild))
      #expect(report.busy == [BusyRun(offset: 0, pages: 1, reason: .sharedWithForkedChild)])
    }
  }

  @Test(arguments: MoverLayer.allCases)
  func aSharedSourceIsRefusedWithNothingMoved(layer: MoverLayer) throws {
    let f = try MoverFixture(pages: 1, sourceSharing: .shared)
    f.fillSource(0)
    let outcome = try layer.move(f, length: page)
    #expect(outcome.bytesDone == 0)
    #expect(outcome.stop == .refused)
    #expect(f.sourceHolds(0))
    if let report = outcome.report {
      #expect(report.stop?.cause == .sourceNotPrivateAnonymous(Address(f.source.baseAddress)))
    }
  }

  @Test(arguments: MoverLayer.allCases)
  func misalignedRangesAreTheSameErrorBeforeTheKernel(layer: MoverLayer) throws {
    let f = try MoverFixture(pages: 2)
    f.fillSource(0)
    let misaligned = UserfaultfdError.invalidArgument(
      .move, .misaligned(role: .source, address: Address(f.source.baseAddress + 8), pageSize: page))
    #expect(throws: misaligned) {
      switch layer {
      case .rawIoctl:
        try f.uffd.move(from: f.source.baseAddress + 8, to: f.destination.baseAddress, length: page)
      case .pageMover:
        _ = try PageMover(f.uffd).move(from: f.source.baseAddress + 8, to: f.destination.baseAddress, length: page)
      }
    }
    #expect(f.sourceHolds(0))
  }
}
}
