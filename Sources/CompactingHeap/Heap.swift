import Glibc
import Userfaultfd

/// A private anonymous heap range holding self-describing objects (``ObjectLayout``), with bump
/// allocation and explicit per-mutator roots. 2 MiB-aligned (so the compaction pause's mremap moves
/// whole page tables) and `MADV_DONTFORK` (a fork elsewhere in the process must not make its pages
/// busy for UFFDIO_MOVE).
public final class Heap: @unchecked Sendable {
  // @unchecked: the mutable state (`top`, `roots`, `nextID`, the objects) is changed only by the
  // thread that owns the heap while no cycle runs, or, during a cycle, by the Compactor's phases
  // in order; mutator threads touch only their own root set and the objects reachable from it.
  /// The mapping.
  public let memory: AnonymousMemory
  /// First byte of the heap.
  public var start: UInt { UInt(bitPattern: memory.baseAddress) }
  /// Capacity in bytes.
  public var capacity: Int { memory.length }
  /// The allocation frontier: bytes in use from `start`.
  public internal(set) var top: Int = 0
  /// Per-mutator roots: addresses of objects (0 = empty slot). Set by the workload or
  /// ``addRoot(_:forMutator:)`` and rewritten by compaction. Checked again before every compaction
  /// (``validateRoots()``): a root that is not the start of an object is an error, never a crash.
  public internal(set) var roots: [[UInt]]
  /// Next id to hand out.
  var nextID: UInt64 = 1

  /// Whether the heap asked for transparent huge pages (``init(capacity:mutators:hugePages:)``).
  public let hugePages: Bool

  /// Maps a heap of `capacity` bytes (rounded up to 2 MiB) with `mutators` empty root sets.
  ///
  /// With `hugePages`, the heap asks for transparent huge pages (`MADV_HUGEPAGE`; a no-op where
  /// the system's THP setting is `never`). What it buys: from-space is then given back in 2 MiB
  /// folios instead of 4 KiB pages one by one, each with its memory-cgroup uncharge and LRU
  /// removal, which was 63% of the GC thread's CPU time under COPY (perf, 256 MiB); with huge
  /// pages that CPU time fell by about 40%. Compaction still maps to-space in 4 KiB pages, and a
  /// MOVE out of a huge page splits it first. Off by default: not yet verified on every kernel CI
  /// boots.
  public init(capacity: Int, mutators: Int, hugePages: Bool = false) throws(HeapError) {
    self.hugePages = hugePages
    guard capacity > 0 else { throw .invalidConfiguration("heap capacity must be positive") }
    let limit = Self.maxCapacity
    guard capacity <= limit else {
      throw .invalidConfiguration(
        "heap capacity \(capacity) bytes is more than this machine can hold (at most \(limit >> 20) MiB:"
          + " half of its physical memory)")
    }
    guard (0...Self.maxMutators).contains(mutators) else {
      throw .invalidConfiguration("mutator count must be 0 to \(Self.maxMutators), got \(mutators)")
    }
    let rounded = (capacity + PageSize.huge - 1) / PageSize.huge * PageSize.huge
    do {
      memory = try AnonymousMemory(length: rounded, alignment: PageSize.huge)
      try memory.advise(.dontFork)
    } catch {
      throw .system(error)
    }
    // Best effort: where THP is off the heap simply stays in 4 KiB pages.
    if hugePages { _ = madvise(memory.baseAddress, rounded, MADV_HUGEPAGE) }
    roots = Array(repeating: [], count: mutators)
  }

  /// The largest heap: half of the machine's physical memory (compaction needs room for the
  /// heap and its from-space side by side).
  public static var maxCapacity: Int {
    let pages = sysconf(Int32(_SC_PHYS_PAGES))
    let size = sysconf(Int32(_SC_PAGESIZE))
    guard pages > 0, size > 0 else { return 1 << 30 }
    let (bytes, overflow) = pages.multipliedReportingOverflow(by: size)
    return overflow ? Int.max / 4 : bytes / 2
  }

  /// The most mutators (threads with root sets) a heap can have.
  public static let maxMutators = 1024

  /// The heap's words.
  @inline(__always)
  var words: UnsafeMutablePointer<UInt64> {
    memory.baseAddress.assumingMemoryBound(to: UInt64.self)
  }

  /// The object at `address` (inside the heap).
  @inline(__always)
  func object(at address: UInt) -> ObjectView {
    ObjectView(words: words + Int(address - start) / ObjectLayout.wordSize)
  }

