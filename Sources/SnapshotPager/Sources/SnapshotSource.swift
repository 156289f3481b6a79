/// Where snapshot bytes come from: a local folder, an HTTP(S) range server, an S3-compatible
/// object store. A source is a prefix; objects under it (a manifest, its chunks) are named by
/// paths relative to it, so a packed snapshot folder can be copied to any store as it is.
///
/// Implement it to plug in another store (a peer's cache, a CDN with signed URLs): the chunk cache
/// and `uffd snapshot push` use nothing else. Every call is bounded by its `timeout`: a source
/// never waits longer, and reports why it gave up.
public protocol SnapshotSource: Sendable {
  /// The source's address, for logs (never with credentials).
  var location: String { get }

  /// The size and identity of object `path`.
  func info(_ path: String, timeout: Duration) async throws(SnapshotSourceError) -> SnapshotObjectInfo

  /// Bytes `range` of object `path` (the whole object when nil). With `expecting`, an object whose
  /// identity changed since is refused (``SnapshotSourceError/objectChanged(_:)``), never mixed.
  func read(_ path: String, range: Range<Int>?, expecting: SnapshotObjectIdentity?,
            timeout: Duration) async throws(SnapshotSourceError) -> [UInt8]

  /// Stores `bytes` as object `path` (creating or replacing it).
  func write(_ path: String, bytes: [UInt8], timeout: Duration) async throws(SnapshotSourceError)

  /// The first `bytes` bytes of object `path` (a chunk, read whole), in page-aligned memory the
  /// chunk cache serves from. The default reads them with ``read(_:range:expecting:timeout:)``
  /// and copies them; the HTTP sources receive them in place.
  func readChunk(_ path: String, bytes: Int, timeout: Duration) async throws(SnapshotSourceError) -> ChunkBuffer
}

extension SnapshotSource {
  /// ``read(_:range:expecting:timeout:)``, copied into a chunk buffer.
  public func readChunk(_ path: String, bytes: Int, timeout: Duration) async throws(SnapshotSourceError) -> ChunkBuffer {
    let read = try await self.read(path, range: 0..<bytes, expecting: nil, timeout: timeout)
    guard let buffer = ChunkBuffer(read) else { throw .transport("out of memory for a chunk") }
    return buffer
  }
}

/// What identifies one version of an object: a changed object has a different identity.
public struct SnapshotObjectIdentity: Sendable, Hashable, CustomStringConvertible {
  /// The entity tag, when the store gives one.
  public var etag: String?
  /// The last modification time as the store gave it (an HTTP date, or a file's mtime).
  public var lastModified: String?

  /// An identity.
  public init(etag: String?, lastModified: String?) {
    self.etag = etag
    self.lastModified = lastModified
  }

  /// Whether `other` is provably a different version (a field both sides have differs).
  public func differs(from other: SnapshotObjectIdentity) -> Bool {
    if let etag, let theirs = other.etag { return etag != theirs }
    if let lastModified, let theirs = other.lastModified { return lastModified != theirs }
    return false
  }

  /// `etag=…, last-modified=…`.
  public var description: String { "etag=\(etag ?? "none"), last-modified=\(lastModified ?? "none")" }
}

/// An object's size and identity.
public struct SnapshotObjectInfo: Sendable, Hashable {
  /// Its length in bytes.
  public var size: Int
  /// Its version.
  public var identity: SnapshotObjectIdentity

  /// An object's information.
  public init(size: Int, identity: SnapshotObjectIdentity) {
    self.size = size
    self.identity = identity
  }
}

/// Why a source could not read or write.
public enum SnapshotSourceError: Error, Sendable, Hashable, CustomStringConvertible {
  /// No such object.
  case notFound(String)
  /// The object is not the version read before (its ETag or modification time changed): a
  /// snapshot's bytes are never mixed from two versions.
  case objectChanged(String)
  /// The request did not complete within its timeout.
  case timedOut(String)
  /// The server answered with an error status (5xx are worth retrying; 4xx are not).
  case status(Int, String)
  /// The store refused the credentials or the signature (401, 403).
  case denied(String)
  /// The connection failed (refused, reset, DNS), or a local read or write failed.
  case transport(String)
  /// The answer was not what was asked for (short body, bad range).
  case badResponse(String)
  /// The address, endpoint or credentials are unusable as given.
  case badConfiguration(String)

  /// Whether trying again later may succeed (timeouts, 5xx, transport errors).
  public var isRetryable: Bool {
    switch self {
    case .timedOut, .transport: true
    case .status(let code, _): code >= 500 || code == 429
    case .badResponse: true
    case .notFound, .objectChanged, .denied, .badConfiguration: false
    }
  }

  /// What happened, and what to do.
  public var description: String {
    switch self {
    case .notFound(let what): "not found: \(what)"
    case .objectChanged(let what): "the object changed since it was first read (refused, not mixed): \(what)"
    case .timedOut(let what): "timed out: \(what)"
    case .status(let code, let what): "HTTP \(code): \(what)"
    case .denied(let what): "access denied (check the credentials, region and endpoint): \(what)"
    case .transport(let what): "connection failed: \(what)"
    case .badResponse(let what): "unexpected response: \(what)"
    case .badConfiguration(let what): "bad source configuration: \(what)"
    }
  }
}

/// Runs `operation`, giving up with ``SnapshotSourceError/timedOut(_:)`` after `timeout` (the
/// operation is cancelled, which cancels its HTTP request).
func withTimeout<T: Sendable>(_ timeout: Duration, _ what: String,
                              _ operation: @escaping @Sendable () async throws(SnapshotSourceError) -> T) async throws(SnapshotSourceError) -> T {
  let result: Result<T, SnapshotSourceError> = await withTaskGroup(of: Result<T, SnapshotSourceError>?.self) { group in
    group.addTask {
      do throws(SnapshotSourceError) { return .success(try await operation()) } catch { return .failure(error) }
    }
    group.addTask {
      do { try await Task.sleep(for: timeout) } catch { return nil }
      return .failure(.timedOut("\(what) after \(timeout)"))
    }
    var outcome: Result<T, SnapshotSourceError> = .failure(.timedOut(what))
    while let next = await group.next() {
      if let next {
        outcome = next
        break
      }
    }
    group.cancelAll()
    return outcome
  }
  return try result.get()
}
