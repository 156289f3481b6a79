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
public final class ChunkCache: Sendable {
  /// What a lookup found.
  public enum Lookup: Sendable {
    /// The chunk, verified.
    case ready(ChunkBuffer)
    /// Being fetched (`started`: by this lookup).
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
  }

  /// The settings.
  public let configuration: RemoteSnapshotConfiguration
  private let state = Mutex(State())
  private let logger: Logger
  private let metrics: ChunkCacheMetrics
  /// Called when a chunk arrives or fails (the pager wakes its loops to retry waiting faults).
  private let arrival = Mutex<(@Sendable () -> Void)?>(nil)
  /// The most fetches at once: beyond it a fault's lookup answers "pending" without starting one
  /// (its retry starts it once a fetch ends) and read-ahead is dropped, so a flood of distinct
  /// chunks cannot start unbounded work or overrun the memory bound with chunks in flight.
  public static let maxInFlight = 32
  /// How long a failed chunk answers "failed" before a new fault tries again.
  private let failureHold: Duration = .seconds(1)

  /// A cache with `configuration`'s bounds, counting with `metricsFactory` (the bootstrapped one
  /// when nil).
  public init(configuration: RemoteSnapshotConfiguration = .init(), logger: Logger = Logger(label: "uffd.chunk-cache"),
              metricsFactory: (any MetricsFactory)? = nil) throws(SnapshotSourceError) {
    try configuration.validate()
    if let directory = configuration.cacheDirectory {
      try LocalFileSource.makeDirectories(forFile: directory + "/x")
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

  /// Starts fetching `digest` if it is neither cached nor in flight (read-ahead); never blocks.
  public func prefetch(_ digest: String, fetch: ChunkFetch) {
    _ = lookup(digest, fetch: fetch, counted: false)
  }

  /// Calls `wake` (on a fetching thread) each time a chunk arrives or fails for good, so faults
  /// waiting for it are retried at once rather than at their next poll.
  public func whenChunkArrives(_ wake: @escaping @Sendable () -> Void) { arrival.withLock { $0 = wake } }

  /// Whether `digest` is in memory now.
  public func contains(_ digest: String) -> Bool {
    state.withLock { if case .ready = $0.entries[digest] { true } else { false } }
  }

  /// The counters now.
  public var statistics: Statistics { state.withLock { $0.statistics } }

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
        // Chunks in flight cannot be evicted: they alone must fit the bound.
        guard state.inFlight < Self.maxInFlight, state.loadingBytes + fetch.bytes <= configuration.cacheBytes || state.inFlight == 0 else {
          return (.pending(started: false), false)
        }
        state.inFlight += 1
        state.loadingBytes += fetch.bytes
        if counted { state.statistics.misses += 1 }
        state.entries[digest] = .loading(bytes: fetch.bytes)
        state.bytes += fetch.bytes
        state.statistics.fetches += 1
        evict(&state)
        state.statistics.bytesCached = state.bytes
        return (.pending(started: true), true)
      }
    }
    if counted {
      if case .ready = answer { metrics.hits.increment() } else if start { metrics.misses.increment() }
    }
    if start {
      // On the fetch threads, never the shared pool the application may be blocking.
      Task(executorPreference: FetchExecutor.shared) { [self] in await run(digest, fetch) }
    }
    return answer
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
    if let directory = configuration.cacheDirectory,
       let bytes = try? await LocalFileSource(directory: directory).read(digest, range: nil, expecting: nil, timeout: configuration.attemptTimeout),
       Self.digest(bytes) == digest, let buffer = ChunkBuffer(bytes) {
      publish(digest, buffer, fromNetwork: false, elapsed: clock.now - started)
      return
    }
    var lastError = "no attempt"
    var delay = configuration.backoff
    for attempt in 1...configuration.attempts {
      do {
        let bytes = try await fetch.source.read(fetch.path, range: 0..<fetch.bytes, expecting: nil, timeout: configuration.attemptTimeout)
        guard Self.digest(bytes) == digest else {
          // A wrong chunk (a misbehaving server or a damaged object): never served; tried again.
          state.withLock { $0.statistics.digestMismatches += 1 }
          metrics.digestMismatches.increment()
          throw SnapshotSourceError.badResponse("\(fetch.path): the bytes do not hash to the chunk's digest")
        }
        guard let buffer = ChunkBuffer(bytes) else { throw SnapshotSourceError.transport("out of memory for a chunk") }
        publish(digest, buffer, fromNetwork: true, elapsed: clock.now - started)
        if let directory = configuration.cacheDirectory {
          try? await LocalFileSource(directory: directory).write(digest, bytes: bytes, timeout: configuration.attemptTimeout)
        }
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
