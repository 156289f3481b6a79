/// Builds a realistic fragmented heap from a seed: lists, trees and random graphs of objects from
/// 16 bytes to a few KiB, interleaved with garbage, roots spread over the mutators.
public struct Workload: Sendable, Hashable {
  /// The seed: the same seed builds the same heap.
  public var seed: UInt64
  /// Fraction of allocated bytes that end up unreachable (the design range is 0.5 to 0.7).
  public var garbageFraction: Double
  /// Fraction of the heap's capacity to fill.
  public var fill: Double

  /// Creates a workload description.
  public init(seed: UInt64 = 1, garbageFraction: Double = 0.6, fill: Double = 0.9) {
    self.seed = seed
    self.garbageFraction = garbageFraction
    self.fill = fill
  }

  /// Fills `heap`: its roots afterwards reach only the live structures.
  public func populate(_ heap: Heap) throws(HeapError) {
    guard (0.0..<1.0).contains(garbageFraction) else {
      throw .invalidConfiguration("garbage fraction must be in 0..<1, got \(garbageFraction)")
    }
    guard fill > 0, fill <= 1 else { throw .invalidConfiguration("fill must be in (0, 1], got \(fill)") }
    guard !heap.roots.isEmpty else { throw .invalidConfiguration("at least one mutator is needed to own roots") }
    var random = SplitMix64(seed: seed)
    let budget = Int(Double(heap.capacity) * fill)
    var structures = 0
    while heap.top < budget {
      let live = random.unit() >= garbageFraction
      let built: UInt?
      switch random.next() % 3 {
      case 0: built = list(in: heap, length: 10 + Int(random.next() % 190), random: &random)
      case 1: built = tree(in: heap, depth: 3 + Int(random.next() % 6), random: &random)
      default: built = graph(in: heap, nodes: 10 + Int(random.next() % 90), random: &random)
      }
      guard let root = built else { break }  // Full.
      if live {
        heap.roots[structures % heap.roots.count].append(root)
        structures += 1
      }
    }
    guard structures >= heap.roots.count else {
      throw .invalidConfiguration(
        "the heap is too small for \(heap.roots.count) mutators to own a live structure each"
          + " (\(structures) live structures): raise the heap size or lower the mutator count")
    }
  }

  /// An object size in words: mostly small, sometimes up to a few KiB.
  private func size(_ random: inout SplitMix64, references: Int) -> Int {
    let base = ObjectLayout.headerWords + references
    let roll = random.next() % 100
    let payload: Int
    switch roll {
    case 0..<60: payload = Int(random.next() % 6)        // up to 64 bytes
    case 60..<90: payload = 6 + Int(random.next() % 26)  // up to 256 bytes
    case 90..<98: payload = 32 + Int(random.next() % 96) // up to 1 KiB
    default: payload = 128 + Int(random.next() % 384)    // up to 4 KiB
    }
    return base + payload
  }

  private func allocate(_ heap: Heap, references: Int, random: inout SplitMix64) -> UInt? {
    heap.allocate(words: size(&random, references: references), references: references,
                  payloadSeed: random.next())
  }

  private func list(in heap: Heap, length: Int, random: inout SplitMix64) -> UInt? {
    var head: UInt = 0
    for _ in 0..<length {
      guard let node = allocate(heap, references: 1, random: &random) else { return head == 0 ? nil : head }
      heap.object(at: node).setReference(0, to: head)
      head = node
    }
    return head
  }

  private func tree(in heap: Heap, depth: Int, random: inout SplitMix64) -> UInt? {
    guard let node = allocate(heap, references: 2, random: &random) else { return nil }
    if depth > 1 {
      for child in 0..<2 {
        if let subtree = tree(in: heap, depth: depth - 1, random: &random) {
          heap.object(at: node).setReference(child, to: subtree)
        }
      }
    }
    return node
  }

  private func graph(in heap: Heap, nodes: Int, random: inout SplitMix64) -> UInt? {
    var made: [UInt] = []
    for _ in 0..<nodes {
      guard let node = allocate(heap, references: 1 + Int(random.next() % 4), random: &random) else { break }
      made.append(node)
    }
    guard let first = made.first else { return nil }
    for (index, node) in made.enumerated() {
      let object = heap.object(at: node)
      // A spanning chain keeps every node reachable from the first; the rest point anywhere.
      object.setReference(0, to: index + 1 < made.count ? made[index + 1] : 0)
      for field in 1..<object.referenceCount where random.next() % 4 != 0 {
        object.setReference(field, to: made[Int(random.next() % UInt64(made.count))])
      }
    }
    return first
  }
}

/// A small, fast, seedable generator (SplitMix64).
struct SplitMix64 {
  /// 2^64 / φ: consecutive multiples spread evenly (the generator's step, and Fibonacci hashing's
  /// multiplier for ``WriteLog`` and per-mutator seeds).
  static var golden: UInt64 { 0x9E37_79B9_7F4A_7C15 }

  var state: UInt64
  init(seed: UInt64) { state = seed }
  mutating func next() -> UInt64 {
    state &+= Self.golden
    var z = state
    z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
    z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
    return z ^ (z >> 31)
  }
  /// Uniform in [0, 1).
  mutating func unit() -> Double { Double(next() >> 11) / Double(1 << 53) }
}
