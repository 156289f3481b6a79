import CUserfaultfdTestSupport
import Foundation
import PropertyBased
import Synchronization
import Testing
@testable import Userfaultfd

/// Properties checked on random inputs: range validation never traps and accepts exactly the
/// valid ranges (no kernel needed), and the logical move's postcondition (every page accounted
/// for exactly once, the report matching /proc/self/pagemap) over random page patterns, policies,
/// with MOVE on and off.
@Suite("Properties: range validation")
struct RangeValidationProperties {
  @Test func validationAcceptsExactlyTheValidRanges() async {
    let page = UInt(PageSize.base)
    let addresses = Gen.uint64(in: 0...UInt64.max).map { UInt($0) & ~(page - 1) | ($0 % 5 == 0 ? UInt($0 >> 7) % page : 0) }
    let lengths = Gen.int(in: Int.min...Int.max).map { $0 % 3 == 0 ? $0 : ($0 % 64) * Int(page) }
    await propertyCheck(count: 2000, input: addresses, lengths) { address, length in
      let valid = length > 0 && address % page == 0 && UInt(length) % page == 0
        && !address.addingReportingOverflow(UInt(length)).overflow && address != 0
      let pointer = UnsafeRawPointer(bitPattern: address) ?? UnsafeRawPointer(bitPattern: page)!
      do throws(UserfaultfdError) {
        let range = try PageRange(pointer, length: length, role: .range, operation: .copy)
        #expect(valid || address == 0, "accepted \(address) + \(length)")
        #expect(range.length == length)
      } catch {
        guard case .invalidArgument = error else {
          Issue.record("unexpected \(error)")
          return
        }
        #expect(!valid, "refused \(address) + \(length)")
      }
    }
  }

  @Test func pairValidationRefusesEveryOverlap() async {
    let page = PageSize.base
    await propertyCheck(count: 1000, input: Gen.int(in: 0...64), Gen.int(in: 0...64), Gen.int(in: 1...32)) { a, b, pages in
      let base = 1 << 40
      let source = UnsafeRawPointer(bitPattern: base + a * page)!
      let destination = UnsafeRawPointer(bitPattern: base + b * page)!
      let overlaps = abs(a - b) < pages
      do throws(UserfaultfdError) {
        _ = try PageRange.pair(source: source, destination: destination, length: pages * page, operation: .move)
        #expect(!overlaps)
      } catch {
        #expect(overlaps, "\(error)")
      }
    }
  }
}

extension KernelTests {
@Suite("Properties: the logical move accounts for every page")
struct LogicalMoveProperties {
  let page = PageSize.base

  /// How a page starts: data exclusively mapped, a hole, data shared with a forked child, or data
  /// with its destination page already populated.
  enum Start: Int, CaseIterable { case data, hole, shared, destinationPopulated }

  @Test func everyPageEndsInExactlyOnePlaceAndTheReportSaysWhich() async throws {
    let patterns = Gen.int(in: 0...3).array(of: 4...24)
    let cases = Atomic<Int>(0)
    await propertyCheck(count: 60, input: patterns, Gen.int(in: 0...2), Gen.bool, Gen.bool) {
      raw, policyIndex, useMove, precheck in
      cases.wrappingAdd(1, ordering: .relaxed)
      let starts = raw.compactMap(Start.init(rawValue:))
      do {
        try check(starts, policy: [MovePolicy.strict, .allowSourceHoles, .copyFallback][policyIndex],
                  useMove: useMove && Kernel.hasMove, precheck: precheck)
      } catch {
        Issue.record("setup failed: \(error)")
      }
    }
    let checked = cases.load(ordering: .relaxed)
    #expect(checked >= 60, "ran \(checked) cases")
  }

