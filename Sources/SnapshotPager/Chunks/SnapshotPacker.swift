import Crypto
import Foundation
import Glibc
import Userfaultfd

/// Packs a snapshot file into a chunked, layered snapshot folder (`uffd snapshot pack`): chunks
/// named by their SHA-256 under `chunks/`, all-zero chunks not stored, and `manifest.json`. With a
/// base manifest, only the pages that differ from the base are stored (packed into new chunks);
/// the rest keep naming the base's layers, through a path relative to the new folder.
public enum SnapshotPacker {
  /// The default chunk size (2 MiB).
  public static let defaultChunkSize = 2 << 20
  /// The valid chunk sizes.
  public static let chunkSizeRange = 4096...(256 << 20)
  /// The extents' granularity.
  public static let pageSize = 4096

  /// What a pack did.
  public struct Report: Sendable, Hashable, Codable {
    /// The manifest's path relative to the output folder.
    public var manifest: String
    /// The output folder.
    public var directory: String
    /// The snapshot's length.
    public var length: Int
    /// `sha256:…` of the snapshot.
    public var identity: String
    /// Chunks the new layer names.
    public var chunks: Int
    /// Chunk files written now (not present before).
    public var chunksWritten: Int
    /// Chunks of the file that were all zeros (not stored).
    public var zeroChunks: Int
    /// Bytes in the new layer's chunks.
    public var layerBytes: Int
    /// Bytes in the base's layers (0 without a base).
    public var baseBytes: Int
    /// Pages that differ from the base (every non-zero page without a base).
    public var changedPages: Int
    /// Pages in the snapshot.
    public var pages: Int
    /// The manifest's size in bytes.
    public var manifestBytes: Int

    enum CodingKeys: String, CodingKey {
      case manifest, directory, length, identity, chunks, pages
      case chunksWritten = "chunks_written"
      case zeroChunks = "zero_chunks"
      case layerBytes = "layer_bytes"
      case baseBytes = "base_bytes"
      case changedPages = "changed_pages"
      case manifestBytes = "manifest_bytes"
    }
  }

