import Glibc
import SystemPackage

/// A diff layer of an incremental live snapshot (``LiveSnapshot/cutDiff(into:fileOffset:)``): the
/// pages written since the previous cut, with their content at this cut. Applied in order onto the
/// base image (the first snapshot, a plain image of the range), the layers give the range at each
/// cut (``apply(_:at:to:at:)``).
///
/// ## Format (version 1, little-endian)
/// | offset | size | field |
/// | --- | --- | --- |
/// | 0 | 8 | magic `UFFDDIFF` |
/// | 8 | 4 | version, 1 |
/// | 12 | 4 | page size in bytes |
/// | 16 | 8 | the range's length in bytes (the base image's size) |
/// | 24 | 8 | pages in the layer, N |
/// | 32 | 8 | the layer's number (1 for the first diff after the base) |
/// | 40 | 8 × N | the pages' indices in the range, ascending |
/// | ``dataOffset`` | page size × N | the pages' contents, in the same order |
///
/// The data starts at the first page-size boundary after the index, so it can be mapped.
public struct SnapshotDiffLayer: Sendable, Hashable {
  /// The layer's number (the base is 0; the first diff 1).
  public let number: Int
  /// The page size.
  public let pageSize: Int
  /// The range's length in bytes.
  public let rangeLength: Int
  /// The pages in the layer: their indices in the range, ascending.
  public let pageIndices: [Int]

  /// The magic at the start of every layer.
  public static let magic = Array("UFFDDIFF".utf8)
  /// The format version this package writes and reads.
  public static let version: UInt32 = 1
  static let fixedHeaderSize = 40

  /// Where the page data starts, from the layer's start.
  public var dataOffset: Int {
    let index = Self.fixedHeaderSize + 8 * pageIndices.count
    return (index + pageSize - 1) / pageSize * pageSize
  }

  /// The layer's size in bytes.
  public var byteCount: Int { dataOffset + pageIndices.count * pageSize }

  /// A layer description (what ``LiveSnapshot/cutDiff(into:fileOffset:)`` returns).
  public init(number: Int, pageSize: Int, rangeLength: Int, pageIndices: [Int]) {
    self.number = number
    self.pageSize = pageSize
    self.rangeLength = rangeLength
    self.pageIndices = pageIndices
  }

  /// Writes the header and the index to `file` at `offset`.
  func writeHeader(to file: FileDescriptor, at offset: Int) throws(UserfaultfdError) {
    var bytes = Self.magic
    func append<T: FixedWidthInteger>(_ value: T) {
      withUnsafeBytes(of: value.littleEndian) { bytes.append(contentsOf: $0) }
    }
    append(Self.version)
    append(UInt32(pageSize))
    append(UInt64(rangeLength))
    append(UInt64(pageIndices.count))
    append(UInt64(number))
    for index in pageIndices { append(UInt64(index)) }
    bytes.append(contentsOf: [UInt8](repeating: 0, count: dataOffset - bytes.count))
    do {
      _ = try file.writeAll(toAbsoluteOffset: Int64(offset), bytes)
    } catch {
      throw .systemCallFailed("pwrite(diff layer header)", (error as? Errno) ?? .ioError)
    }
  }

  /// Reads a layer's header and index from `file` at `offset`.
  ///
  /// - Throws: ``UserfaultfdError/invalidArgument(_:_:)`` for a file that is not a version-1 diff
  ///   layer (bad magic, version, page size, or sizes that do not fit); the read's failure.
  public static func read(from file: FileDescriptor, at offset: Int = 0) throws(UserfaultfdError) -> SnapshotDiffLayer {
    let fixed = try readExactly(file, at: offset, count: fixedHeaderSize)
    func field<T: FixedWidthInteger>(_ at: Int, _: T.Type) -> T {
      fixed.withUnsafeBytes { T(littleEndian: $0.loadUnaligned(fromByteOffset: at, as: T.self)) }
    }
    let pageSize = Int(field(12, UInt32.self))
    let rangeLength = field(16, UInt64.self), count = field(24, UInt64.self), number = field(32, UInt64.self)
    guard Array(fixed[0..<8]) == magic, field(8, UInt32.self) == version,
          pageSize >= PageSize.base, pageSize & (pageSize - 1) == 0, pageSize <= AnonymousMemory.maxAlignment,
          rangeLength > 0, rangeLength <= UInt64(Int.max), rangeLength % UInt64(pageSize) == 0,
          count <= rangeLength / UInt64(pageSize), number <= UInt64(Int.max)
    else { throw .invalidArgument(.liveSnapshot, .outOfRange(parameter: "diff layer header", value: offset, valid: 0...0)) }
    let raw = try readExactly(file, at: offset + fixedHeaderSize, count: Int(count) * 8)
    var indices: [Int] = []
    indices.reserveCapacity(Int(count))
    let pages = Int(rangeLength) / pageSize
    for k in 0..<Int(count) {
      let value = raw.withUnsafeBytes { UInt64(littleEndian: $0.loadUnaligned(fromByteOffset: k * 8, as: UInt64.self)) }
      guard value < UInt64(pages), indices.last.map({ UInt64($0) < value }) ?? true else {
        throw .invalidArgument(.liveSnapshot, .outOfRange(parameter: "diff layer page index", value: Int(clamping: value), valid: 0...(pages - 1)))
      }
      indices.append(Int(value))
    }
    return SnapshotDiffLayer(number: Int(number), pageSize: pageSize, rangeLength: Int(rangeLength), pageIndices: indices)
  }

  /// Applies the layer in `layer` at `layerOffset` onto the image in `image` at `imageOffset`
  /// (the base, or the base with the earlier layers applied): each of its pages is written at its
  /// place. Returns the layer.
  @discardableResult
  public static func apply(
    _ layer: FileDescriptor, at layerOffset: Int = 0, to image: FileDescriptor, at imageOffset: Int = 0
  ) throws(UserfaultfdError) -> SnapshotDiffLayer {
    let header = try read(from: layer, at: layerOffset)
    for (rank, index) in header.pageIndices.enumerated() {
      let page = try readExactly(layer, at: layerOffset + header.dataOffset + rank * header.pageSize, count: header.pageSize)
      do {
        _ = try image.writeAll(toAbsoluteOffset: Int64(imageOffset + index * header.pageSize), page)
      } catch {
        throw .systemCallFailed("pwrite(image page \(index))", (error as? Errno) ?? .ioError)
      }
    }
    return header
  }

  private static func readExactly(_ file: FileDescriptor, at offset: Int, count: Int) throws(UserfaultfdError) -> [UInt8] {
    var bytes = [UInt8](repeating: 0, count: count)
    var done = 0
    while done < count {
      let n: Int
      do {
        n = try bytes.withUnsafeMutableBytes { buffer in
          try file.read(fromAbsoluteOffset: Int64(offset + done), into: UnsafeMutableRawBufferPointer(rebasing: buffer[done...]))
        }
      } catch {
        throw .systemCallFailed("pread(diff layer)", (error as? Errno) ?? .ioError)
      }
      guard n > 0 else {
        // The file ends inside the layer.
        throw .invalidArgument(.liveSnapshot, .outOfRange(parameter: "diff layer bytes at \(offset)", value: done, valid: count...count))
      }
      done += n
    }
    return bytes
  }
}
