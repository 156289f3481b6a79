import Synchronization

/// One to-space page's state, one atomic word per page (ART's `PageState`, see the package's
/// compaction article). Claimed by compare-exchange (acquiring), published by a store (releasing).
/// The word 0 is ``Kind/unprocessed``, so zeroed memory is a valid start. Trivial values only: read
/// in SIGBUS handlers.
///
/// ```
/// unprocessed ─GC──────▶ processing ──▶ processed(staging page) ──▶ mapping ──▶ mapped
///      │                      └───────▶ buffered(GC buffer slot) ──▶ mapping ──▶ mapped
///      └─mutator fault─▶ mutatorProcessing ─────────────────────────────────────▶ mapped
/// ```
/// A page `processed` into a recycled from-space page waits for the GC to map it with the rest of
/// its run (one UFFDIO_MOVE); a mutator that faults on it first claims it (`mapping`) and moves
/// (or copies) that one page itself. A page `buffered` in the GC's copy buffer waits for the GC's
/// UFFDIO_COPY of its run the same way; a mutator that faults on it first copies that one page
/// from the buffer. So a mutator never waits on the GC for more than one page's compaction
/// (`processing`) or one ioctl (`mapping`).
struct PageState: RawRepresentable, Equatable {
  /// The state proper (the low byte of the word).
  enum Kind: UInt64 {
    /// Nobody has touched the page yet.
    case unprocessed = 0
    /// The GC thread is compacting the page.
    case processing = 1
    /// A faulting mutator (or the fault-server thread for it) is compacting the page.
    case mutatorProcessing = 2
    /// Compacted into a staging from-space page (the payload); not mapped yet.
    case processed = 3
    /// Claimed for mapping.
    case mapping = 4
    /// In to-space: reads and writes no longer fault.
    case mapped = 5
    /// Compacted into a slot of the GC thread's copy buffer (the payload); not mapped yet.
    case buffered = 6
  }

  /// Bits of the word below the staging page index.
  private static var kindBits: UInt64 { 8 }

  let rawValue: UInt64

  init(rawValue: UInt64) { self.rawValue = rawValue }

  /// A state with no payload.
  @inline(__always)
  init(_ kind: Kind) { rawValue = kind.rawValue }

  /// ``Kind/processed`` into from-space page `staging`.
  @inline(__always)
  static func processed(staging: Int) -> PageState {
    PageState(rawValue: Kind.processed.rawValue | (UInt64(staging) &<< kindBits))
  }

  /// ``Kind/buffered`` in slot `slot` of the GC thread's copy buffer.
  @inline(__always)
  static func buffered(slot: Int) -> PageState {
    PageState(rawValue: Kind.buffered.rawValue | (UInt64(slot) &<< kindBits))
  }

  static var unprocessed: PageState { PageState(.unprocessed) }
  static var processing: PageState { PageState(.processing) }
  static var mutatorProcessing: PageState { PageState(.mutatorProcessing) }
  static var mapping: PageState { PageState(.mapping) }
  static var mapped: PageState { PageState(.mapped) }

  /// The state without its payload (a word no writer produces reads as ``Kind/processing``: busy).
  @inline(__always)
  var kind: Kind { Kind(rawValue: rawValue & ((1 &<< Self.kindBits) &- 1)) ?? .processing }

  /// The staging page of a ``Kind/processed`` state, the buffer slot of a ``Kind/buffered`` one.
  @inline(__always)
  var staging: Int { Int(truncatingIfNeeded: rawValue &>> Self.kindBits) }
}

/// The per-page state words, in raw memory the ``CompactionContext`` points into.
struct PageStates: @unchecked Sendable {  // A pointer into memory CompactionResources owns for the cycle.
  let words: UnsafeMutablePointer<Atomic<UInt64>>

  @inline(__always)
  func load(_ index: Int) -> PageState { PageState(rawValue: words[index].load(ordering: .acquiring)) }

  /// Publishes `state` for page `index` (everything written before is visible to its next reader).
  @inline(__always)
  func publish(_ state: PageState, at index: Int) { words[index].store(state.rawValue, ordering: .releasing) }

  /// Moves page `index` from `expected` to `desired`; false when someone else changed it first.
  @inline(__always)
  func claim(_ index: Int, from expected: PageState, to desired: PageState) -> Bool {
    words[index].compareExchange(expected: expected.rawValue, desired: desired.rawValue, ordering: .acquiring).exchanged
  }
}
