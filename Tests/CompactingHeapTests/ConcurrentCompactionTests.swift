import Testing
@testable import CompactingHeap
import Userfaultfd

/// Whether userfaultfd with UFFDIO_MOVE can be used here (root or vm.unprivileged_userfaultfd=1).
private let canCompact: Bool = (try? Userfaultfd.probeSupportedFeatures().features.contains(.move)) ?? false

/// Full concurrent cycles on small heaps: mutators write throughout; the result must equal a
/// stop-the-world reference compaction byte for byte, with every mutator write present.
@Suite("Compacting heap: concurrent cycles", .serialized,
       .enabled(if: canCompact, "needs userfaultfd with UFFDIO_MOVE (Linux 6.8+) and permission to use it"))
struct ConcurrentCompactionTests {
  @Test(arguments: [MappingStrategy.move, .copy], [UInt64(1), 2, 3])
  func cycleVerifies(strategy: MappingStrategy, seed: UInt64) throws {
    let heap = try Heap(capacity: 8 << 20, mutators: 2)
    try Workload(seed: seed).populate(heap)
    let result = try Compactor(heap: heap, configuration: .init(strategy: strategy, seed: seed)).run()
    #expect(result.verified)
    #expect(result.liveBytes == heap.top)
    #expect(result.pagesByGC + result.pagesByMutators == (result.liveBytes + PageSize.base - 1) / PageSize.base)
    #expect(result.refusals.isEmpty, "\(result.refusals)")
    if strategy == .move { #expect(result.moveIoctls > 0) } else { #expect(result.moveIoctls == 0) }
    // The compacted heap is a normal heap again: a second stop-the-world check of its graph.
    let map = LiveMap(marking: heap)
    #expect(map.liveBytes == heap.top, "nothing became garbage")
  }

  @Test func sigbusFaultModeIsAClearErrorForNow() throws {
    let heap = try Heap(capacity: 2 << 20, mutators: 1)
    #expect(throws: HeapError.self) { try Compactor(heap: heap, configuration: .init(faultMode: .sigbus)) }
  }
}