  func check(_ starts: [Start], policy basePolicy: MovePolicy, useMove: Bool, precheck: Bool) throws {
    let count = starts.count
    let uffd = try Userfaultfd()
    let source = try AnonymousMemory(length: count * page)
    let destination = try AnonymousMemory(length: count * page)
    try uffd.register(destination.baseAddress, length: destination.length, mode: .missing)
    let seed = { (index: Int) in UInt64(index + 1) << 8 }
    for (index, start) in starts.enumerated() where start != .hole {
      fill(source.baseAddress + index * page, seed: seed(index))
    }
    var holder: pid_t = 0
    if starts.contains(.shared) {
      holder = cuffd_test_fork_holder()
      try #require(holder > 0)
      // Writing after the fork makes a page exclusive again: only `.shared` pages stay shared.
      for (index, start) in starts.enumerated() where start == .data || start == .destinationPopulated {
        fill(source.baseAddress + index * page, seed: seed(index))
      }
    }
    defer { if holder > 0 { _ = cuffd_test_kill_and_wait(holder) } }
    for (index, start) in starts.enumerated() where start == .destinationPopulated {
      try uffd.zeroPage(destination.baseAddress + index * page, length: page)
    }
    var policy = basePolicy
    policy.recordPages = true
    policy.checkDestinationEmpty = precheck
    var report: MoveReport?
    do {
      report = try PageMover(uffd, usingMove: useMove).move(
        from: source.baseAddress, to: destination.baseAddress, length: count * page, policy: policy)
    } catch .moveStopped(let stopped) {
      report = stopped
    } catch {
      // Refused before anything happened: a populated destination (pre-check), or no MOVE for a
      // zero-copy policy.
      switch error {
      case .invalidArgument, .notSupported: return expectUntouched(starts, source, destination, seed)
      default: Issue.record("unexpected \(error)")
      }
    }
    guard let report else { return }
    var said = [PageOutcome](repeating: .notAttempted, count: count)
    for run in report.runs { for index in run.firstPage..<(run.firstPage + run.count) { said[index] = run.outcome } }
    for (index, start) in starts.enumerated() {
      let target = destination.baseAddress + index * page
      let origin = source.baseAddress + index * page
      let inDestination = isPopulated(target) && holds(target, seed: seed(index))
      let inSource = isPopulated(origin) && holds(origin, seed: seed(index))
      let returned = report.returnedPages?.contents(ofPage: index).map { holds($0.baseAddress!, seed: seed(index)) } ?? false
      let places = [inDestination, inSource, returned].filter { $0 }.count
      let context = "page \(index) (\(start), said \(said[index]), policy \(policy.holes)/\(policy.busyPages), move \(useMove))"
      if start == .hole {
        #expect(places == 0, "\(context): a hole has no data")
        #expect(!isPopulated(origin), "\(context): the source hole stays a hole")
        continue
      }
      #expect(places == 1, "\(context): in exactly one place (dest \(inDestination), source \(inSource), returned \(returned))")
      switch said[index] {
      case .moved, .copied:
        #expect(inDestination && !isPopulated(origin), "\(context)")
      case .notAttempted, .alreadyPresent, .busy:
        #expect(inSource, "\(context)")
      case .returnedToCaller:
        #expect(returned, "\(context)")
      case .hole:
        Issue.record("\(context): data reported as a hole")
      }
    }
  }

  func expectUntouched(
    _ starts: [Start], _ source: AnonymousMemory, _ destination: AnonymousMemory, _ seed: (Int) -> UInt64
  ) {
    for (index, start) in starts.enumerated() where start != .hole {
      #expect(holds(source.baseAddress + index * page, seed: seed(index)), "page \(index) still in the source")
      if start != .destinationPopulated { #expect(!isPopulated(destination.baseAddress + index * page)) }
    }
  }
}
}

/// Batch boundaries under other geometries (arm64 with 16 KiB pages has 32 MiB PMDs): a step
/// never crosses a PMD boundary, never exceeds the batch, and steps tile the range.
@Suite("Geometry")
struct GeometryTests {
  @Test(arguments: [(4096, 2 << 20), (16384, 32 << 20), (65536, 512 << 20)])
  func stepsNeverCrossAHugeBoundaryAndTileTheRange(base: Int, huge: Int) throws {
    let geometry = try #require(PageGeometry(base: base, huge: huge))
    #expect(PageGeometry(base: 3000, huge: huge) == nil)
    #expect(PageGeometry(base: base, huge: base / 2) == nil)
    for startPage in [0, 1, huge / base - 1, huge / base, 3 * huge / base + 7] {
      for maxPages in [1, 16, 512, 4096] {
        let start = UInt(1 << 40) + UInt(startPage * base)
        let length = 3 * huge + 5 * base
        var offset = 0
        while offset < length {
          let address = start + UInt(offset)
          let step = geometry.stepLength(at: address, remaining: length - offset, maxPages: maxPages)
          #expect(step > 0 && step % base == 0 && step <= maxPages * base)
          #expect((address / UInt(huge)) == ((address + UInt(step) - 1) / UInt(huge)), "crosses a PMD")
          offset += step
        }
        #expect(offset == length)
      }
    }
    #expect(PageSize.current.base == PageSize.base && PageSize.current.huge == PageSize.huge)
  }
}
