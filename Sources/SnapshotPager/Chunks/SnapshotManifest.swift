import Crypto
import Foundation

/// The manifest of a chunked, layered snapshot: what `uffd snapshot pack` writes and a pager
/// serves from (format `uffd-chunked-snapshot`, version 1; JSON, documented in the DocC article
/// "Remote snapshots").
///
/// The snapshot is a sequence of `length` bytes in pages of `page_size`. Each layer is a folder
/// (`path`, relative to the manifest's folder) of content-addressed chunks (`chunks/<sha256>`, at
/// most `chunk_size` bytes each). `extents` map runs of pages to a layer's chunk:
/// `[first_page, pages, layer, chunk, first_page_in_chunk]`. A page no extent covers is zero (an
/// all-zero chunk is never stored). A base snapshot's chunks follow the file; a diff layer's chunks
/// hold only the pages that differ from its base, packed, and the extents of the unchanged pages
/// still name the base's layers.
///
/// `checksum` is `sha256:` and the hex SHA-256 of the manifest's JSON encoding without the
/// checksum (keys sorted, no whitespace, slashes unescaped): a manifest damaged in transit or by
/// hand is refused, never served.
public struct SnapshotManifest: Codable, Sendable, Hashable {
  /// The format's name.
  public static let formatName = "uffd-chunked-snapshot"
  /// The version this build writes and reads.
  public static let currentVersion = 1
  /// The object name a pack writes the manifest as.
  public static let fileName = "manifest.json"

  /// One layer: a folder of chunks.
  public struct Layer: Codable, Sendable, Hashable {
    /// The folder, relative to the manifest's folder (`.` for the manifest's own layer).
    public var path: String
    /// The identity of the snapshot this layer was packed from (`sha256:…`).
    public var identity: String
    /// The chunks' digests (hex SHA-256), indexed by the extents.
    public var chunks: [String]
    /// Each chunk's length in bytes.
    public var chunkBytes: [Int]

    enum CodingKeys: String, CodingKey {
      case path, identity, chunks
      case chunkBytes = "chunk_bytes"
    }

    /// A layer.
    public init(path: String, identity: String, chunks: [String] = [], chunkBytes: [Int] = []) {
      self.path = path
      self.identity = identity
      self.chunks = chunks
      self.chunkBytes = chunkBytes
    }

    /// The object path of chunk `index`, relative to the manifest's folder.
    public func objectPath(of index: Int) -> String {
      path == "." ? "chunks/\(chunks[index])" : "\(path)/chunks/\(chunks[index])"
    }
  }

  /// A run of pages served from one chunk of one layer.
  public struct Extent: Codable, Sendable, Hashable {
    /// The first page of the snapshot the run covers.
    public var page: Int
    /// How many pages.
    public var pages: Int
    /// The layer (index into ``SnapshotManifest/layers``).
    public var layer: Int
    /// The chunk (index into the layer's chunks).
    public var chunk: Int
    /// The page of the chunk the run starts at.
    public var pageInChunk: Int

    /// An extent.
    public init(page: Int, pages: Int, layer: Int, chunk: Int, pageInChunk: Int) {
      self.page = page
      self.pages = pages
      self.layer = layer
      self.chunk = chunk
      self.pageInChunk = pageInChunk
    }

    /// Decodes `[page, pages, layer, chunk, page_in_chunk]`.
    public init(from decoder: any Decoder) throws {
      var values = try decoder.unkeyedContainer()
      page = try values.decode(Int.self)
      pages = try values.decode(Int.self)
      layer = try values.decode(Int.self)
      chunk = try values.decode(Int.self)
      pageInChunk = try values.decode(Int.self)
    }

    /// Encodes `[page, pages, layer, chunk, page_in_chunk]`.
    public func encode(to encoder: any Encoder) throws {
      var values = encoder.unkeyedContainer()
      try values.encode(page)
      try values.encode(pages)
      try values.encode(layer)
      try values.encode(chunk)
      try values.encode(pageInChunk)
    }
  }

  /// ``formatName``.
  public var format: String
  /// ``currentVersion`` when written by this build.
  public var version: Int
  /// The snapshot's length in bytes.
  public var length: Int
  /// The granularity of the extents (4096).
  public var pageSize: Int
  /// The largest chunk, in bytes.
  public var chunkSize: Int
  /// `sha256:` and the hex SHA-256 of the whole snapshot.
  public var identity: String
  /// The layers, base first; the last is the manifest's own.
  public var layers: [Layer]
  /// The extents, sorted by page, not overlapping.
  public var extents: [Extent]
  /// `sha256:…` of the rest (see the type's documentation); nil while being built.
  public var checksum: String?

  enum CodingKeys: String, CodingKey {
    case format, version, length, identity, layers, extents, checksum
    case pageSize = "page_size"
    case chunkSize = "chunk_size"
  }

  /// An empty manifest for a snapshot of `length` bytes.
  public init(length: Int, pageSize: Int, chunkSize: Int, identity: String, layers: [Layer] = [], extents: [Extent] = []) {
    format = Self.formatName
    version = Self.currentVersion
    self.length = length
    self.pageSize = pageSize
    self.chunkSize = chunkSize
    self.identity = identity
    self.layers = layers
    self.extents = extents
  }

