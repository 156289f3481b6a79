import Crypto
import CoreMetrics
import Foundation
import Glibc
import Logging
import Synchronization

/// Where one chunk is fetched from: a source, the object's path in it, its length and digest.
public struct ChunkFetch: Sendable {
  /// The store.
  public let source: any SnapshotSource
  /// The chunk's object path in the store.
  public let path: String
  /// Its length in bytes.
  public let bytes: Int

  /// A fetch.
  public init(source: any SnapshotSource, path: String, bytes: Int) {
    self.source = source
    self.path = path
    self.bytes = bytes
    origin = source.location + "|" + path
  }

  /// Where it reads from (the source's location and the path).
  let origin: String
}

/// The host-wide chunk cache every session and snapshot of a pager shares: chunks by digest (two
/// snapshots or layers with the same chunk share one copy), bounded in memory (least recently used
/// chunks go first), with an optional on-disk tier, one fetch per chunk however many faults want it
/// (in-flight de-duplication), deadlines, bounded retries with back-off, and digest checks (a chunk
/// whose bytes do not hash to its name is never handed out).
///
/// Lookups never block: a serving loop asks, and gets the chunk, "pending" (its fetch runs on
/// Swift concurrency's threads, never the loop's) or "failed" (after every retry).
///
/// At most ``maxInFlight`` fetches run at once. A chunk asked for beyond that waits in a bounded
/// queue (``maxQueued``): a fault's chunk first, then read-ahead and working-set chunks in the
/// order they were asked for; each fetch that ends starts the next queued one.
public final class ChunkCache: Sendable {
  /// What a lookup found.
  public enum Lookup: Sendable {
    /// The chunk, verified.
    case ready(ChunkBuffer)
    /// Being fetched, or waiting for a fetch slot (`started`: this lookup was the chunk's miss,
    /// which started or queued its fetch).
    case pending(started: Bool)
    /// Its fetch failed (every attempt), for this reason.
    case failed(String)
  }

  /// The cache's counters.
  public struct Statistics: Sendable, Hashable, Codable {
    /// Lookups that found the chunk in memory.
    public var hits = 0
    /// Lookups that started a fetch.
    public var misses = 0
    /// Lookups that found their chunk on its way (a waiting fault's retries included).
    public var joinedInFlight = 0
    /// Fetches started (network or disk).
    public var fetches = 0
    /// Chunks read from the network.
    public var chunksFetched = 0
    /// Chunks read from the disk tier.
    public var diskHits = 0
    /// Bytes read from the network.
    public var bytesFetched = 0
    /// Attempts that failed and were retried.
    public var retries = 0
    /// Chunks whose every attempt failed.
    public var failures = 0
    /// Fetched bytes whose digest did not match (never served).
    public var digestMismatches = 0
    /// Chunks evicted from memory.
    public var evictions = 0
    /// Bytes held in memory now (in-flight chunks included).
    public var bytesCached = 0
    /// Bytes of chunk files in the on-disk tier now.
    public var diskBytes = 0
    /// Chunk files deleted to keep the on-disk tier within its bound.
    public var diskEvictions = 0
    /// Read-ahead and working-set chunks that waited in the queue for a free fetch.
    public var queued = 0

    /// All zero.
    public init() {}

    enum CodingKeys: String, CodingKey {
      case hits, misses, fetches, retries, failures, evictions
      case joinedInFlight = "joined_in_flight"
      case chunksFetched = "chunks_fetched"
      case diskHits = "disk_hits"
      case bytesFetched = "bytes_fetched"
      case digestMismatches = "digest_mismatches"
      case bytesCached = "bytes_cached"
      case diskBytes = "disk_bytes"
      case diskEvictions = "disk_evictions"
      case queued
    }
  }

  private enum Entry {
    case loading(bytes: Int)
    case ready(ChunkBuffer, lastUse: UInt64)
    /// Failed from `origin` (a source and path): a lookup that would fetch from elsewhere (another
    /// snapshot's store with the same chunk) tries its own store instead of inheriting the failure.
    case failed(String, until: ContinuousClock.Instant, origin: String)
  }

  private struct State {
    var entries: [String: Entry] = [:]
    var bytes = 0
    var inFlight = 0
    var loadingBytes = 0
    var tick: UInt64 = 0
    var statistics = Statistics()
    /// Chunks a fault waits for that could not start (every fetch slot busy), oldest first.
    var urgent = FetchQueue()
    /// Read-ahead and working-set chunks waiting for a fetch slot, in the order asked.
    var ahead = FetchQueue()
  }

  /// Fetches waiting for a slot, without duplicates.
  struct FetchQueue {
    private var items: [(digest: String, fetch: ChunkFetch)] = []
    private var head = 0
    private var members = Set<String>()

    var count: Int { items.count - head }

