import AsyncHTTPClient
import NIOCore
import NIOHTTP1

/// Snapshot objects behind an HTTP(S) server that answers range requests (nginx, a CDN, any
/// static file server): `GET` with `Range`, `HEAD` for size and identity, `PUT` to upload (a
/// server with WebDAV-style PUT, such as nginx's `dav_methods PUT`).
///
/// A read that expects an identity sends `If-Match` (or `If-Unmodified-Since`) and also checks the
/// answer's own ETag, so a server that ignores the precondition still cannot mix two versions.
public struct HTTPRangeSource: SnapshotSource {
  /// The prefix URL (scheme, host, port, path), without a trailing slash.
  public let baseURL: String
  private let client: HTTPClient

  /// A source under `baseURL` (`http://host:port/prefix`), using `client` (default: the one every
  /// remote source of the process shares, ``HTTPExchange/client``).
  public init(baseURL: String, client: HTTPClient = HTTPExchange.client) throws(SnapshotSourceError) {
    guard baseURL.hasPrefix("http://") || baseURL.hasPrefix("https://") else {
      throw .badConfiguration("not an http(s) URL: \(baseURL)")
    }
    self.baseURL = baseURL.hasSuffix("/") ? String(baseURL.dropLast()) : baseURL
    self.client = client
  }

  /// The prefix URL.
  public var location: String { baseURL }

  /// The URL of object `path` (`..` components resolved).
  public func url(_ path: String) -> String { ObjectPath.join(baseURL, path) }

  /// `HEAD`: the size (Content-Length) and identity (ETag, Last-Modified).
  public func info(_ path: String, timeout: Duration) async throws(SnapshotSourceError) -> SnapshotObjectInfo {
    let address = url(path)
    var request = HTTPClientRequest(url: address)
    request.method = .HEAD
    let (head, _) = try await HTTPExchange.perform(client, request, what: "HEAD \(address)", timeout: timeout, maxBody: 0)
    guard let length = head.headers.first(name: "content-length").flatMap(Int.init) else {
      throw .badResponse("HEAD \(address): no Content-Length")
    }
    return SnapshotObjectInfo(size: length, identity: HTTPExchange.identity(head.headers))
  }

  /// `GET` with `Range` (and `If-Match` when an identity is expected).
  public func read(_ path: String, range: Range<Int>?, expecting: SnapshotObjectIdentity?,
                   timeout: Duration) async throws(SnapshotSourceError) -> [UInt8] {
    let address = url(path)
    var request = HTTPClientRequest(url: address)
    request.method = .GET
    HTTPExchange.addPreconditions(&request.headers, range: range, expecting: expecting)
    let (head, body) = try await HTTPExchange.perform(
      client, request, what: "GET \(address)", timeout: timeout, maxBody: range?.count ?? HTTPExchange.maxObject)
    return try HTTPExchange.checkedBody(head, body, range: range, expecting: expecting, what: address)
  }

  /// `GET` with `Range`, received straight into the chunk buffer.
  public func readChunk(_ path: String, bytes: Int, timeout: Duration) async throws(SnapshotSourceError) -> ChunkBuffer {
    let address = url(path)
    var headers = HTTPHeaders()
    HTTPExchange.addPreconditions(&headers, range: 0..<bytes, expecting: nil)
    return try await HTTPExchange.receiveChunk(client, url: address, headers: headers, bytes: bytes, what: "GET \(address)",
                                               timeout: timeout).1
  }

  /// `PUT` of the whole object.
  public func write(_ path: String, bytes: [UInt8], timeout: Duration) async throws(SnapshotSourceError) {
    let address = url(path)
    var request = HTTPClientRequest(url: address)
    request.method = .PUT
    request.headers.add(name: "content-length", value: String(bytes.count))
    request.body = .bytes(ByteBuffer(bytes: bytes))
    _ = try await HTTPExchange.perform(client, request, what: "PUT \(address)", timeout: timeout, maxBody: 1 << 20)
  }
}

/// Relative object paths under a prefix.
enum ObjectPath {
  /// `prefix/relative`, with `.` and `..` components of `relative` resolved against the prefix's
  /// path (never above the URL's host).
  static func join(_ prefix: String, _ relative: String) -> String {
    // Split off "scheme://host" so `..` never climbs into it.
    var root = ""
    var path = prefix
    if let scheme = prefix.range(of: "://") {
      let afterScheme = prefix[scheme.upperBound...]
      if let slash = afterScheme.firstIndex(of: "/") {
        root = String(prefix[..<slash])
        path = String(prefix[slash...])
      } else {
        root = prefix
        path = ""
      }
    }
    var parts = path.split(separator: "/").map(String.init)
    for part in relative.split(separator: "/").map(String.init) {
      switch part {
      case ".", "": continue
      case "..": if !parts.isEmpty { parts.removeLast() }
      default: parts.append(part)
      }
    }
    let joined = parts.joined(separator: "/")
    return root.isEmpty && !prefix.hasPrefix("/") ? joined : root + "/" + joined
  }

  /// The folder part of `path` (`a/b/manifest.json` -> `a/b`; no folder -> "").
  static func directory(of path: String) -> String {
    guard let slash = path.lastIndex(of: "/") else { return "" }
    return String(path[..<slash])
  }

  /// The last component of `path`.
  static func lastComponent(of path: String) -> String {
    guard let slash = path.lastIndex(of: "/") else { return path }
    return String(path[path.index(after: slash)...])
  }
}

