import AsyncHTTPClient
import Glibc
import NIOCore
import NIOHTTP1

/// Snapshot objects in an S3-compatible object store: `GET` with `Range`, `HEAD`, `PUT`, each
/// signed with AWS Signature Version 4 (``SigV4Signer``).
///
/// The endpoint is, in order: the one given (`--endpoint`), `AWS_ENDPOINT_URL_S3`,
/// `AWS_ENDPOINT_URL` (as the AWS SDKs read them), else AWS itself
/// (`https://BUCKET.s3.REGION.amazonaws.com`, virtual-hosted). A custom endpoint is addressed
/// path-style (`ENDPOINT/BUCKET/KEY`), which every S3-compatible server understands.
public struct S3Source: SnapshotSource {
  /// The bucket.
  public let bucket: String
  /// The key prefix objects are relative to (no leading or trailing slash; may be empty).
  public let prefix: String
  /// `scheme://host[:port]` requests go to.
  public let endpoint: String
  /// Whether the bucket is the first path component (custom endpoints) or the host's first label.
  public let pathStyle: Bool
  private let signer: SigV4Signer
  private let client: HTTPClient

  /// A source for `s3://bucket/prefix`, its endpoint, credentials and region found as the SDKs find
  /// them (see the type's documentation); `endpoint` overrides the environment's.
  public init(bucket: String, prefix: String, endpoint: String? = nil, credentials: AWSCredentials? = nil,
              region: String? = nil, environment: [String: String] = ProcessEnvironment.current,
              client: HTTPClient = HTTPExchange.client) throws(SnapshotSourceError) {
    guard !bucket.isEmpty, !bucket.contains("/") else { throw .badConfiguration("bad bucket name '\(bucket)'") }
    let region = region ?? AWSCredentials.region(environment: environment)
    let custom = endpoint ?? environment["AWS_ENDPOINT_URL_S3"] ?? environment["AWS_ENDPOINT_URL"]
    if let custom, !custom.isEmpty {
      guard custom.hasPrefix("http://") || custom.hasPrefix("https://") else {
        throw .badConfiguration("the S3 endpoint must be an http(s) URL: \(custom)")
      }
      self.endpoint = custom.hasSuffix("/") ? String(custom.dropLast()) : custom
      pathStyle = true
    } else {
      self.endpoint = "https://\(bucket).s3.\(region).amazonaws.com"
      pathStyle = false
    }
    self.bucket = bucket
    self.prefix = prefix.split(separator: "/").joined(separator: "/")
    let resolved: AWSCredentials
    if let credentials { resolved = credentials } else { resolved = try AWSCredentials.resolve(environment: environment) }
    signer = SigV4Signer(credentials: resolved, region: region)
    self.client = client
  }

  /// `s3://bucket/prefix`.
  public var location: String { "s3://\(bucket)/\(prefix)" }

  /// The object key of `path` (`..` resolved within the bucket).
  public func key(_ path: String) -> String { ObjectPath.join(prefix, path).split(separator: "/").joined(separator: "/") }

  /// `HEAD`: size and identity.
  public func info(_ path: String, timeout: Duration) async throws(SnapshotSourceError) -> SnapshotObjectInfo {
    let request = signed("HEAD", key(path), headers: [], payloadHash: SigV4Signer.emptyPayloadHash, body: nil)
    let (head, _) = try await HTTPExchange.perform(client, request, what: "HEAD \(location(of: path))", timeout: timeout, maxBody: 0)
    guard let length = head.headers.first(name: "content-length").flatMap(Int.init) else {
      throw .badResponse("HEAD \(location(of: path)): no Content-Length")
    }
    return SnapshotObjectInfo(size: length, identity: HTTPExchange.identity(head.headers))
  }

  /// `GET` with `Range` (and `If-Match` when an identity is expected).
  public func read(_ path: String, range: Range<Int>?, expecting: SnapshotObjectIdentity?,
                   timeout: Duration) async throws(SnapshotSourceError) -> [UInt8] {
    var extra = HTTPHeaders()
    HTTPExchange.addPreconditions(&extra, range: range, expecting: expecting)
    let request = signed("GET", key(path), headers: extra.map { ($0.name, $0.value) }, payloadHash: SigV4Signer.emptyPayloadHash, body: nil)
    let what = "GET \(location(of: path))"
    let (head, body) = try await HTTPExchange.perform(client, request, what: what, timeout: timeout,
                                                      maxBody: range?.count ?? HTTPExchange.maxObject)
    return try HTTPExchange.checkedBody(head, body, range: range, expecting: expecting, what: what)
  }

  /// `GET` with `Range`, signed, received straight into the chunk buffer.
  public func readChunk(_ path: String, bytes: Int, timeout: Duration) async throws(SnapshotSourceError) -> ChunkBuffer {
    var extra = HTTPHeaders()
    HTTPExchange.addPreconditions(&extra, range: 0..<bytes, expecting: nil)
    let request = signed("GET", key(path), headers: extra.map { ($0.name, $0.value) }, payloadHash: SigV4Signer.emptyPayloadHash, body: nil)
    return try await HTTPExchange.receiveChunk(client, url: request.url, headers: request.headers, bytes: bytes,
                                               what: "GET \(location(of: path))", timeout: timeout).1
  }

  /// `PUT` of the whole object, its payload hash signed.
  public func write(_ path: String, bytes: [UInt8], timeout: Duration) async throws(SnapshotSourceError) {
    let request = signed("PUT", key(path), headers: [("content-length", String(bytes.count))],
                         payloadHash: SigV4Signer.payloadHash(bytes), body: bytes)
    _ = try await HTTPExchange.perform(client, request, what: "PUT \(location(of: path))", timeout: timeout, maxBody: 1 << 20)
  }

  private func location(of path: String) -> String { "s3://\(bucket)/\(key(path))" }

  private func signed(_ method: String, _ key: String, headers: [(String, String)], payloadHash: String, body: [UInt8]?) -> HTTPClientRequest {
    let encodedKey = SigV4Signer.encode(key, slash: false)
    let path = pathStyle ? "/\(SigV4Signer.encode(bucket, slash: true))/\(encodedKey)" : "/\(encodedKey)"
    let host = endpoint.split(separator: "/", omittingEmptySubsequences: true).dropFirst().first.map(String.init) ?? ""
    var request = HTTPClientRequest(url: endpoint + path)
    request.method = HTTPMethod(rawValue: method)
    let all = [("host", host)] + headers
    for (name, value) in all { request.headers.add(name: name, value: value) }
    let added = signer.signedHeaders(method: method, path: path, headers: all, payloadHash: payloadHash,
                                     date: SigV4Signer.timestamp(time(nil)))
    for (name, value) in added { request.headers.add(name: name, value: value) }
    if let body { request.body = .bytes(ByteBuffer(bytes: body)) }
    return request
  }
}