    /// Adds `digest` unless it waits already or the queue holds `limit`; whether it was added.
    mutating func append(_ digest: String, _ fetch: ChunkFetch, limit: Int) -> Bool {
      guard count < limit, members.insert(digest).inserted else { return false }
      items.append((digest, fetch))
      return true
    }

    mutating func popFirst() -> (digest: String, fetch: ChunkFetch)? {
      guard head < items.count else { return nil }
      let first = items[head]
      head += 1
      members.remove(first.digest)
      if head == items.count {
        items.removeAll(keepingCapacity: true)
        head = 0
      } else if head >= 1024 && head * 2 >= items.count {
        items.removeFirst(head)
        head = 0
      }
      return first
    }

    /// The first waiting fetch, left in place.
    var first: (digest: String, fetch: ChunkFetch)? { head < items.count ? items[head] : nil }
  }

  /// The settings.
  public let configuration: RemoteSnapshotConfiguration
  private let state = Mutex(State())
  private let logger: Logger
  private let metrics: ChunkCacheMetrics
  /// Called when a chunk arrives or fails (the pager wakes its loops to retry waiting faults).
  private let arrival = Mutex<(@Sendable () -> Void)?>(nil)
  /// The most fetches at once: beyond it a chunk waits in a queue (a fault's first) and starts as
  /// a fetch ends, so a flood of distinct chunks cannot start unbounded work or overrun the memory
  /// bound with chunks in flight.
  public static let maxInFlight = 32
  /// The most chunks each queue (faults' chunks, read-ahead) holds; beyond it read-ahead is dropped
  /// (a fault's chunk is asked for again by the fault's next retry).
  public static let maxQueued = 4096
  /// The on-disk tier, when configured.
  private let disk: ChunkDiskTier?
  /// How long a failed chunk answers "failed" before a new fault tries again.
  private let failureHold: Duration = .seconds(1)

  /// A cache with `configuration`'s bounds, counting with `metricsFactory` (the bootstrapped one
  /// when nil).
  public init(configuration: RemoteSnapshotConfiguration = .init(), logger: Logger = Logger(label: "uffd.chunk-cache"),
              metricsFactory: (any MetricsFactory)? = nil) throws(SnapshotSourceError) {
    try configuration.validate()
    disk = try configuration.cacheDirectory.map { (directory) throws(SnapshotSourceError) in
      try ChunkDiskTier(directory: directory, bound: configuration.diskCacheBytes)
    }
    self.configuration = configuration
    self.logger = logger
    metrics = ChunkCacheMetrics(factory: metricsFactory ?? MetricsSystem.factory)
  }

  /// The chunk named `digest`: ready, pending (its fetch is started here if none runs), or failed.
  /// Never blocks.
  public func chunk(_ digest: String, fetch: ChunkFetch) -> Lookup {
    lookup(digest, fetch: fetch, counted: true)
  }

  /// Starts fetching `digest` if it is neither cached nor in flight (read-ahead), or queues it
  /// when every fetch slot is busy; never blocks.
  public func prefetch(_ digest: String, fetch: ChunkFetch) {
    _ = lookup(digest, fetch: fetch, counted: false)
  }

  /// ``prefetch(_:fetch:)`` for each chunk of `chunks` in order (a working set's chunks in the
  /// order it was recorded): fetched as slots free, in that order, behind any fault's chunk.
  public func prefetch(_ chunks: [(digest: String, fetch: ChunkFetch)]) {
    for chunk in chunks { prefetch(chunk.digest, fetch: chunk.fetch) }
  }

  /// Calls `wake` (on a fetching thread) each time a chunk arrives or fails for good, so faults
  /// waiting for it are retried at once rather than at their next poll.
  public func whenChunkArrives(_ wake: @escaping @Sendable () -> Void) { arrival.withLock { $0 = wake } }

  /// Whether `digest` is in memory now.
  public func contains(_ digest: String) -> Bool {
    state.withLock { if case .ready = $0.entries[digest] { true } else { false } }
  }

  /// The counters now.
  public var statistics: Statistics {
    var statistics = state.withLock { $0.statistics }
    if let usage = disk?.usage {
      statistics.diskBytes = usage.bytes
      statistics.diskEvictions = usage.evictions
    }
    return statistics
  }

  /// Drops every chunk from memory (the disk tier stays): a benchmark's cold start.
  public func removeAll() {
    state.withLock { state in
      state.entries = state.entries.filter { if case .loading = $0.value { true } else { false } }
      state.bytes = state.entries.values.reduce(0) { if case .loading(let bytes) = $1 { $0 + bytes } else { $0 } }
      state.statistics.bytesCached = state.bytes
    }
  }