  /// Packs `file` into `directory` (created if missing) in chunks of `chunkSize` bytes, as a diff
  /// over the manifest at `basePath` when given (a local path; its chunks must be readable).
  ///
  /// - Throws: ``SnapshotPackError`` naming what failed; nothing is left half-written (chunks are
  ///   renamed into place, the manifest last).
  public static func pack(file: String, into directory: String, chunkSize: Int = defaultChunkSize,
                          basePath: String? = nil) async throws(SnapshotPackError) -> Report {
    guard chunkSizeRange.contains(chunkSize), chunkSize % pageSize == 0 else {
      throw .badArgument("--chunk \(chunkSize): a multiple of 4096 from 4 KiB to 256 MiB")
    }
    let snapshot: SnapshotFile
    do {
      snapshot = try SnapshotFile(path: file)
    } catch {
      throw .io("cannot map \(file): \(error)")
    }
    guard snapshot.length % pageSize == 0 else {
      throw .badArgument("\(file) is \(snapshot.length) bytes, not a whole number of 4 KiB pages")
    }
    let out = LocalFileSource(directory: directory)
    do { try LocalFileSource.makeDirectories(forFile: directory + "/chunks/x") } catch { throw .io("\(error)") }
    let bytes = snapshot.bytes
    let identity = "sha256:" + SigV4Signer.hex(SHA256.hash(data: bytes))
    let pages = snapshot.length / pageSize
    let pagesPerChunk = chunkSize / pageSize

    var base: (manifest: SnapshotManifest, source: LocalFileSource, table: PageTable)?
    var layers: [SnapshotManifest.Layer] = []
    if let basePath {
      let baseSource = LocalFileSource(directory: ObjectPath.directory(of: basePath).isEmpty ? "." : ObjectPath.directory(of: basePath))
      let manifest: SnapshotManifest
      do {
        manifest = try SnapshotManifest.decode(try await baseSource.read(ObjectPath.lastComponent(of: basePath), range: nil, expecting: nil, timeout: .seconds(60)))
      } catch let error as SnapshotManifestError {
        throw .badBase("\(basePath): \(error)")
      } catch {
        throw .badBase("\(basePath): \(error)")
      }
      guard manifest.length == snapshot.length else {
        throw .badBase("the base is \(manifest.length) bytes, \(file) is \(snapshot.length): a diff needs the same length")
      }
      guard manifest.pageSize == pageSize else { throw .badBase("the base's page size is \(manifest.pageSize)") }
      // The base's layers, their folders now relative to the new manifest's folder.
      let relative = relativePath(from: absolute(directory), to: absolute(baseSource.directory))
      layers = manifest.layers.map { layer in
        var moved = layer
        moved.path = normalized(relative + "/" + layer.path)
        return moved
      }
      base = (manifest, baseSource, PageTable(manifest))
    }
    let ownIndex = layers.count
    var own = SnapshotManifest.Layer(path: ".", identity: identity)
    var indexOfDigest: [String: Int] = [:]
    var extents: [SnapshotManifest.Extent] = []
    var report = Report(manifest: SnapshotManifest.fileName, directory: directory, length: snapshot.length, identity: identity,
                        chunks: 0, chunksWritten: 0, zeroChunks: 0, layerBytes: 0, baseBytes: 0, changedPages: 0,
                        pages: pages, manifestBytes: 0)
    if let base { report.baseBytes = (0..<base.manifest.layers.count).reduce(0) { $0 + base.manifest.storedBytes(layer: $1) } }

    func store(_ chunk: [UInt8]) async throws(SnapshotPackError) -> Int {
      let digest = SigV4Signer.hex(SHA256.hash(data: chunk))
      if let known = indexOfDigest[digest] { return known }
      let index = own.chunks.count
      own.chunks.append(digest)
      own.chunkBytes.append(chunk.count)
      indexOfDigest[digest] = index
      report.layerBytes += chunk.count
      let path = "chunks/\(digest)"
      if (try? await out.info(path, timeout: .seconds(10)))?.size != chunk.count {
        do { try await out.write(path, bytes: chunk, timeout: .seconds(60)) } catch { throw .io("\(error)") }
        report.chunksWritten += 1
      }
      return index
    }

    // Collected out of order (a diff's changed runs land when their chunk fills); sorted and
    // merged in `finish`.
    func append(_ extent: SnapshotManifest.Extent) { extents.append(extent) }

    guard let start = bytes.baseAddress else {
      // An empty snapshot: one empty layer, no extents.
      return try await finish(SnapshotManifest(length: 0, pageSize: pageSize, chunkSize: chunkSize, identity: identity,
                                               layers: layers + [own], extents: []), out: out, report: report)
    }
    if let base {
      // A diff: the pages that differ from the base, packed in order into new chunks.
      var reader = BaseReader(manifest: base.manifest, source: base.source)
      var pending: [(page: Int, count: Int)] = []  // runs of changed pages in the chunk being filled
      var buffer = [UInt8]()
      buffer.reserveCapacity(chunkSize)
      func flush() async throws(SnapshotPackError) {
        guard !buffer.isEmpty else { return }
        let index = try await store(buffer)
        var inChunk = 0
        for run in pending {
          append(.init(page: run.page, pages: run.count, layer: ownIndex, chunk: index, pageInChunk: inChunk))
          inChunk += run.count
        }
        pending.removeAll()
        buffer.removeAll(keepingCapacity: true)
      }
      for page in 0..<pages {
        let mine = UnsafeRawBufferPointer(start: start + page * pageSize, count: pageSize)
        let theirs = try await reader.page(page, table: base.table)
        let same: Bool
        if let theirs {
          same = theirs.withUnsafeBytes { $0.elementsEqual(mine) }
        } else {
          same = isZero(mine)
        }
        if same {
          if let extent = base.table.extent(ofPage: page) {
            append(.init(page: page, pages: 1, layer: extent.layer, chunk: extent.chunk,
                         pageInChunk: extent.pageInChunk + (page - extent.page)))
          }
          continue
        }
        report.changedPages += 1
        if isZero(mine) { continue }  // Now zero: no extent.
        if let last = pending.last, last.page + last.count == page {
          pending[pending.count - 1].count += 1
        } else {
          pending.append((page, 1))
        }
        buffer.append(contentsOf: mine)
        if buffer.count == chunkSize { try await flush() }
      }
      try await flush()
    } else {
      var chunkIndex = 0
      while chunkIndex * pagesPerChunk < pages {
        let first = chunkIndex * pagesPerChunk
        let count = min(pagesPerChunk, pages - first)
        let chunk = UnsafeRawBufferPointer(start: start + first * pageSize, count: count * pageSize)
        chunkIndex += 1
        if isZero(chunk) {
          report.zeroChunks += 1
          continue
        }
        report.changedPages += count
        let index = try await store(Array(chunk))
        append(.init(page: first, pages: count, layer: ownIndex, chunk: index, pageInChunk: 0))
      }
    }
    report.chunks = own.chunks.count
    return try await finish(SnapshotManifest(length: snapshot.length, pageSize: pageSize, chunkSize: chunkSize, identity: identity,
                                             layers: layers + [own], extents: extents), out: out, report: report)
  }