  /// The encoding with its checksum (what a pack writes).
  public func encoded() throws(SnapshotManifestError) -> [UInt8] {
    var sealed = self
    sealed.checksum = try computedChecksum()
    return try Self.encode(sealed)
  }

  /// The checksum this manifest's content has.
  public func computedChecksum() throws(SnapshotManifestError) -> String {
    var body = self
    body.checksum = nil
    return "sha256:" + SigV4Signer.hex(SHA256.hash(data: try Self.encode(body)))
  }

  /// Decodes and checks a manifest: format, version, checksum, and that every extent is within the
  /// snapshot, its layer and its chunk.
  public static func decode(_ bytes: [UInt8]) throws(SnapshotManifestError) -> SnapshotManifest {
    let manifest: SnapshotManifest
    do {
      manifest = try JSONDecoder().decode(SnapshotManifest.self, from: Data(bytes))
    } catch {
      throw .malformed("not a snapshot manifest: \(error)")
    }
    guard manifest.format == formatName else { throw .malformed("format \"\(manifest.format)\", expected \"\(formatName)\"") }
    guard manifest.version == currentVersion else {
      throw .unsupportedVersion(manifest.version)
    }
    guard let checksum = manifest.checksum else { throw .malformed("no checksum") }
    let computed = try manifest.computedChecksum()
    guard computed == checksum else { throw .checksumMismatch(expected: checksum, computed: computed) }
    try manifest.validate()
    return manifest
  }

  /// Checks the numbers (checked arithmetic: a hostile manifest cannot trap the pager).
  public func validate() throws(SnapshotManifestError) {
    guard pageSize >= 4096, pageSize.nonzeroBitCount == 1, pageSize <= 1 << 30 else { throw .malformed("page_size \(pageSize)") }
    guard chunkSize >= pageSize, chunkSize % pageSize == 0, chunkSize <= 1 << 30 else { throw .malformed("chunk_size \(chunkSize)") }
    guard length >= 0, length <= 1 << 46 else { throw .malformed("length \(length)") }
    guard !layers.isEmpty, layers.count <= 4096 else { throw .malformed("\(layers.count) layers") }
    for layer in layers {
      guard layer.chunks.count == layer.chunkBytes.count else { throw .malformed("layer \(layer.path): chunks and chunk_bytes differ in count") }
      guard !layer.path.isEmpty, !layer.path.hasPrefix("/") else { throw .malformed("layer path \"\(layer.path)\"") }
      for (digest, bytes) in zip(layer.chunks, layer.chunkBytes) {
        guard digest.count == 64, digest.utf8.allSatisfy({ (48...57).contains($0) || (97...102).contains($0) }) else {
          throw .malformed("chunk digest \"\(digest)\"")
        }
        guard bytes > 0, bytes <= chunkSize, bytes % pageSize == 0 else { throw .malformed("chunk of \(bytes) bytes") }
      }
    }
    let pagesInSnapshot = (length + pageSize - 1) / pageSize
    let pagesPerChunk = chunkSize / pageSize
    var next = 0
    for extent in extents {
      guard extent.page >= next, extent.pages > 0, extent.page <= pagesInSnapshot,
            extent.pages <= pagesInSnapshot - extent.page else { throw .malformed("extent at page \(extent.page) out of order or range") }
      guard layers.indices.contains(extent.layer), layers[extent.layer].chunks.indices.contains(extent.chunk) else {
        throw .malformed("extent at page \(extent.page) names a missing layer or chunk")
      }
      let chunkPages = (layers[extent.layer].chunkBytes[extent.chunk] + pageSize - 1) / pageSize
      guard extent.pageInChunk >= 0, extent.pageInChunk < pagesPerChunk, extent.pages <= chunkPages - extent.pageInChunk else {
        throw .malformed("extent at page \(extent.page) reaches past its chunk")
      }
      next = extent.page + extent.pages
    }
  }

  /// Bytes stored in layer `index`'s chunks (each distinct chunk once).
  public func storedBytes(layer index: Int) -> Int {
    var seen = Set<String>()
    var total = 0
    for (digest, bytes) in zip(layers[index].chunks, layers[index].chunkBytes) where seen.insert(digest).inserted { total += bytes }
    return total
  }

  static func encode(_ manifest: SnapshotManifest) throws(SnapshotManifestError) -> [UInt8] {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
    do {
      return Array(try encoder.encode(manifest))
    } catch {
      throw .malformed("cannot encode: \(error)")
    }
  }
}

/// Why a manifest cannot be used.
public enum SnapshotManifestError: Error, Sendable, Hashable, CustomStringConvertible {
  /// Not a manifest, or numbers that do not fit together.
  case malformed(String)
  /// A version this build does not read.
  case unsupportedVersion(Int)
  /// The checksum does not match the content: damaged.
  case checksumMismatch(expected: String, computed: String)

  /// What is wrong.
  public var description: String {
    switch self {
    case .malformed(let why): "malformed snapshot manifest: \(why)"
    case .unsupportedVersion(let version):
      "snapshot manifest version \(version) is not supported (this build reads version \(SnapshotManifest.currentVersion)): upgrade uffd"
    case .checksumMismatch(let expected, let computed):
      "snapshot manifest checksum mismatch (damaged): it says \(expected), its content hashes to \(computed)"
    }
  }
}
