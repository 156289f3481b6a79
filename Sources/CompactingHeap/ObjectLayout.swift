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
  public static var maxReferences: Int { 0xFFFF }

  /// Packs the first header word.
  @inline(__always)
  static func header(words: Int, references: Int) -> UInt64 {
    UInt64(words) | (UInt64(references) << 32)
  }
}

/// Reads and writes one object in place: a view over its first word, owning nothing.
struct ObjectView {
  let words: UnsafeMutablePointer<UInt64>

  /// Total size in words, header included.
  @inline(__always) var sizeInWords: Int { Int(words[0] & 0xFFFF_FFFF) }
  /// Number of reference fields.
  @inline(__always) var referenceCount: Int { Int((words[0] >> 32) & 0xFFFF) }
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