  /// Allocates an object of `words` words with `references` null reference fields and the payload
  /// filled from `payloadSeed`. Returns its address, or nil when the heap is full.
  func allocate(words count: Int, references: Int, payloadSeed: UInt64) -> UInt? {
    guard count >= ObjectLayout.headerWords + references, references <= ObjectLayout.maxReferences,
          top + count * ObjectLayout.wordSize <= capacity
    else { return nil }
    let address = start + UInt(top)
    let object = self.object(at: address)
    object.words[0] = ObjectLayout.header(words: count, references: references)
    object.words[1] = nextID
    nextID += 1
    for index in 0..<references { object.setReference(index, to: 0) }
    var state = payloadSeed
    for index in object.payloadStart..<count {
      state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
      object.words[index] = state
    }
    top += count * ObjectLayout.wordSize
    return address
  }

  /// Adds `address` to mutator `mutator`'s roots.
  ///
  /// - Throws: ``HeapError/invalidConfiguration(_:)`` when there is no such mutator or `address` is
  ///   neither 0 nor the start of an object in the heap; the roots are unchanged then.
  public func addRoot(_ address: UInt, forMutator mutator: Int) throws(HeapError) {
    guard roots.indices.contains(mutator) else {
      throw .invalidConfiguration("mutator \(mutator) does not exist (the heap has \(roots.count))")
    }
    let starts = try objectStarts()
    guard address == 0 || isObjectStart(address, in: starts) else {
      throw .invalidConfiguration(
        "root 0x\(String(address, radix: 16)) is not the start of an object in the heap"
          + " (0x\(String(start, radix: 16)) + \(top) bytes in use)")
    }
    roots[mutator].append(address)
  }

  /// Throws ``HeapError/invalidConfiguration(_:)`` unless every root is 0 or the start of an
  /// object below ``top``. One pass over the heap's headers.
  public func validateRoots() throws(HeapError) {
    let starts = try objectStarts()
    for (mutator, set) in roots.enumerated() {
      for root in set where root != 0 && !isObjectStart(root, in: starts) {
        throw .invalidConfiguration(
          "mutator \(mutator)'s root 0x\(String(root, radix: 16)) is not the start of an object in the heap"
            + " (0x\(String(start, radix: 16)) + \(top) bytes in use)")
      }
    }
  }

  /// One bit per word below ``top``: set where an object starts. Walks the headers once.
  private func objectStarts() throws(HeapError) -> [UInt64] {
    let words = top / ObjectLayout.wordSize
    var starts = [UInt64](repeating: 0, count: words / 64 + 1)
    var offset = 0
    while offset < top {
      let size = object(at: start + UInt(offset)).sizeInWords
      guard size > 0 else { throw .invalidConfiguration("heap object at offset \(offset) has size 0") }
      let word = offset / ObjectLayout.wordSize
      starts[word / 64] |= 1 << UInt64(word % 64)
      offset += size * ObjectLayout.wordSize
    }
    return starts
  }

  private func isObjectStart(_ address: UInt, in starts: [UInt64]) -> Bool {
    guard address >= start, address < start + UInt(top), (address - start) % UInt(ObjectLayout.wordSize) == 0 else {
      return false
    }
    let word = Int(address - start) / ObjectLayout.wordSize
    return starts[word / 64] & (1 << UInt64(word % 64)) != 0
  }

  /// Calls `body` with each object's address, in address order, from `start` to `top`.
  func forEachObject(_ body: (UInt) -> Void) {
    var offset = 0
    while offset < top {
      let address = start + UInt(offset)
      body(address)
      offset += object(at: address).sizeInWords * ObjectLayout.wordSize
    }
  }
}

/// What can go wrong with a heap or a compaction, in plain words.
public enum HeapError: Error, CustomStringConvertible, Sendable {
  /// The requested configuration cannot work; the text says why and what to change.
  case invalidConfiguration(String)
  /// A system call failed.
  case system(UserfaultfdError)
  /// Verification failed; the text says what differed.
  case verificationFailed(String)
  /// Compaction could not map some pages (the kernel refused); the text lists the errnos.
  case compactionFailed(String)

  public var description: String {
    switch self {
    case .invalidConfiguration(let reason): return "invalid heap configuration: \(reason)"
    case .system(let error): return "heap: \(error)"
    case .verificationFailed(let reason): return "heap verification failed: \(reason)"
    case .compactionFailed(let reason): return "compaction failed: \(reason)"
    }
  }
}
