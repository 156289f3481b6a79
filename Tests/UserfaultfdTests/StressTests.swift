import Testing
import Userfaultfd
import UffdTools

/// Short runs of `uffd stress`: writers, a mover and a fault handler on the same pages.
extension KernelTests {
@Suite("uffd stress", .enabled(if: Kernel.hasMove, "needs UFFDIO_MOVE (Linux 6.8+)"))
struct StressTests {
  @Test func moveLosesNoUpdate() throws {
    let result = try MoveStress(.init(seconds: 1, writers: 2, pages: 64, mover: .move)).run { _ in }
    #expect(result.errors.isEmpty, "\(result.errors)")
    #expect(result.verified)
    #expect(result.lostUpdates == 0)
    #expect(result.writes > 0)
    #expect(result.moves > 0)
    #expect(result.faults > 0, "the handler resolved faults on moved-away pages")
  }

  @Test func atomicCopyFallbackLosesNoUpdate() throws {
    let result = try MoveStress(.init(seconds: 1, writers: 2, pages: 64, mover: .logicalCopy)).run { _ in }
    #expect(result.errors.isEmpty, "\(result.errors)")
    #expect(result.verified)
    #expect(result.moves > 0)
  }

  /// Racing movers: destination pages are filled by another mover or the handler while a move or
  /// a copy fallback runs. Nothing is lost either way.
  @Test(arguments: [MoveStress.Mover.move, .logicalCopy])
  func racingMoversLoseNoUpdate(mover: MoveStress.Mover) throws {
    let result = try MoveStress(.init(seconds: 1, writers: 2, pages: 64, mover: mover, movers: 3)).run { _ in }
    #expect(result.errors.isEmpty, "\(result.errors)")
    #expect(result.verified)
    #expect(result.lostUpdates == 0)
    #expect(result.moves > 0)
  }

  /// Everything through the copy fallback, the fault handler too: what runs on a kernel without
  /// UFFDIO_MOVE.
  /// Up to five 1 s runs, until the handler has served faults: on a loaded machine a writer can be
  /// descheduled for a whole second and touch no moved-away page. Every run must verify.
  @Test func copyFallbackEverywhereLosesNoUpdate() throws {
    var faults: UInt64 = 0
    for _ in 0..<5 where faults == 0 {
      let result = try MoveStress(.init(seconds: 1, writers: 2, pages: 64, mover: .logicalCopy, handlerMayMove: false))
        .run { _ in }
      #expect(result.errors.isEmpty, "\(result.errors)")
      #expect(result.verified)
      #expect(result.moves > 0)
      faults += result.faults
    }
    #expect(faults > 0, "the handler brought pages back through the fallback")
  }

  /// The control: COPY then MADV_DONTNEED loses writes, and the check sees it.
  @Test func naiveCopyFallbackIsCaughtLosingUpdates() throws {
    let result = try MoveStress(.init(seconds: 1, writers: 2, pages: 64, mover: .naiveCopy)).run { _ in }
    #expect(!result.verified)
    #expect(result.lostUpdates > 0)
  }

  @Test func badConfigurationIsAClearError() {
    #expect(throws: ToolError.self) { try MoveStress(.init(seconds: 1, writers: 0, pages: 64)) }
    #expect(throws: ToolError.self) { try MoveStress(.init(seconds: 1, writers: 2, pages: 2)) }
    #expect(throws: ToolError.self) { try MoveStress(.init(seconds: 0, writers: 2, pages: 64)) }
  }
}
}
