import Testing
@testable import CompactingHeap
import Userfaultfd

/// The heap model, the workload, marking, post-compaction addresses and the stop-the-world
/// reference compaction that the concurrent one is checked against.
@Suite("Compacting heap: model and reference compaction")
struct ReferenceCompactionTests {
  @Test(arguments: [1, 2, 3, 42] as [UInt64])
  func referenceCompactionPreservesTheGraph(seed: UInt64) throws {
    let heap = try Heap(capacity: 4 << 20, mutators: 2)
    try Workload(seed: seed, garbageFraction: 0.6).populate(heap)
    let before = heap.top
    let map = LiveMap(marking: heap)
    let expected = Verification.hash(heap, map: map)
    let garbage = 1 - Double(map.liveBytes) / Double(before)
    #expect(garbage > 0.4 && garbage < 0.8, "garbage fraction \(garbage)")
    #expect(expected.objects == map.liveObjects)
    _ = ReferenceCompaction.compactInPlace(heap)
    #expect(heap.top == map.liveBytes)
    let after = try Verification.check(heap, expected: expected)
    #expect(after == expected)
  }

  @Test func newAddressesIncreaseAndAreDense() throws {
    let heap = try Heap(capacity: 2 << 20, mutators: 1)
    try Workload(seed: 7).populate(heap)
    let map = LiveMap(marking: heap)
    var next = heap.start
    heap.forEachObject { address in
      guard map.isLive(address) else { return }
      #expect(map.newAddress(address) == next)
      next += UInt(heap.object(at: address).sizeInWords * ObjectLayout.wordSize)
    }
    #expect(next == heap.start + UInt(map.liveBytes))
  }

  @Test func sameSeedSameHeap() throws {
    let first = try Heap(capacity: 2 << 20, mutators: 2)
    let second = try Heap(capacity: 2 << 20, mutators: 2)
    try Workload(seed: 9).populate(first)
    try Workload(seed: 9).populate(second)
    #expect(first.top == second.top)
    #expect(Verification.hash(first, map: LiveMap(marking: first)) == Verification.hash(second, map: LiveMap(marking: second)))
  }

  @Test func badConfigurationIsAClearError() throws {
    #expect(throws: HeapError.self) { try Heap(capacity: 0, mutators: 1) }
    let tiny = try Heap(capacity: 1, mutators: 64)  // One 2 MiB unit, but 64 owners.
    #expect(throws: HeapError.self) { try Workload(seed: 1, garbageFraction: 0.6, fill: 0.001).populate(tiny) }
    let heap = try Heap(capacity: 1 << 20, mutators: 1)
    #expect(throws: HeapError.self) { try Workload(garbageFraction: 1.5).populate(heap) }
    let noMutators = try Heap(capacity: 1 << 20, mutators: 0)
    #expect(throws: HeapError.self) { try Workload().populate(noMutators) }
  }
}

/// The page-compaction routine alone (no userfaultfd): every page it builds from an untouched
/// from-space equals the stop-the-world reference image.
@Suite("Compacting heap: page compaction")
struct PageCompactionTests {
  @Test(arguments: [UInt64(1), 4, 8])
  func everyPageEqualsTheReference(seed: UInt64) throws {
    let heap = try Heap(capacity: 4 << 20, mutators: 2)
    try Workload(seed: seed).populate(heap)
    let map = LiveMap(marking: heap)
    let plan = CompactionPlan(heap: heap, map: map)
    let reference = ReferenceCompaction.image(of: heap, map: map).words
    let perPage = PageSize.base / ObjectLayout.wordSize
    let buffer = UnsafeMutablePointer<UInt64>.allocate(capacity: perPage)
    defer { buffer.deallocate() }
    for page in 0..<plan.layout.pageCount {
      buffer.update(repeating: 0xDEAD, count: perPage)
      plan.layout.compactPage(page, fromSpace: heap.words, into: buffer)
      for word in 0..<perPage {
        let expected = page * perPage + word < reference.count ? reference[page * perPage + word] : 0
        try #require(buffer[word] == expected, "page \(page) word \(word)")
      }
    }
  }

  @Test func counterNamesMatchTheirSlots() {
    #expect(CycleCounters.nameCount == CycleCounters.Name.allCases.count)
  }

  @Test func pageStatesRoundTripTheStagingPage() {
    let state = PageState.processed(staging: 123_456)
    #expect(state.kind == .processed)
    #expect(state.staging == 123_456)
    #expect(PageState.unprocessed.rawValue == 0, "zeroed memory is a valid start")
    #expect(PageState(rawValue: 0xFF).kind == .processing, "a word no writer produces reads as busy")
    for kind in [PageState.Kind.unprocessed, .processing, .mutatorProcessing, .mapping, .mapped, .buffered] {
      #expect(PageState(kind).kind == kind)
      #expect(PageState(kind).staging == 0)
    }
    let buffered = PageState.buffered(slot: 63)
    #expect(buffered.kind == .buffered && buffered.staging == 63)
    #expect(buffered != PageState.processed(staging: 63), "a buffer slot is not a staging page")
  }

  /// `uffd compact`'s measurement of the routine alone reads the heap, never changes it, and
  /// counts the live bytes it compacted.
  @Test func theRoutineBenchmarkLeavesTheHeapAsItWas() throws {
    let heap = try Heap(capacity: 4 << 20, mutators: 2)
    try Workload(seed: 5).populate(heap)
    let map = LiveMap(marking: heap)
    let before = Verification.hash(heap, map: map)
    let measured = try PageRoutineBenchmark.measure(heap, repetitions: 2)
    #expect(measured.liveBytes == map.liveBytes)
    #expect(measured.nanoseconds > 0)
    #expect(Verification.hash(heap, map: LiveMap(marking: heap)) == before)
  }
}