/// The HTTP exchange both HTTP sources share: one request, bounded in time and size, with its
/// status mapped to ``SnapshotSourceError``.
public enum HTTPExchange {
  /// The largest whole object read without a range (a manifest).
  static let maxObject = 256 << 20

  /// The HTTP client remote sources share unless given one: the process's event loops (as
  /// `HTTPClient.shared`), with up to ``ChunkCache/maxInFlight`` connections per server rather
  /// than the shared client's 8, so the cache's concurrent fetches are not queued behind each
  /// other's round trips. It lives as long as the process.
  public static let client: HTTPClient = {
    var configuration = HTTPClient.Configuration.singletonConfiguration
    configuration.connectionPool.concurrentHTTP1ConnectionsPerHostSoftLimit = ChunkCache.maxInFlight
    return HTTPClient(eventLoopGroup: HTTPClient.defaultEventLoopGroup, configuration: configuration)
  }()

  struct Head: Sendable {
    var status: Int
    var headers: HTTPHeaders
  }

  static func perform(_ client: HTTPClient, _ request: HTTPClientRequest, what: String, timeout: Duration,
                      maxBody: Int) async throws(SnapshotSourceError) -> (Head, [UInt8]) {
    do {
      return try await performOnce(client, request, what: what, timeout: timeout, maxBody: maxBody)
    } catch .transport(let why) where [.GET, .HEAD, .PUT].contains(request.method) {
      // A pooled connection the server closed meanwhile (nginx closes after some answers): an
      // idempotent request is sent once more, on a new connection, before it counts as a failure.
      _ = why
      return try await performOnce(client, request, what: what, timeout: timeout, maxBody: maxBody)
    }
  }

  private static func performOnce(_ client: HTTPClient, _ request: HTTPClientRequest, what: String, timeout: Duration,
                                  maxBody: Int) async throws(SnapshotSourceError) -> (Head, [UInt8]) {
    try await withTimeout(timeout, what) { () async throws(SnapshotSourceError) -> (Head, [UInt8]) in
      let response: HTTPClientResponse
      do {
        response = try await client.execute(request, timeout: .nanoseconds(Int64(timeout.nanosecondsClamped)))
      } catch let error as HTTPClientError where error == .deadlineExceeded || error == .readTimeout || error == .connectTimeout {
        throw .timedOut("\(what): \(error)")
      } catch {
        throw .transport("\(what): \(error)")
      }
      let head = Head(status: Int(response.status.code), headers: response.headers)
      // The body straight into one array sized from Content-Length (a 2 MiB chunk is copied once,
      // not grown by doubling), never more than `maxBody` bytes.
      let limit = max(maxBody, 64 << 10)
      var body: [UInt8] = []
      body.reserveCapacity(min(limit, head.headers.first(name: "content-length").flatMap(Int.init) ?? 0))
      do {
        for try await part in response.body {
          guard body.count + part.readableBytes <= limit else { throw SnapshotSourceError.badResponse("\(what): more than \(limit) bytes") }
          body.append(contentsOf: part.readableBytesView)
        }
      } catch let error as SnapshotSourceError {
        throw error
      } catch {
        throw .transport("\(what): reading the body: \(error)")
      }
      switch head.status {
      case 200..<300:
        return (head, body)
      case 304, 412:
        throw .objectChanged(what)
      case 404:
        throw .notFound(what)
      case 401, 403:
        throw .denied("\(what): \(String(decoding: body.prefix(300), as: UTF8.self))")
      case 416:
        throw .badResponse("\(what): range not satisfiable")
      default:
        throw .status(head.status, what)
      }
    }
  }

  static func identity(_ headers: HTTPHeaders) -> SnapshotObjectIdentity {
    SnapshotObjectIdentity(etag: headers.first(name: "etag"), lastModified: headers.first(name: "last-modified"))
  }

  static func addPreconditions(_ headers: inout HTTPHeaders, range: Range<Int>?, expecting: SnapshotObjectIdentity?) {
    if let range, !range.isEmpty { headers.add(name: "range", value: "bytes=\(range.lowerBound)-\(range.upperBound - 1)") }
    if let etag = expecting?.etag {
      headers.add(name: "if-match", value: etag)
    } else if let modified = expecting?.lastModified {
      headers.add(name: "if-unmodified-since", value: modified)
    }
  }

  /// The body of a read, checked: the identity the answer carries, the range it covers.
  static func checkedBody(_ head: Head, _ body: [UInt8], range: Range<Int>?, expecting: SnapshotObjectIdentity?,
                          what: String) throws(SnapshotSourceError) -> [UInt8] {
    if let expecting, HTTPExchange.identity(head.headers).differs(from: expecting) { throw .objectChanged(what) }
    guard let range else { return body }
    if head.status == 206 {
      guard body.count == range.count else { throw .badResponse("\(what): \(body.count) bytes for a range of \(range.count)") }
      return body
    }
    // A server that ignores ranges sends the whole object: take the part asked for.
    guard body.count >= range.upperBound else { throw .badResponse("\(what): \(body.count) bytes, range ends at \(range.upperBound)") }
    return Array(body[range])
  }
}

extension Duration {
  /// The duration in nanoseconds, clamped to Int64.
  var nanosecondsClamped: Int64 {
    let (seconds, attoseconds) = components
    guard seconds < 9_000_000_000 else { return .max }
    return max(0, seconds) * 1_000_000_000 + attoseconds / 1_000_000_000
  }
}
