import Dispatch
import Synchronization
import Userfaultfd

/// A chunked snapshot being served: its manifest, the store its chunks come from, and the page
/// table the fault path looks pages up in (an array index, no search, no allocation), over the
/// host-wide ``ChunkCache``.
public final class ChunkedSnapshot: Sendable {
  /// The manifest, checked.
  public let manifest: SnapshotManifest
  /// Where the manifest was read from.
  public let address: String
  /// The manifest's folder: chunks are read relative to it.
  public let source: any SnapshotSource
  /// The host's chunk cache.
  public let cache: ChunkCache
  let table: PageTable
  /// Zeros for pages no extent covers (never written: reads map the shared zero page).
  private let zeros: AnonymousMemory
  /// The fetch of every chunk, by layer and chunk index (made once, not per fault).
  private let fetches: [[(digest: String, fetch: ChunkFetch)]]

  /// What the fault path gets for a run of bytes.
  package enum Content {
    /// `bytes` bytes at `address` (kept valid by `keep`).
    case ready(address: UInt, bytes: Int, keep: ChunkBuffer?)
    /// The chunk is being fetched: retry.
    case pending
    /// The chunk cannot be had.
    case failed(String)
  }

  /// A snapshot served from `manifest` (read from `address`, chunks from `source`) through `cache`.
  public init(manifest: SnapshotManifest, address: String, source: any SnapshotSource, cache: ChunkCache) throws(UserfaultfdError) {
    self.manifest = manifest
    self.address = address
    self.source = source
    self.cache = cache
    table = PageTable(manifest)
    zeros = try AnonymousMemory(length: max(manifest.chunkSize, 2 << 20))
    fetches = manifest.layers.map { layer in
      layer.chunks.indices.map { index in
        (layer.chunks[index], ChunkFetch(source: source, path: layer.objectPath(of: index), bytes: layer.chunkBytes[index]))
      }
    }
  }

  /// The snapshot's length in bytes.
  public var length: Int { manifest.length }

  /// Reads and checks the manifest at `address` (`s3://`, `http(s)://`, or a local path), within
  /// `timeout`.
  public static func open(_ address: String, cache: ChunkCache, timeout: Duration,
                          environment: [String: String] = ProcessEnvironment.current) async throws(RemoteSnapshotError) -> ChunkedSnapshot {
    let (source, manifest, _) = try await SnapshotManifest.open(address, endpoint: cache.configuration.endpoint,
                                                               environment: environment, timeout: timeout)
    do {
      return try ChunkedSnapshot(manifest: manifest, address: address, source: source, cache: cache)
    } catch {
      throw .setup(address, "\(error)")
    }
  }

  /// The content of up to `maxBytes` from snapshot byte `offset` (page-aligned), at least
  /// `minBytes` (a whole page of the region), in one piece. Never blocks: a chunk not in memory
  /// is fetched (with the next ones, ahead) and `pending` returned.
  package func content(at offset: Int, maxBytes: Int, minBytes: Int) -> Content {
    let pageSize = manifest.pageSize
    let page = offset / pageSize
    guard page >= 0, page < table.pages, maxBytes >= pageSize else { return .failed("offset \(offset) beyond the snapshot") }
    let wanted = maxBytes / pageSize
    guard let entry = table.index(ofPage: page) else {
      var run = 1
      let limit = min(wanted, zeros.length / pageSize)
      while run < limit, page + run < table.pages, table.index(ofPage: page + run) == nil { run += 1 }
      guard run * pageSize >= minBytes else { return assemble(at: offset, bytes: minBytes) }
      return .ready(address: Address(zeros.baseAddress).rawValue, bytes: run * pageSize, keep: nil)
    }
    let extent = table.extents[entry]
    let run = min(wanted, extent.page + extent.pages - page)
    guard run * pageSize >= minBytes else { return assemble(at: offset, bytes: minBytes) }
    let (digest, fetch) = fetches[extent.layer][extent.chunk]
    switch cache.chunk(digest, fetch: fetch) {
    case .ready(let buffer):
      let inChunk = (extent.pageInChunk + page - extent.page) * pageSize
      guard inChunk + run * pageSize <= buffer.count else { return .failed("chunk \(digest.prefix(16)) is shorter than its extents") }
      return .ready(address: buffer.address(at: inChunk), bytes: run * pageSize, keep: buffer)
    case .pending(let started):
      // Read ahead once per miss, not on every retry of a fault waiting for this chunk.
      if started { readAhead(after: entry) }
      return .pending
    case .failed(let why):
      return .failed(why)
    }
  }

