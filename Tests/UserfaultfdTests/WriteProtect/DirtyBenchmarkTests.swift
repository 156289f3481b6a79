import Foundation
#if canImport(FoundationXML)
import FoundationXML
#endif
import Testing
import Userfaultfd
@testable import UffdTools

/// `uffd bench dirty` from a real (small) run: every method this kernel offers has a row, with
/// the keys the README documents, and no page missed or wrong.
extension KernelTests {
@Suite("uffd bench dirty", .enabled(if: Tracking.has(.writeProtectFaults), Tracking.needs(.writeProtectFaults)))
struct DirtyBenchmarkTests {
  @Test func everyMethodRunsAndVerifies() throws {
    let benchmark = DirtyBenchmark(
      mib: 16, runs: 1, dirtyFraction: 0.1, seconds: 1, pacedIntervalMicroseconds: 20,
      writers: [.saturating], directory: NSTemporaryDirectory())
    let rows = try benchmark.run(filter: nil, progress: { _ in })
    let (dirty, live, _) = DirtyBenchmark.methods()
    #expect(Set(rows.filter { $0.mode == "dirty" }.map(\.method)) == Set(dirty))
    #expect(Set(rows.filter { $0.mode == "live-snapshot" }.map(\.method)) == Set(live))
    for row in rows {
      #expect(row.missedPages == 0 && row.wrongPages == 0, "\(row.mode) \(row.method): missed \(row.missedPages), wrong \(row.wrongPages)")
      #expect(row.writesPerSecond > 0, "\(row.mode) \(row.method): the writer ran")
      if row.method != "none" { #expect(row.faultCostUs > 0, "\(row.mode) \(row.method)") }
    }
    let json = try #require(JSONSerialization.jsonObject(with: Data(JSONOutput.string(["rows": rows]).utf8)) as? [String: [[String: Any]]])
    for row in json["rows"] ?? [] {
      for key in ["method", "mode", "writer", "gib", "dirty_fraction", "writer_throughput_ratio", "stall_p50_us",
                  "stall_p99_us", "stall_p999_us", "fault_cost_us", "cut_pause_ms", "collect_ms",
                  "extra_memory_bytes", "missed_pages", "wrong_pages", "c_fault_cost_us", "fault_cost_p50_us",
                  "c_fault_cost_p50_us"] {
        #expect(row[key] != nil, "missing \(key)")
      }
    }
    // The uffd-wp live rows carry the C reference's fault cost, measured in the same run.
    for row in rows where row.mode == "live-snapshot" && row.method.hasPrefix("uffd-wp") {
      #expect(row.cFaultCostUs > 0, "\(row.method): the C reference ran")
    }
    // --svg: well-formed XML naming every live method.
    let svg = DirtyPicture.svg(rows, runs: 1)
    #expect(XMLParser(data: Data(svg.utf8)).parse(), "the picture parses as XML")
    for method in live where method != "none" { #expect(svg.contains(">\(method)<"), "\(method) in the picture") }
  }
}
}