  private static func finish(_ manifest: SnapshotManifest, out: LocalFileSource, report: Report) async throws(SnapshotPackError) -> Report {
    var report = report
    var manifest = manifest
    manifest.extents = merged(manifest.extents)
    do {
      try manifest.validate()
      let encoded = try manifest.encoded()
      report.manifestBytes = encoded.count
      try await out.write(SnapshotManifest.fileName, bytes: encoded, timeout: .seconds(60))
    } catch let error as SnapshotManifestError {
      throw .io("the manifest: \(error)")
    } catch {
      throw .io("the manifest: \(error)")
    }
    return report
  }

  /// Extents sorted by page, adjacent runs of one chunk joined.
  static func merged(_ extents: [SnapshotManifest.Extent]) -> [SnapshotManifest.Extent] {
    var out: [SnapshotManifest.Extent] = []
    for extent in extents.sorted(by: { $0.page < $1.page }) {
      if var last = out.last, last.layer == extent.layer, last.chunk == extent.chunk,
         last.page + last.pages == extent.page, last.pageInChunk + last.pages == extent.pageInChunk {
        last.pages += extent.pages
        out[out.count - 1] = last
      } else {
        out.append(extent)
      }
    }
    return out
  }

  static func isZero(_ bytes: UnsafeRawBufferPointer) -> Bool {
    guard let base = bytes.baseAddress else { return true }
    // Word at a time: pack reads every byte of the snapshot once.
    let words = bytes.count / 8
    let pointer = base.assumingMemoryBound(to: UInt64.self)
    for index in 0..<words where pointer[index] != 0 { return false }
    for index in (words * 8)..<bytes.count where bytes[index] != 0 { return false }
    return true
  }

  /// An absolute, `..`-free path.
  static func absolute(_ path: String) -> String {
    if let resolved = realpath(path, nil) {
      defer { free(resolved) }
      return String(cString: resolved)
    }
    var cwd = [CChar](repeating: 0, count: 4096)
    let here = getcwd(&cwd, cwd.count).map { _ in String(cString: cwd) } ?? "/"
    return normalized(path.hasPrefix("/") ? path : here + "/" + path)
  }

  /// `path` with `.` and inner `..` resolved (a leading `..` kept).
  static func normalized(_ path: String) -> String {
    var parts: [String] = []
    for part in path.split(separator: "/").map(String.init) {
      switch part {
      case ".", "": continue
      case "..": if let last = parts.last, last != ".." { parts.removeLast() } else { parts.append("..") }
      default: parts.append(part)
      }
    }
    let joined = parts.joined(separator: "/")
    if path.hasPrefix("/") { return "/" + joined }
    return joined.isEmpty ? "." : joined
  }

  /// The path of `target` relative to `from` (both absolute).
  static func relativePath(from: String, to target: String) -> String {
    let a = from.split(separator: "/")
    let b = target.split(separator: "/")
    var common = 0
    while common < a.count, common < b.count, a[common] == b[common] { common += 1 }
    let up = Array(repeating: "..", count: a.count - common)
    let down = b[common...].map(String.init)
    let joined = (up + down).joined(separator: "/")
    return joined.isEmpty ? "." : joined
  }
}

