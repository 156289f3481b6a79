import ArgumentParser
import CompactingHeap
import Foundation
#if canImport(FoundationXML)
import FoundationXML
#endif
import Userfaultfd
import Testing
@testable import UffdTools

/// `uffd compact`'s JSON report carries the keys the README documents, from a real (small) run.
extension KernelTests {
@Suite("uffd compact report", .enabled(if: Kernel.hasMove, "needs UFFDIO_MOVE (Linux 6.8+)"))
struct CompactCommandTests {
  @Test func reportHasTheDocumentedKeys() throws {
    var results: [MappingStrategy: [CompactionResult]] = [:]
    for strategy in MappingStrategy.allCases {
      let heap = try Heap(capacity: 4 << 20, mutators: 2)
      try Workload(seed: 3).populate(heap)
      results[strategy] = [try Compactor(heap: heap, configuration: .init(strategy: strategy)).run()]
    }
    let report = CompactReport(
      heapMib: 4, mutators: 2, idleMutators: false, blockPages: 16, seed: 3, faultMode: .sigbus,
      memcpyGBps: 10, results: results)
    let json = try #require(JSONSerialization.jsonObject(with: Data(JSONOutput.string(report).utf8)) as? [String: Any])
    for key in ["verified", "pause_ms", "peak_rss_mib", "live_mib", "memcpy_gbps", "move_vs_copy_ratio", "modes"] {
      #expect(json[key] != nil, "missing \(key)")
    }
    #expect(json["verified"] as? Bool == true)
    let modes = try #require(json["modes"] as? [String: [String: Any]])
    for mode in ["move", "copy"] {
      for key in ["compaction_thread_ms", "compaction_gbps", "pause_ms", "peak_rss_mib", "pages_by_gc", "pages_by_mutators",
                  "compaction_cpu_gbps", "memcpy_fraction_cpu", "mutator_stall_us", "mutator_writes_per_ms",
                  "mutator_stall_counts_pow2_us", "mapping_timeline", "released_pages", "intruded_pages"] {
        #expect(modes[mode]?[key] != nil, "missing modes.\(mode).\(key)")
      }
    }
    #expect(report.moveVsCopyRatio != nil, "both strategies ran: the table has the ratio row")
    // `auto`: the same keys as the others, plus its choices, their reasons and the measured costs.
    let auto = try #require(modes["auto"], "modes.auto")
    for key in ["compaction_thread_ms", "mutator_stall_us", "verified", "strategy_chosen", "strategy_reason",
                "strategy_cycles", "strategy_costs"] {
      #expect(auto[key] != nil, "missing modes.auto.\(key)")
    }
    #expect(modes["move"]?["strategy_chosen"] == nil, "only auto has the choice keys")
    let chosen = try #require(auto["strategy_chosen"] as? [String: Int])
    #expect(chosen.values.reduce(0, +) == 1, "one cycle, one choice: \(chosen)")
    let costs = try #require(auto["strategy_costs"] as? [String: Any])
    #expect(costs["calibration_move_us_per_page"] != nil && costs["calibration_ms"] != nil)
    #expect(json["auto_vs_best_gc_ratio"] != nil)
    #expect(json["page_routine_gbps"] != nil && json["page_routine_memcpy_fraction"] != nil)
    for key in ["mutator_wait_us", "waits_on_processing", "waits_on_mapping", "mutator_stall_overlapping_gc_ioctl_us",
                "faults_overlapping_gc_ioctl"] {
      #expect(modes["move"]?[key] != nil, "missing modes.move.\(key)")
    }
    #expect(report.table.contains("auto, cycle 1:"))
    #expect(CompactMode.all.strategies == [.move, .copy, .copySinglePage, .automatic], "--mode all runs auto beside the others")
    #expect(CompactJob().mode == .auto, "the automatic choice is the default")
    // Every page is in the timeline once, by the GC or a mutator; every fault in the stall counts.
    for (strategy, runs) in results {
      let result = try #require(runs.first)
      let timeline = result.timeline
      #expect(timeline.pagesByGC.reduce(0, +) + timeline.pagesByMutators.reduce(0, +)
                == (result.liveBytes + PageSize.base - 1) / PageSize.base, "\(strategy)")
      #expect(timeline.pagesByGC.reduce(0, +) <= result.pagesByGC, "the GC maps at most what it compacted: \(strategy)")
      #expect(result.mutatorStall.countsByPowerOfTwoMicroseconds.reduce(0, +) == result.mutatorFaults, "\(strategy)")
    }
    // --svg: well-formed XML, one row per strategy.
    let svg = CompactPicture.svg(report)
    let parser = XMLParser(data: Data(svg.utf8))
    #expect(parser.parse(), "\(parser.parserError.map { "\($0)" } ?? "")")
    for name in ["move:", "copy:", "copy-1:", "auto:"] { #expect(svg.contains(name)) }
  }

  /// `uffd compact --variants` runs every variant on the same heap and verifies each; the first
  /// row is batched COPY, the reference of every ratio.
  @Test func variantsReportOneVerifiedRowPerVariant() throws {
    var base = CompactJob()
    base.heapMib = 4
    base.runs = 1
    let report = try CompactVariantsJob(base: base).run(progress: Progress("test"))
    #expect(report.rows.map(\.name) == CompactVariant.all.map(\.name))
    #expect(report.rows.allSatisfy { $0.verified })
    #expect(report.rows.first?.vsCopy == 1)
    let json = try #require(JSONSerialization.jsonObject(with: Data(JSONOutput.string(report).utf8)) as? [String: Any])
    let rows = try #require(json["rows"] as? [[String: Any]])
    for key in ["name", "vs_copy", "vs_copy_cpu", "pause_ms", "mutator_stall_us", "mutator_writes_per_ms", "peak_rss_ratio",
                "strategy", "gc_run_pages", "minimum_move_run", "mutator_mapping", "register_before_remap"] {
      #expect(rows.first?[key] != nil, "missing rows[].\(key)")
    }
  }
}
}
