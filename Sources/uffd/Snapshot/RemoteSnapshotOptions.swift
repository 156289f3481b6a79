import ArgumentParser
import SnapshotPager

/// `uffd serve`'s options for chunked snapshots (a SNAPSHOT given as `s3://`, `http(s)://` or a
/// local `.json` manifest).
struct RemoteSnapshotOptions: ParsableArguments {
  @Option(help: ArgumentHelp("The host-wide chunk cache's memory bound (16MiB to 1TiB; default 1GiB).", valueName: "size"))
  var cacheSize = ByteCount(bytes: 1 << 30)
  @Option(help: "A folder for the chunk cache's on-disk tier (chunks by digest).")
  var cacheDir: String?
  @Option(help: ArgumentHelp(
    "The on-disk tier's bound (16MiB to 1PiB; default 8GiB): past it, the least recently used chunk files are deleted.",
    valueName: "size"))
  var cacheDirSize = ByteCount(bytes: 8 << 30)
  @Option(help: "An S3 endpoint (overrides AWS_ENDPOINT_URL_S3 and AWS_ENDPOINT_URL; addressed path-style).")
  var endpoint: String?
  @Option(parsing: .unconditional, help: "Seconds one chunk request may take (0.01-600).")
  var fetchTimeout: Double = 2
  @Option(parsing: .unconditional, help: "Attempts per chunk, with doubling back-off from 50 ms (1-16).")
  var fetchAttempts = 3
  @Option(parsing: .unconditional, help: "Seconds a fault waits for its chunk before --on-fetch-failure applies (0.01-600).")
  var faultDeadline: Double = 5
  @Option(parsing: .unconditional, help: "Chunks fetched ahead of a missed one (0-64).")
  var readAhead = 8
  @Option(help: ArgumentHelp(
    "What a fault whose chunk cannot be fetched gets: poison (SIGBUS in the guest, the session goes on; the session ends where the kernel lacks UFFDIO_POISON, before 6.6) or end-session.",
    valueName: "poison|end-session"))
  var onFetchFailure = "poison"

  /// The configuration these options give.
  var configuration: RemoteSnapshotConfiguration {
    RemoteSnapshotConfiguration(
      cacheBytes: cacheSize.bytes, cacheDirectory: cacheDir, diskCacheBytes: cacheDirSize.bytes, endpoint: endpoint,
      attemptTimeout: .milliseconds(Int64(fetchTimeout * 1000)), attempts: fetchAttempts,
      faultDeadline: .milliseconds(Int64(faultDeadline * 1000)), readAheadChunks: readAhead,
      onFailure: RemoteSnapshotConfiguration.FailurePolicy(rawValue: onFetchFailure) ?? .poison)
  }

  func check(once: Bool, snapshots: [String]) throws {
    guard RemoteSnapshotConfiguration.cacheBytesRange.contains(cacheSize.bytes) else {
      throw ValidationError("--cache-size must be 16MiB to 1TiB, got \(cacheSize.bytes) bytes")
    }
    guard RemoteSnapshotConfiguration.diskCacheBytesRange.contains(cacheDirSize.bytes) else {
      throw ValidationError("--cache-dir-size must be 16MiB to 1PiB, got \(cacheDirSize.bytes) bytes")
    }
    for (value, option) in [(fetchTimeout, "--fetch-timeout"), (faultDeadline, "--fault-deadline")] {
      guard value.isFinite, value >= 0.01, value <= 600 else { throw ValidationError("\(option) must be 0.01 to 600 seconds, got \(value)") }
    }
    try ArgumentChecks.check(fetchAttempts, in: RemoteSnapshotConfiguration.attemptsRange, "--fetch-attempts")
    try ArgumentChecks.check(readAhead, in: RemoteSnapshotConfiguration.readAheadRange, "--read-ahead")
    guard RemoteSnapshotConfiguration.FailurePolicy(rawValue: onFetchFailure) != nil else {
      throw ValidationError("--on-fetch-failure takes poison or end-session, got \(onFetchFailure)")
    }
    if once, snapshots.contains(where: RemoteSnapshots.isManifest) {
      throw ValidationError("--once serves a memory file; serve a chunked snapshot (a manifest or URL) with the daemon (no --once)")
    }
  }
}

/// The shared range check, reachable from a type with a `check` method of its own.
private enum ArgumentChecks {
  static func check(_ value: Int, in range: ClosedRange<Int>, _ option: String) throws {
    try uffd.check(value, in: range, option)
  }
}