  /// A huge page whose 4 KiB pages come from several chunks or holes (a diff layer under hugetlbfs
  /// memory): gathered into a buffer of its own, allocated for this fault (a rare path: a base
  /// layer's 2 MiB chunks hold whole huge pages), ready when every piece is.
  private func assemble(at offset: Int, bytes: Int) -> Content {
    let pageSize = manifest.pageSize
    guard offset % bytes == 0, offset + bytes <= table.pages * pageSize else {
      return .failed("a page of \(bytes) bytes at \(offset) is not within the snapshot")
    }
    guard let buffer = ChunkBuffer(zeroed: bytes) else { return .failed("no memory to assemble a page of \(bytes) bytes") }
    var waiting = false
    var last: (layer: Int, chunk: Int, buffer: ChunkBuffer)?
    for page in (offset / pageSize)..<((offset + bytes) / pageSize) {
      guard let entry = table.index(ofPage: page) else { continue }  // A hole: the buffer is zeroed.
      let extent = table.extents[entry]
      let chunk: ChunkBuffer
      if let last, last.layer == extent.layer, last.chunk == extent.chunk {
        chunk = last.buffer
      } else {
        let (digest, fetch) = fetches[extent.layer][extent.chunk]
        switch cache.chunk(digest, fetch: fetch) {
        case .ready(let ready):
          chunk = ready
          last = (extent.layer, extent.chunk, ready)
        case .pending(let started):
          if started { readAhead(after: entry) }
          waiting = true
          continue
        case .failed(let why):
          return .failed(why)
        }
      }
      let inChunk = (extent.pageInChunk + page - extent.page) * pageSize
      guard inChunk + pageSize <= chunk.count else { return .failed("a chunk is shorter than its extents") }
      buffer.fill(at: page * pageSize - offset, from: chunk.address(at: inChunk), count: pageSize)
    }
    return waiting ? .pending : .ready(address: buffer.address(at: 0), bytes: bytes, keep: buffer)
  }

  /// The chunks holding the snapshot bytes at `offsets`, each once, in the order first named (a
  /// working set's chunks in its recorded order), at most `maxBytes` of them; holes (zero pages)
  /// and offsets past the end name none.
  package func chunks(covering offsets: some Sequence<Int>, maxBytes: Int) -> [(digest: String, fetch: ChunkFetch)] {
    var seen = Set<Int>()
    var chunks: [(digest: String, fetch: ChunkFetch)] = []
    var bytes = 0
    for offset in offsets {
      let page = offset / manifest.pageSize
      guard offset >= 0, page < table.pages, let entry = table.index(ofPage: page) else { continue }
      let extent = table.extents[entry]
      guard seen.insert(extent.layer << 32 | extent.chunk).inserted else { continue }
      let chunk = fetches[extent.layer][extent.chunk]
      guard bytes + chunk.fetch.bytes <= maxBytes else { break }
      bytes += chunk.fetch.bytes
      chunks.append(chunk)
    }
    return chunks
  }

  /// Starts fetching the chunks a session's working set needs, in its recorded order, ahead of
  /// the faults and the replay that will want them (at most half the memory cache's bound: more
  /// would evict the first before they are used). Never blocks: the chunks are queued in the cache.
  package func prefetch(_ workingSet: WorkingSet) {
    let granule = workingSet.granule
    let offsets = workingSet.pages.lazy.compactMap { page -> Int? in
      let (offset, overflow) = page.multipliedReportingOverflow(by: UInt64(granule))
      return overflow || offset > UInt64(Int.max) ? nil : Int(offset)
    }
    cache.prefetch(chunks(covering: offsets, maxBytes: cache.configuration.cacheBytes / 2))
  }

