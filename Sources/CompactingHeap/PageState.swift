/// One to-space page's state, one atomic word per page (ART's state machine,
/// the README). Claimed by compare-exchange (acquiring), published by a store
/// (releasing). 0 is `unprocessed`, so zeroed memory is a valid start. Constants are computed
/// properties, not lazily initialized globals: they are read in SIGBUS handlers.
///
/// ```
/// unprocessed ─GC──────▶ processing ──▶ processed(staging page) ──▶ mapping ──▶ mapped
///      │                      └─────(buffer + COPY)────────────────────────────▶ mapped
///      └─mutator fault─▶ mutatorProcessing ─────────────────────────────────────▶ mapped
/// ```
/// A page `processed` into a recycled from-space page waits for the GC to map it with the rest of
/// its run (one UFFDIO_MOVE); a mutator that faults on it first claims it (`mapping`) and moves
/// that one page itself.
enum PageState {
  static var unprocessed: UInt64 { 0 }
  /// The GC thread is compacting the page.
  static var processing: UInt64 { 1 }
  /// A faulting mutator (or the fault-server thread for it) is compacting the page.
  static var mutatorProcessing: UInt64 { 2 }
  /// Compacted into the from-space page in the upper bits; not mapped yet.
  static var processed: UInt64 { 3 }
  /// Claimed for mapping.
  static var mapping: UInt64 { 4 }
  /// In to-space: reads and writes no longer fault.
  static var mapped: UInt64 { 5 }

  /// `processed` with the staging from-space page index.
  @inline(__always)
  static func processed(staging page: Int) -> UInt64 { processed | (UInt64(page) &<< 8) }
  /// The state without its payload.
  @inline(__always)
  static func kind(_ state: UInt64) -> UInt64 { state & 0xFF }
  /// The staging page of a `processed` state.
  @inline(__always)
  static func staging(_ state: UInt64) -> Int { Int(truncatingIfNeeded: state &>> 8) }
}
