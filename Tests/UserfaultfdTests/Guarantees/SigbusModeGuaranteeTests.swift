import CUserfaultfdTestSupport
import Foundation
import Synchronization
import Testing
@testable import Userfaultfd

/// SIGBUS mode keeps the promises too: a fault its resolver cannot fill is failed (poisoned or
/// zero-filled) and counted, never spun on; closing a region while threads fault in it kills
/// nobody; a SIGBUS that is not the region's reaches the previous handler and leaves the regions
/// armed; overlapping regions are refused. Scenarios that may end a process run in a child.
extension KernelTests {
@Suite("Guarantees: SIGBUS mode", .enabled(if: Kernel.hasSigbus, "needs UFFD_FEATURE_SIGBUS (Linux 4.14)"))
struct SigbusModeGuaranteeTests {
  let page = PageSize.base

  @Test func failingResolverZeroFillsAndCounts() throws {
    let uffd = try Userfaultfd(features: [.sigbus])
    let area = try AnonymousMemory(length: 4 * page)
    let decline: SigbusRegion.Resolver = { _, _ in -1 }
    let region = try SigbusRegion(uffd: uffd, start: area.baseAddress, length: area.length,
                                  resolver: decline, context: nil, onFailure: .zeroPage)
    defer { region.close() }
    #expect(area.baseAddress.load(as: UInt64.self) == 0)
    #expect(region.failedResolutions == 1)
    #expect(region.lastFailure?.pageAddress == Address(area.baseAddress))
    #expect(region.resolvedCount == 0)
  }

  @Test(.enabled(if: Kernel.hasMove, "needs UFFDIO_MOVE (Linux 6.8)"))
  func moveFromHolesFailsTheFaultInsteadOfSpinning() throws {
    let uffd = try Userfaultfd(features: [.sigbus])
    let area = try AnonymousMemory(length: 2 * page)
    let holes = try AnonymousMemory(length: 2 * page)
    let region = try SigbusRegion(uffd: uffd, start: area.baseAddress, length: area.length,
                                  source: .move(from: holes.baseAddress), onFailure: .zeroPage)
    defer { region.close() }
    #expect((area.baseAddress + page).load(as: UInt8.self) == 0)
    #expect(region.failedResolutions == 1)
    #expect(region.lastFailure?.errno == ENOENT)
  }

  @Test func copyFromUnmappedSourceFailsTheFault() throws {
    let uffd = try Userfaultfd(features: [.sigbus])
    let area = try AnonymousMemory(length: page)
    let unmapped = try unmappedRange(pages: 1)
    let region = try SigbusRegion(uffd: uffd, start: area.baseAddress, length: area.length,
                                  source: .copy(from: unmapped), onFailure: .zeroPage)
    defer { region.close() }
    #expect(area.baseAddress.load(as: UInt8.self) == 0)
    #expect(region.lastFailure?.errno == EFAULT)
  }

  @Test(.enabled(if: Kernel.hasPoison, "needs UFFDIO_POISON (Linux 6.6)"))
  func failedFaultIsPoisonedByDefaultAndTheAccessRaisesSIGBUS() async {
    await #expect(processExitsWith: .signal(SIGBUS)) {
      let uffd = try Userfaultfd(features: [.sigbus])
      let area = try AnonymousMemory(length: PageSize.base)
      let decline: SigbusRegion.Resolver = { _, _ in -1 }
      let region = try SigbusRegion(uffd: uffd, start: area.baseAddress, length: area.length,
                                    resolver: decline, context: nil)
      #expect(region.failureAction == .poison)
      _ = area.baseAddress.load(as: UInt8.self)
      exit(0)  // not reached
    }
  }