  /// Starts fetching the chunks of the extents after `extentIndex` (the next of a sequential run).
  private func readAhead(after extentIndex: Int) {
    var remaining = cache.configuration.readAheadChunks
    var index = extentIndex + 1
    var last = (table.extents[extentIndex].layer, table.extents[extentIndex].chunk)
    while remaining > 0, index < table.extents.count {
      let extent = table.extents[index]
      index += 1
      guard (extent.layer, extent.chunk) != last else { continue }
      last = (extent.layer, extent.chunk)
      let (digest, fetch) = fetches[extent.layer][extent.chunk]
      cache.prefetch(digest, fetch: fetch)
      remaining -= 1
    }
  }
}

/// Why a remote snapshot could not be opened.
public enum RemoteSnapshotError: Error, Sendable, CustomStringConvertible {
  /// Its store failed.
  case source(String, SnapshotSourceError)
  /// Its manifest is unusable.
  case manifest(String, SnapshotManifestError)
  /// Something else (memory).
  case setup(String, String)

  /// What failed.
  public var description: String {
    switch self {
    case .source(let address, let error): "\(address): \(error)"
    case .manifest(let address, let error): "\(address): \(error)"
    case .setup(let address, let why): "\(address): \(why)"
    }
  }
}

/// The remote snapshots a pager serves, opened once each, over one ``ChunkCache``.
package final class RemoteSnapshots: Sendable {
  /// The host-wide cache.
  package let cache: ChunkCache
  private let opened = Mutex<[String: ChunkedSnapshot]>([:])

  package init(cache: ChunkCache) { self.cache = cache }

  /// Whether `path` names a chunked snapshot (a URL, or a local `.json` manifest) rather than a
  /// memory file.
  package static func isManifest(_ path: String) -> Bool {
    path.hasPrefix("s3://") || path.hasPrefix("http://") || path.hasPrefix("https://") || path.hasSuffix(".json")
  }

  /// The snapshot at `address`, its manifest read on first use (waiting at most the fault deadline
  /// plus one attempt; called by the acceptor and at start, never by a serving loop).
  package func snapshot(at address: String) throws(UserfaultfdError) -> ChunkedSnapshot {
    if let known = opened.withLock({ $0[address] }) { return known }
    let timeout = cache.configuration.attemptTimeout * cache.configuration.attempts
    let result = Mutex<Result<ChunkedSnapshot, RemoteSnapshotError>?>(nil)
    let done = DispatchSemaphore(value: 0)
    let cache = self.cache
    // On the fetch threads: the caller (the acceptor, or `start()` on whatever thread) waits for it.
    let task = Task(executorPreference: FetchExecutor.shared) {
      let outcome: Result<ChunkedSnapshot, RemoteSnapshotError>
      do throws(RemoteSnapshotError) {
        outcome = .success(try await ChunkedSnapshot.open(address, cache: cache, timeout: timeout))
      } catch {
        outcome = .failure(error)
      }
      result.withLock { $0 = outcome }
      done.signal()
    }
    if done.wait(timeout: .now() + .nanoseconds(Int(clamping: (timeout + .seconds(1)).nanosecondsClamped))) == .timedOut {
      task.cancel()
      throw .invalidArgument(.serve, .badConfiguration("\(address): the manifest did not arrive within \(timeout)"))
    }
    switch result.withLock({ $0 }) {
    case .success(let snapshot):
      return opened.withLock { opened in
        if let raced = opened[address] { return raced }
        opened[address] = snapshot
        return snapshot
      }
    case .failure(let error):
      throw .invalidArgument(.serve, .badConfiguration("\(error)"))
    case nil:
      throw .invalidArgument(.serve, .badConfiguration("\(address): the manifest could not be read"))
    }
  }
}