  private func lookup(_ digest: String, fetch: ChunkFetch, counted: Bool) -> Lookup {
    let now = ContinuousClock.now
    let (answer, start) = state.withLock { state -> (Lookup, Bool) in
      state.tick &+= 1
      switch state.entries[digest] {
      case .ready(let buffer, _):
        state.entries[digest] = .ready(buffer, lastUse: state.tick)
        if counted { state.statistics.hits += 1 }
        return (.ready(buffer), false)
      case .loading:
        if counted { state.statistics.joinedInFlight += 1 }
        return (.pending(started: false), false)
      case .failed(let why, let until, let origin) where now < until && origin == fetch.origin:
        return (.failed(why), false)
      case .failed, nil:
        guard claim(&state, digest, fetch) else {
          // Every slot busy: queued, a fault's chunk ahead of read-ahead. The first lookup of a
          // fault counts as its miss; its retries find it queued and start nothing more.
          guard counted else {
            if state.ahead.append(digest, fetch, limit: Self.maxQueued) { state.statistics.queued += 1 }
            return (.pending(started: false), false)
          }
          let added = state.urgent.append(digest, fetch, limit: Self.maxQueued)
          if added { state.statistics.misses += 1 }
          return (.pending(started: added), false)
        }
        if counted { state.statistics.misses += 1 }
        return (.pending(started: true), true)
      }
    }
    if counted {
      if case .ready = answer { metrics.hits.increment() } else if start { metrics.misses.increment() }
    }
    if start { launch(digest, fetch) }
    return answer
  }

  /// Marks `digest` as loading when a fetch slot is free and its bytes fit the memory bound
  /// (chunks in flight cannot be evicted: they alone must fit); whether it did.
  private func claim(_ state: inout State, _ digest: String, _ fetch: ChunkFetch) -> Bool {
    guard state.inFlight < Self.maxInFlight,
          state.loadingBytes + fetch.bytes <= configuration.cacheBytes || state.inFlight == 0 else { return false }
    state.inFlight += 1
    state.loadingBytes += fetch.bytes
    state.entries[digest] = .loading(bytes: fetch.bytes)
    state.bytes += fetch.bytes
    state.statistics.fetches += 1
    evict(&state)
    state.statistics.bytesCached = state.bytes
    return true
  }

  /// Starts the queued fetches the free slots allow (a fault's chunks first), after a fetch ends.
  private func startQueued() {
    let started = state.withLock { state -> [(String, ChunkFetch)] in
      var started: [(String, ChunkFetch)] = []
      let now = ContinuousClock.now
      while state.inFlight < Self.maxInFlight {
        guard let next = state.urgent.first ?? state.ahead.first else { break }
        switch state.entries[next.digest] {
        case .ready, .loading:
          _ = state.urgent.first != nil ? state.urgent.popFirst() : state.ahead.popFirst()
          continue  // arrived meanwhile, or started by a lookup
        case .failed(_, let until, let origin) where now < until && origin == next.fetch.origin:
          _ = state.urgent.first != nil ? state.urgent.popFirst() : state.ahead.popFirst()
          continue
        case .failed, nil:
          guard claim(&state, next.digest, next.fetch) else { return started }  // memory bound: wait for more to end
          _ = state.urgent.first != nil ? state.urgent.popFirst() : state.ahead.popFirst()
          started.append((next.digest, next.fetch))
        }
      }
      return started
    }
    for (digest, fetch) in started { launch(digest, fetch) }
  }

  private func launch(_ digest: String, _ fetch: ChunkFetch) {
    // On the fetch threads, never the shared pool the application may be blocking.
    Task(executorPreference: FetchExecutor.shared) { [self] in
      await run(digest, fetch)
      startQueued()
    }
  }

  /// Evicts least recently used chunks until the memory bound holds (in-flight chunks stay).
  private func evict(_ state: inout State) {
    while state.bytes > configuration.cacheBytes {
      var oldest: (key: String, use: UInt64, bytes: Int)?
      for (key, entry) in state.entries {
        if case .ready(let buffer, let use) = entry, use < (oldest?.use ?? .max) { oldest = (key, use, buffer.count) }
      }
      guard let oldest else { return }
      state.entries.removeValue(forKey: oldest.key)
      state.bytes -= oldest.bytes
      state.statistics.evictions += 1
    }
  }