/// Page -> extent lookups over a manifest (pack, verify and serve share it): a binary search over
/// the extents, narrowed by a window index (at most about a million entries however long the
/// snapshot, so a manifest claiming a huge length costs no huge table), no allocation per lookup.
struct PageTable: Sendable {
  /// The snapshot's pages.
  let pages: Int
  let extents: [SnapshotManifest.Extent]
  /// Pages per window.
  private let window: Int
  /// For window `w`, the first extent that ends after the window's first page.
  private let windowStart: [Int32]

  init(_ manifest: SnapshotManifest) {
    pages = manifest.length / manifest.pageSize
    extents = manifest.extents
    var window = max(1, manifest.chunkSize / manifest.pageSize)
    while pages / window > 1 << 20 { window *= 2 }
    self.window = window
    let windows = pages / window + 1
    var starts = [Int32](repeating: Int32(clamping: manifest.extents.count), count: windows + 1)
    var index = 0
    for w in 0..<windows {
      let first = w * window
      while index < extents.count, extents[index].page + extents[index].pages <= first { index += 1 }
      starts[w] = Int32(clamping: index)
    }
    windowStart = starts
  }

  /// The index of the extent holding `page`, or nil for a zero page (or one beyond the snapshot).
  func index(ofPage page: Int) -> Int? {
    guard page >= 0, page < pages else { return nil }
    let w = page / window
    var low = Int(windowStart[w])
    var high = min(extents.count, Int(windowStart[min(w + 1, windowStart.count - 1)]) + 1)
    // The last extent starting at or before `page`, within the window's candidates.
    while low < high {
      let middle = (low + high) / 2
      if extents[middle].page <= page { low = middle + 1 } else { high = middle }
    }
    let candidate = low - 1
    guard candidate >= 0, candidate < extents.count, page < extents[candidate].page + extents[candidate].pages else { return nil }
    return candidate
  }

  func extent(ofPage page: Int) -> SnapshotManifest.Extent? { index(ofPage: page).map { extents[$0] } }
}

/// Reads a base snapshot's pages from its local chunks, one chunk kept at a time.
struct BaseReader {
  let manifest: SnapshotManifest
  let source: LocalFileSource
  var current: (layer: Int, chunk: Int, bytes: [UInt8])?

  init(manifest: SnapshotManifest, source: LocalFileSource) {
    self.manifest = manifest
    self.source = source
  }

  /// Page `page`'s bytes, or nil for a zero page.
  mutating func page(_ page: Int, table: PageTable) async throws(SnapshotPackError) -> ArraySlice<UInt8>? {
    guard let extent = table.extent(ofPage: page) else { return nil }
    if current?.layer != extent.layer || current?.chunk != extent.chunk {
      let layer = manifest.layers[extent.layer]
      let bytes: [UInt8]
      do {
        bytes = try await source.read(layer.objectPath(of: extent.chunk), range: nil, expecting: nil, timeout: .seconds(60))
      } catch {
        throw .badBase("reading the base's chunk \(layer.chunks[extent.chunk]): \(error)")
      }
      guard SigV4Signer.hex(SHA256.hash(data: bytes)) == layer.chunks[extent.chunk] else {
        throw .badBase("the base's chunk \(layer.chunks[extent.chunk]) does not match its digest")
      }
      current = (extent.layer, extent.chunk, bytes)
    }
    guard let current else { return nil }
    let offset = (extent.pageInChunk + page - extent.page) * manifest.pageSize
    guard offset + manifest.pageSize <= current.bytes.count else { throw .badBase("a base chunk is shorter than its extents") }
    return current.bytes[offset..<(offset + manifest.pageSize)]
  }
}

/// Why a pack failed.
public enum SnapshotPackError: Error, Sendable, Hashable, CustomStringConvertible {
  /// A parameter out of range.
  case badArgument(String)
  /// The base manifest or its chunks are unusable.
  case badBase(String)
  /// Reading the snapshot or writing the folder failed.
  case io(String)

  /// What failed.
  public var description: String {
    switch self {
    case .badArgument(let why): why
    case .badBase(let why): "the base snapshot: \(why)"
    case .io(let why): why
    }
  }
}
