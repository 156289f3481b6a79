/// The layout of a heap object: self-describing, in 8-byte words.
///
/// ```
/// word 0: size in words (u32, header included) | reference count (u16) << 32
/// word 1: id (u64, unique, never 0)
/// words 2 ..< 2 + references: reference fields, absolute addresses (0 = null)
/// the rest: payload
/// ```
/// References are absolute addresses: the heap's mapping never moves (compaction empties it in
/// place with mremap and refills it), so they stay meaningful across the cycle. The constants are
/// computed properties: the compaction routine reads them in SIGBUS handlers, where a lazily
/// initialized global must not run.
public enum ObjectLayout {
  /// Bytes per word.
  public static var wordSize: Int { 8 }
  /// Words in the header.
  public static var headerWords: Int { 2 }
  /// Largest number of reference fields.
  public static var maxReferences: Int { Int(ObjectHeader.referenceMask) }
  /// `offset >> wordShift` is a byte offset's word index.
  static var wordShift: Int { wordSize.trailingZeroBitCount }

  /// Packs the first header word.
  @inline(__always)
  static func header(words: Int, references: Int) -> UInt64 {
    UInt64(words) | (UInt64(references) << ObjectHeader.referenceShift)
  }
}

/// The first header word, decoded: the one place that knows its bit layout.
struct ObjectHeader {
  static var sizeMask: UInt64 { 0xFFFF_FFFF }
  static var referenceShift: UInt64 { 32 }
  static var referenceMask: UInt64 { 0xFFFF }

  /// Total size in words, header included.
  let sizeInWords: Int
  /// Number of reference fields.
  let referenceCount: Int

  @inline(__always)
  init(_ word: UInt64) {
    sizeInWords = Int(truncatingIfNeeded: word & Self.sizeMask)
    referenceCount = Int(truncatingIfNeeded: (word &>> Self.referenceShift) & Self.referenceMask)
  }
}

/// Reads and writes one object in place: a view over its first word, owning nothing.
struct ObjectView {
  let words: UnsafeMutablePointer<UInt64>

  /// Total size in words, header included.
  @inline(__always) var sizeInWords: Int { ObjectHeader(words[0]).sizeInWords }
  /// Number of reference fields.
  @inline(__always) var referenceCount: Int { ObjectHeader(words[0]).referenceCount }
  /// The object's id.
  @inline(__always) var id: UInt64 { words[1] }
  /// Reference field `index`.
  @inline(__always) func reference(_ index: Int) -> UInt { UInt(words[ObjectLayout.headerWords + index]) }
  /// Sets reference field `index`.
  @inline(__always) func setReference(_ index: Int, to target: UInt) {
    words[ObjectLayout.headerWords + index] = UInt64(target)
  }
  /// Index of the first payload word.
  @inline(__always) var payloadStart: Int { ObjectLayout.headerWords + referenceCount }
}
