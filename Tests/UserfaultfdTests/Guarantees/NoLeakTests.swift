import CUserfaultfdTestSupport
import Foundation
import Testing
@testable import Userfaultfd

/// Long-running users open and close handles, servers and regions all day: descriptors and memory
/// must stay flat. Each loop warms up first (the runtime's one-time allocations), then runs 10,000
/// cycles and compares (with a small allowance for suites running alongside).
extension KernelTests {
@Suite("Guarantees: nothing leaks")
struct NoLeakTests {
  let page = PageSize.base

  /// Resident memory in bytes (/proc/self/statm).
  func residentBytes() -> Int {
    guard let data = FileHandle(forReadingAtPath: "/proc/self/statm")?.readDataToEndOfFile(),
          let text = String(data: data, encoding: .utf8)
    else { return 0 }
    let fields = text.split(separator: " ")
    return fields.count > 1 ? (Int(fields[1]) ?? 0) * page : 0
  }

  /// Runs `body` 100 times to warm up, then `cycles` times, and expects the descriptor count
  /// unchanged and resident memory within `slack` bytes. Both are the whole process's, and suites
  /// running alongside (a compaction cycle maps tens of MiB; a pager test holds sockets to its
  /// clients and servers) can grow them during one measurement: a growth is measured again, up to
  /// three times in all; a leak grows every time, a neighbour's allocation does not.
  func expectFlat(
    cycles: Int = 10_000, slack: Int = 16 << 20, sourceLocation: SourceLocation = #_sourceLocation,
    _ body: () throws -> Void
  ) rethrows {
    for _ in 0..<100 { try body() }
    var growths: [Int] = []
    var openings: [Int] = []
    for _ in 0..<3 {
      let descriptors = cuffd_test_count_open_descriptors()
      let resident = residentBytes()
      for _ in 0..<cycles { try body() }
      // A leak here would be one or more descriptors per cycle, thousands in all.
      openings.append(Int(cuffd_test_count_open_descriptors() - descriptors))
      growths.append(residentBytes() - resident)
      if openings.last ?? 0 < 16 && growths.last ?? 0 < slack { return }
    }
    if openings.allSatisfy({ $0 >= 16 }) {
      Issue.record("descriptors grew by \(openings) in three measurements of \(cycles) cycles", sourceLocation: sourceLocation)
    }
    if growths.allSatisfy({ $0 >= slack }) {
      Issue.record("resident memory grew by \(growths.map { "\($0 >> 10) KiB" }) in three measurements of \(cycles) cycles",
                   sourceLocation: sourceLocation)
    }
  }

  @Test func handlesOpenAndCloseWithoutLeaking() throws {
    try expectFlat {
      let uffd = try Userfaultfd()
      uffd.close()
      _ = try Userfaultfd(options: .nonBlocking)  // dropped without close
    }
  }

  /// Issue: 2,000 start / stop / drop cycles left 6,000 descriptors open and +13 MiB resident.
  @Test func serversStartStopAndDropWithoutLeaking() throws {
    let area = try AnonymousMemory(length: page)
    try expectFlat {
      let uffd = try Userfaultfd(options: .nonBlocking)
      let server = try FaultServer(uffd: uffd) { _ in .zeroPage }
      try server.register(area.baseAddress, length: page)
      server.stop()
      // And one dropped without stop().
      _ = try FaultServer(uffd: uffd) { _ in .zeroPage }
    }
  }

  @Test(.enabled(if: Kernel.hasSigbus, "needs UFFD_FEATURE_SIGBUS (Linux 4.14)"))
  func sigbusRegionsOpenAndCloseWithoutLeaking() throws {
    let uffd = try Userfaultfd(features: [.sigbus])
    let area = try AnonymousMemory(length: 4 * page)
    let source = try AnonymousMemory(length: 4 * page)
    try expectFlat {
      let region = try SigbusRegion(uffd: uffd, start: area.baseAddress, length: area.length,
                                    source: .copy(from: source.baseAddress))
      _ = area.baseAddress.load(as: UInt8.self)
      region.close()
      try area.advise(.dontNeed)
      // And one dropped without close().
      _ = try SigbusRegion(uffd: uffd, start: area.baseAddress, length: area.length, source: .zeroPage)
    }
  }

  @Test func logicalMovesWithFallbackDoNotLeak() throws {
    let uffd = try Userfaultfd()
    let source = try AnonymousMemory(length: 4 * page)
    let destination = try AnonymousMemory(length: 4 * page)
    try expectFlat(cycles: 2_000) {
      try uffd.register(destination.baseAddress, length: destination.length, mode: .missing)
      for index in 0..<4 { fill(source.baseAddress + index * page, seed: UInt64(index)) }
      _ = try PageMover(uffd, usingMove: false).move(
        from: source.baseAddress, to: destination.baseAddress, length: 4 * page, policy: .copyFallback)
      try uffd.unregister(destination.baseAddress, length: destination.length)
      try destination.advise(.dontNeed)
    }
  }
}
}
