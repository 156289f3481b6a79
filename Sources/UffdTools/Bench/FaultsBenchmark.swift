import CUserfaultfdReference
import Foundation
import Histogram
import Userfaultfd

/// `uffd bench faults`: missing-fault round-trip latency (touch a missing page until the access
/// returns) for each way of serving faults, Swift library beside a C reference, in one run.
package struct FaultsBenchmark {
  /// One benchmark row.
  package struct Row: Encodable, Sendable {
    package var mode: String
    package var resolve: String
    package var swiftP50Us: Double
    package var swiftP99Us: Double
    package var swiftP999Us: Double
    package var cP50Us: Double
    package var cP99Us: Double
    package var ratioP50: Double
  }

  /// How faults are served.
  enum Mode: String, CaseIterable {
    case thread, busyPoll = "busy-poll", sigbus
    var reference: Int32 {
      switch self {
      case .thread: Int32(CUFFD_REF_THREAD.rawValue)
      case .busyPoll: Int32(CUFFD_REF_BUSY_POLL.rawValue)
      case .sigbus: Int32(CUFFD_REF_SIGBUS.rawValue)
      }
    }
  }

  let reps: Int
  /// Pages touched per repetition.
  let pages = 2000
  let page = PageSize.base

  /// A benchmark of `reps` repetitions (of 2000 faults) per row.
  package init(reps: Int) { self.reps = reps }

  /// The rows as the tool prints them.
  package static func table(_ rows: [Row], reps: Int) -> String {
    "Missing-fault round trip, µs (HdrHistogram over \(reps) x 2000 faults; Swift library vs C reference)\n"
      + formatTable(
        ["mode", "resolve", "swift p50", "swift p99", "swift p99.9", "c p50", "c p99", "swift/c p50"],
        rows.map {
          [$0.mode, $0.resolve, String(format: "%.1f", $0.swiftP50Us), String(format: "%.1f", $0.swiftP99Us),
           String(format: "%.1f", $0.swiftP999Us), String(format: "%.1f", $0.cP50Us),
           String(format: "%.1f", $0.cP99Us), String(format: "%.3f", $0.ratioP50)]
        })
  }

  package func run(filter: String?, progress: (String) -> Void) throws -> [Row] {
    var rows: [Row] = []
    // MOVE rows only where UFFDIO_MOVE is usable (decided once, at setup).
    let resolutions = PageMover.moveVerdict.isUsable ? [false, true] : [false]
    let combinations = Mode.allCases.flatMap { mode in resolutions.map { (mode, $0) } }
      .filter { filter == nil || "\($0.0.rawValue)/\($0.1 ? "move" : "copy")".contains(filter ?? "") }
    for (index, (mode, useMove)) in combinations.enumerated() {
      let name = "\(mode.rawValue)/\(useMove ? "move" : "copy")"
      progress("[\(index + 1)/\(combinations.count)] \(name)")
      let uffd = mode == .sigbus
        ? try Userfaultfd(features: [.sigbus]) : try Userfaultfd(options: .nonBlocking)
      var swift = Histogram<UInt64>(highestTrackableValue: 60_000_000_000, numberOfSignificantValueDigits: .three)
      var c = swift
      for rep in 0..<reps {
        if rep % 2 == 0 {
          try measureSwift(mode, useMove, uffd, into: &swift)
          try measureC(mode, useMove, uffd, into: &c)
        } else {
          try measureC(mode, useMove, uffd, into: &c)
          try measureSwift(mode, useMove, uffd, into: &swift)
        }
      }
      func us(_ h: Histogram<UInt64>, _ p: Double) -> Double { Double(h.valueAtPercentile(p)) / 1000 }
      rows.append(Row(
        mode: mode.rawValue, resolve: useMove ? "move" : "copy",
        swiftP50Us: us(swift, 50), swiftP99Us: us(swift, 99), swiftP999Us: us(swift, 99.9),
        cP50Us: us(c, 50), cP99Us: us(c, 99),
        ratioP50: us(c, 50) > 0 ? us(swift, 50) / us(c, 50) : 0))
    }
    return rows
  }

  /// Fresh source (filled) and region (missing) for one repetition.
  func memory() throws -> (source: AnonymousMemory, region: AnonymousMemory) {
    let source = try AnonymousMemory(length: pages * page, populate: true)
    let region = try AnonymousMemory(length: pages * page)
    try source.advise(.noHugePage)
    try region.advise(.noHugePage)
    for index in 0..<pages {
      (source.baseAddress + index * page).storeBytes(of: UInt64(index), as: UInt64.self)
    }
    return (source, region)
  }

  /// The Swift library serves the faults; the mutator loop is Swift too.
  func measureSwift(_ mode: Mode, _ useMove: Bool, _ uffd: Userfaultfd, into histogram: inout Histogram<UInt64>) throws {
    let (source, region) = try memory()
    let sourceBase = Address(source.baseAddress)
    let regionBase = Address(region.baseAddress)
    switch mode {
    case .thread, .busyPoll:
      let server = try FaultServer(uffd: uffd, configuration: .init(busyPoll: mode == .busyPoll)) { fault in
        let from = sourceBase + (fault.pageAddress - regionBase)
        return useMove ? .move(from: from) : .copy(from: from)
      }
      defer { server.stop() }
      try server.register(region.baseAddress, length: region.length)
      try touchAll(region, into: &histogram)
    case .sigbus:
      let sigbus = try SigbusRegion(
        uffd: uffd, start: region.baseAddress, length: region.length,
        source: useMove ? .move(from: source.baseAddress) : .copy(from: source.baseAddress))
      defer { sigbus.close() }
      try touchAll(region, into: &histogram)
    }
  }

  /// The mutator: one read per page, each timed from before the access until it returns.
  func touchAll(_ region: AnonymousMemory, into histogram: inout Histogram<UInt64>) throws {
    var sink: UInt64 = 0
    for index in 0..<pages {
      let start = cuffd_ref_now_ns()
      sink &+= (region.baseAddress + index * page).load(as: UInt64.self)
      _ = histogram.record(UInt64(max(0, cuffd_ref_now_ns() - start)))
    }
    guard sink == UInt64(pages * (pages - 1) / 2) else {
      throw ToolError("fault bench: pages arrived with the wrong content (checksum \(sink))")
    }
  }

  /// The C reference serves the faults and runs the mutator.
  func measureC(_ mode: Mode, _ useMove: Bool, _ uffd: Userfaultfd, into histogram: inout Histogram<UInt64>) throws {
    let (source, region) = try memory()
    try uffd.register(region.baseAddress, length: region.length, mode: .missing)
    defer { try? uffd.unregister(region.baseAddress, length: region.length) }
    var latencies = [Int64](repeating: 0, count: pages)
    let result = latencies.withUnsafeMutableBufferPointer { buffer in
      cuffd_ref_fault_latency(
        mode.reference, useMove ? 1 : 0, uffd.fileDescriptor.rawValue,
        region.baseAddress.assumingMemoryBound(to: CChar.self),
        source.baseAddress.assumingMemoryBound(to: CChar.self), pages, buffer.baseAddress)
    }
    guard result == 0 else { throw ToolError("C fault reference failed: errno \(-result)") }
    for latency in latencies { _ = histogram.record(UInt64(max(0, latency))) }
  }
}