  @Test func overlappingRegionsAreRefusedAndTheFirstKeepsWorking() throws {
    let uffd = try Userfaultfd(features: [.sigbus])
    let area = try AnonymousMemory(length: 4 * page)
    let source = try AnonymousMemory(length: 4 * page)
    for index in 0..<4 { fill(source.baseAddress + index * page, seed: UInt64(index + 1)) }
    let first = try SigbusRegion(uffd: uffd, start: area.baseAddress, length: 4 * page,
                                 source: .copy(from: source.baseAddress))
    defer { first.close() }
    let start = Address(area.baseAddress + 2 * page)
    #expect(throws: UserfaultfdError.invalidArgument(.sigbusRegion, .overlapsLiveRegion(start..<(start + 2 * page)))) {
      _ = try SigbusRegion(uffd: uffd, start: area.baseAddress + 2 * page, length: 2 * page, source: .zeroPage)
    }
    // The refused region must not have unregistered the first one's pages.
    #expect(holds(area.baseAddress + 3 * page, seed: 4))
  }

  @Test func moveSourceNeedsMoveAtSetup() throws {
    let uffd = try Userfaultfd(features: [.sigbus])
    let area = try AnonymousMemory(length: page)
    let source = try AnonymousMemory(length: page)
    if Kernel.hasMove {
      let region = try SigbusRegion(uffd: uffd, start: area.baseAddress, length: page,
                                    source: .move(from: source.baseAddress))
      region.close()
    } else {
      #expect(throws: UserfaultfdError.self) {
        try SigbusRegion(uffd: uffd, start: area.baseAddress, length: page, source: .move(from: source.baseAddress))
      }
    }
  }

  /// Issue: closing a region while threads faulted in it killed the process (5 of 5 runs).
  @Test func closingARegionWhileThreadsFaultKillsNobody() async {
    await #expect(processExitsWith: .success) {
      let uffd = try Userfaultfd(features: [.sigbus])
      let pages = 64
      for round in 0..<100 {
        let area = try AnonymousMemory(length: pages * PageSize.base)
        let region = try SigbusRegion(uffd: uffd, start: area.baseAddress, length: area.length, source: .zeroPage)
        let base = Address(area.baseAddress)
        let workers = (0..<4).map { worker in
          TestThread {
            for index in 0..<pages {
              _ = (base.mapped + ((index + worker * 16) % pages) * PageSize.base).load(as: UInt8.self)
            }
          }
        }
        usleep(UInt32(round % 5 * 20))
        region.close()
        for worker in workers where !worker.join(seconds: 10) { exit(3) }
      }
      exit(0)
    }
  }

  /// Issue: a SIGBUS raised outside every region reset the handler to the default and disarmed
  /// every region. With a previous handler installed, the signal goes there and the regions stay
  /// armed.
  @Test func raisedSigbusGoesToThePreviousHandlerAndRegionsStayArmed() async {
    await #expect(processExitsWith: .success) {
      guard cuffd_test_install_noting_sigbus_handler() == 0 else { exit(2) }
      let uffd = try Userfaultfd(features: [.sigbus])
      let area = try AnonymousMemory(length: 2 * PageSize.base)
      let region = try SigbusRegion(uffd: uffd, start: area.baseAddress, length: area.length, source: .zeroPage)
      _ = area.baseAddress.load(as: UInt8.self)
      _ = cuffd_test_raise_sigbus()
      guard cuffd_test_noted_sigbus_count() == 1 else { exit(4) }
      // Still armed: the second page is resolved by the region, not by the noting handler.
      _ = (area.baseAddress + PageSize.base).load(as: UInt8.self)
      guard cuffd_test_noted_sigbus_count() == 1, region.resolvedCount == 2 else { exit(5) }
      region.close()
      exit(0)
    }
  }

  /// With no previous handler, a raised SIGBUS outside every region ends the process, as it would
  /// without this package.
  @Test func raisedSigbusWithNoPreviousHandlerEndsTheProcess() async {
    await #expect(processExitsWith: .signal(SIGBUS)) {
      let uffd = try Userfaultfd(features: [.sigbus])
      let area = try AnonymousMemory(length: PageSize.base)
      let region = try SigbusRegion(uffd: uffd, start: area.baseAddress, length: area.length, source: .zeroPage)
      _ = area.baseAddress.load(as: UInt8.self)
      _ = cuffd_test_raise_sigbus()
      region.close()
      exit(0)  // not reached
    }
  }
}
}
