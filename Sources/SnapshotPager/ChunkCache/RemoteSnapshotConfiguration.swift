/// How a pager reads snapshots that live elsewhere (HTTP range servers, S3-compatible stores):
/// the host-wide chunk cache, the fetch deadlines and retries, and what a fault gets when its
/// chunk cannot be had.
public struct RemoteSnapshotConfiguration: Sendable, Hashable {
  /// What a fault whose chunk cannot be fetched (after every retry, or past its deadline) gets.
  public enum FailurePolicy: String, Sendable, Hashable, CaseIterable {
    /// The page is poisoned (`UFFDIO_POISON`, Linux 6.6+): the guest's access gets SIGBUS, the
    /// session goes on. Where the kernel has no POISON, the session ends instead (zeros would be
    /// wrong bytes).
    case poison
    /// The session ends (its client sees its faults fail when the userfaultfd closes).
    case endSession = "end-session"
  }

  /// The memory tier's bound in bytes (chunks in flight count too). Default 1 GiB.
  public var cacheBytes: Int
  /// A folder for the on-disk tier (chunks by digest), if any.
  public var cacheDirectory: String?
  /// The on-disk tier's bound in bytes: past it, the least recently used chunk files are deleted.
  /// Default 8 GiB.
  public var diskCacheBytes: Int
  /// An S3 endpoint overriding `AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL`.
  public var endpoint: String?
  /// One request's bound.
  public var attemptTimeout: Duration
  /// The most attempts per chunk (1 = no retry).
  public var attempts: Int
  /// The first retry's back-off (doubling after each retry).
  public var backoff: Duration
  /// A fault waits at most this long for its chunk before the policy applies.
  public var faultDeadline: Duration
  /// After a sequential fault, how many following chunks are fetched ahead.
  public var readAheadChunks: Int
  /// What a fault whose chunk cannot be had gets.
  public var onFailure: FailurePolicy

  /// The valid cache bounds (16 MiB to 1 TiB).
  public static let cacheBytesRange = (16 << 20)...(1 << 40)
  /// The valid on-disk bounds (16 MiB to 1 PiB).
  public static let diskCacheBytesRange = (16 << 20)...(1 << 50)
  /// The valid attempt counts.
  public static let attemptsRange = 1...16
  /// The valid read-ahead.
  public static let readAheadRange = 0...64

  /// The defaults: 1 GiB in memory, 8 GiB on disk (when a folder is given), 2 s per attempt, 3
  /// attempts from 50 ms back-off, 5 s per fault, 8 chunks of read-ahead, poison.
  public init(cacheBytes: Int = 1 << 30, cacheDirectory: String? = nil, diskCacheBytes: Int = 8 << 30, endpoint: String? = nil,
              attemptTimeout: Duration = .seconds(2), attempts: Int = 3, backoff: Duration = .milliseconds(50),
              faultDeadline: Duration = .seconds(5), readAheadChunks: Int = 8, onFailure: FailurePolicy = .poison) {
    self.cacheBytes = cacheBytes
    self.cacheDirectory = cacheDirectory
    self.diskCacheBytes = diskCacheBytes
    self.endpoint = endpoint
    self.attemptTimeout = attemptTimeout
    self.attempts = attempts
    self.backoff = backoff
    self.faultDeadline = faultDeadline
    self.readAheadChunks = readAheadChunks
    self.onFailure = onFailure
  }

  /// Checks every value.
  public func validate() throws(SnapshotSourceError) {
    guard Self.cacheBytesRange.contains(cacheBytes) else {
      throw .badConfiguration("cache size \(cacheBytes) bytes: from 16 MiB to 1 TiB")
    }
    guard Self.diskCacheBytesRange.contains(diskCacheBytes) else {
      throw .badConfiguration("on-disk cache size \(diskCacheBytes) bytes: from 16 MiB to 1 PiB")
    }
    guard Self.attemptsRange.contains(attempts) else { throw .badConfiguration("attempts \(attempts): 1 to 16") }
    guard Self.readAheadRange.contains(readAheadChunks) else { throw .badConfiguration("read-ahead \(readAheadChunks) chunks: 0 to 64") }
    guard attemptTimeout > .zero, faultDeadline > .zero, backoff >= .zero else {
      throw .badConfiguration("timeouts must be positive")
    }
  }
}