  /// Fetches one chunk: the disk tier, then the source, each attempt bounded, retried with
  /// back-off while the error may pass, the digest checked before the chunk is published.
  private func run(_ digest: String, _ fetch: ChunkFetch) async {
    let clock = ContinuousClock()
    let started = clock.now
    if let disk, let bytes = await disk.read(digest, timeout: configuration.attemptTimeout) {
      if Self.digest(bytes) == digest, let buffer = ChunkBuffer(bytes) {
        publish(digest, buffer, fromNetwork: false, elapsed: clock.now - started)
        return
      }
      disk.discard(digest)  // damaged on disk: never served, fetched again below
    }
    var lastError = "no attempt"
    var delay = configuration.backoff
    for attempt in 1...configuration.attempts {
      do {
        let buffer = try await fetch.source.readChunk(fetch.path, bytes: fetch.bytes, timeout: configuration.attemptTimeout)
        guard Self.digest(buffer.bytes) == digest else {
          // A wrong chunk (a misbehaving server or a damaged object): never served; tried again.
          state.withLock { $0.statistics.digestMismatches += 1 }
          metrics.digestMismatches.increment()
          throw SnapshotSourceError.badResponse("\(fetch.path): the bytes do not hash to the chunk's digest")
        }
        publish(digest, buffer, fromNetwork: true, elapsed: clock.now - started)
        if let disk { await disk.write(digest, bytes: Array(buffer.bytes), timeout: configuration.attemptTimeout) }
        return
      } catch {
        lastError = "\(error)"
        let retryable = (error as? SnapshotSourceError)?.isRetryable ?? true
        guard retryable, attempt < configuration.attempts else { break }
        state.withLock { $0.statistics.retries += 1 }
        metrics.retries.increment()
        logger.info("chunk fetch failed, retrying", metadata: [
          "chunk": "\(digest.prefix(16))", "attempt": "\(attempt)", "error": "\(error)", "source": "\(fetch.source.location)"])
        try? await Task.sleep(for: delay)
        delay = delay * 2
      }
    }
    logger.error("chunk fetch failed", metadata: [
      "chunk": "\(digest.prefix(16))", "attempts": "\(configuration.attempts)", "error": "\(lastError)", "source": "\(fetch.source.location)"])
    metrics.failures.increment()
    state.withLock { state in
      if case .loading(let bytes) = state.entries[digest] {
        state.bytes -= bytes
        state.loadingBytes -= bytes
      }
      state.inFlight -= 1
      state.entries[digest] = .failed(lastError, until: .now + failureHold, origin: fetch.origin)
      state.statistics.failures += 1
      state.statistics.bytesCached = state.bytes
    }
    arrival.withLock { $0 }?()
  }

  private func publish(_ digest: String, _ buffer: ChunkBuffer, fromNetwork: Bool, elapsed: Duration) {
    metrics.fetchLatency.recordNanoseconds(elapsed.nanosecondsClamped)
    if fromNetwork { metrics.bytesFetched.increment(by: Int64(buffer.count)) }
    state.withLock { state in
      if case .loading(let bytes) = state.entries[digest] {
        state.bytes -= bytes
        state.loadingBytes -= bytes
      }
      state.inFlight -= 1
      state.tick &+= 1
      state.entries[digest] = .ready(buffer, lastUse: state.tick)
      state.bytes += buffer.count
      if fromNetwork {
        state.statistics.chunksFetched += 1
        state.statistics.bytesFetched += buffer.count
      } else {
        state.statistics.diskHits += 1
      }
      evict(&state)
      state.statistics.bytesCached = state.bytes
      metrics.bytesCached.record(state.bytes)
    }
    arrival.withLock { $0 }?()
  }

  static func digest(_ bytes: [UInt8]) -> String { SigV4Signer.hex(SHA256.hash(data: bytes)) }

  static func digest(_ bytes: UnsafeRawBufferPointer) -> String {
    var hasher = SHA256()
    hasher.update(bufferPointer: bytes)
    return SigV4Signer.hex(hasher.finalize())
  }
}

/// The cache's metrics (hits, misses, fetch latency, bytes, failures).
struct ChunkCacheMetrics: Sendable {
  let hits: Counter
  let misses: Counter
  let retries: Counter
  let failures: Counter
  let digestMismatches: Counter
  let bytesFetched: Counter
  let bytesCached: Gauge
  let fetchLatency: CoreMetrics.Timer

  init(factory: any MetricsFactory) {
    hits = Counter(label: "uffd_chunk_cache_lookups_total", dimensions: [("result", "hit")], factory: factory)
    misses = Counter(label: "uffd_chunk_cache_lookups_total", dimensions: [("result", "miss")], factory: factory)
    retries = Counter(label: "uffd_chunk_fetch_retries_total", factory: factory)
    failures = Counter(label: "uffd_chunk_fetch_failures_total", factory: factory)
    digestMismatches = Counter(label: "uffd_chunk_digest_mismatches_total", factory: factory)
    bytesFetched = Counter(label: "uffd_chunk_fetched_bytes_total", factory: factory)
    bytesCached = Gauge(label: "uffd_chunk_cache_bytes", factory: factory)
    fetchLatency = CoreMetrics.Timer(label: "uffd_chunk_fetch_seconds", factory: factory)
  }
}
