import Crypto
import Glibc

/// AWS Signature Version 4 over HTTP headers (what S3 and every S3-compatible store check),
/// computed with swift-crypto: canonical request, string to sign, the derived signing key, and the
/// `Authorization` header. No AWS SDK.
public struct SigV4Signer: Sendable {
  /// The key pair (and session token) that signs.
  public var credentials: AWSCredentials
  /// The region in the credential scope (`us-east-1`).
  public var region: String
  /// The service in the credential scope (`s3`).
  public var service: String

  /// A signer for `service` in `region`.
  public init(credentials: AWSCredentials, region: String, service: String = "s3") {
    self.credentials = credentials
    self.region = region
    self.service = service
  }

  /// The SHA-256 of an empty payload, in hex.
  public static let emptyPayloadHash = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

  /// The headers to add to a request: `x-amz-date`, `x-amz-content-sha256` (when `addContentHash`),
  /// `x-amz-security-token` (with a session token) and `authorization`.
  ///
  /// - Parameters:
  ///   - method: `GET`, `PUT`, `HEAD`…
  ///   - path: the URI path as sent (already percent-encoded; S3 does not encode it twice).
  ///   - query: the query parameters, not encoded.
  ///   - headers: every header to sign (`host` among them), names in any case.
  ///   - payloadHash: the hex SHA-256 of the body (``emptyPayloadHash`` for none), or `UNSIGNED-PAYLOAD`.
  ///   - date: `yyyyMMddTHHmmssZ` (``SigV4Signer/timestamp(_:)``).
  ///   - addContentHash: whether to add and sign `x-amz-content-sha256` (S3 wants it; other
  ///     services' requests, such as the SigV4 test suite's, do not have it).
  public func signedHeaders(method: String, path: String, query: [(String, String)] = [], headers: [(String, String)],
                            payloadHash: String, date: String, addContentHash: Bool = true) -> [(String, String)] {
    var added: [(String, String)] = [("x-amz-date", date)]
    if addContentHash { added.append(("x-amz-content-sha256", payloadHash)) }
    if let token = credentials.sessionToken { added.append(("x-amz-security-token", token)) }
    let all = headers + added
    let (canonical, signedNames) = canonicalRequest(method: method, path: path, query: query, headers: all, payloadHash: payloadHash)
    let signature = self.signature(stringToSign: stringToSign(canonicalRequest: canonical, date: date), date: date)
    let scope = credentialScope(date: date)
    added.append(("authorization",
                  "AWS4-HMAC-SHA256 Credential=\(credentials.accessKeyID)/\(scope), SignedHeaders=\(signedNames), Signature=\(signature)"))
    return added
  }

  /// The canonical request and the signed header names (`host;x-amz-date`).
  public func canonicalRequest(method: String, path: String, query: [(String, String)], headers: [(String, String)],
                               payloadHash: String) -> (request: String, signedHeaders: String) {
    var merged: [String: [String]] = [:]
    for (name, value) in headers {
      merged[name.lowercased(), default: []].append(Self.trimmed(value))
    }
    let names = merged.keys.sorted()
    let canonicalHeaders = names.map { "\($0):\(merged[$0, default: []].joined(separator: ","))\n" }.joined()
    let signed = names.joined(separator: ";")
    let encoded: [(String, String)] = query.map { (Self.encode($0.0, slash: true), Self.encode($0.1, slash: true)) }
    let sorted = encoded.sorted { (a: (String, String), b: (String, String)) -> Bool in a.0 == b.0 ? a.1 < b.1 : a.0 < b.0 }
    let canonicalQuery = sorted.map { "\($0.0)=\($0.1)" }.joined(separator: "&")
    let request = [method, path.isEmpty ? "/" : path, canonicalQuery, canonicalHeaders, signed, payloadHash].joined(separator: "\n")
    return (request, signed)
  }

  /// `AWS4-HMAC-SHA256`, the date, the scope and the canonical request's hash, one per line.
  public func stringToSign(canonicalRequest: String, date: String) -> String {
    "AWS4-HMAC-SHA256\n\(date)\n\(credentialScope(date: date))\n\(Self.hex(SHA256.hash(data: Array(canonicalRequest.utf8))))"
  }

  /// The hex HMAC of `stringToSign` under the key derived for the date, region and service.
  public func signature(stringToSign: String, date: String) -> String {
    let day = String(date.prefix(8))
    var key = SymmetricKey(data: Array("AWS4\(credentials.secretAccessKey)".utf8))
    for part in [day, region, service, "aws4_request"] {
      key = SymmetricKey(data: Array(HMAC<SHA256>.authenticationCode(for: Array(part.utf8), using: key)))
    }
    return Self.hex(HMAC<SHA256>.authenticationCode(for: Array(stringToSign.utf8), using: key))
  }

  /// `yyyyMMdd/region/service/aws4_request`.
  public func credentialScope(date: String) -> String { "\(date.prefix(8))/\(region)/\(service)/aws4_request" }

  /// `yyyyMMddTHHmmssZ` for a time in seconds since the epoch (UTC).
  public static func timestamp(_ seconds: Int) -> String {
    var time = time_t(seconds)
    var parts = tm()
    gmtime_r(&time, &parts)
    func two(_ value: Int32) -> String { value < 10 ? "0\(value)" : "\(value)" }
    return "\(parts.tm_year + 1900)\(two(parts.tm_mon + 1))\(two(parts.tm_mday))T\(two(parts.tm_hour))\(two(parts.tm_min))\(two(parts.tm_sec))Z"
  }

  /// The hex SHA-256 of `bytes`.
  public static func payloadHash(_ bytes: [UInt8]) -> String { hex(SHA256.hash(data: bytes)) }

  /// RFC 3986 percent-encoding: unreserved characters stay, everything else (and `/` unless
  /// `slash` is false) becomes `%XX`.
  public static func encode(_ text: String, slash: Bool) -> String {
    var out = ""
    for byte in text.utf8 {
      switch byte {
      case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
           UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "_"), UInt8(ascii: "~"):
        out.unicodeScalars.append(Unicode.Scalar(byte))
      case UInt8(ascii: "/") where !slash:
        out.append("/")
      default:
        let digits = Array("0123456789ABCDEF".utf8)
        out.append("%")
        out.unicodeScalars.append(Unicode.Scalar(digits[Int(byte >> 4)]))
        out.unicodeScalars.append(Unicode.Scalar(digits[Int(byte & 15)]))
      }
    }
    return out
  }

  static func hex<D: Sequence>(_ digest: D) -> String where D.Element == UInt8 {
    let digits = Array("0123456789abcdef".utf8)
    var out = [UInt8]()
    for byte in digest {
      out.append(digits[Int(byte >> 4)])
      out.append(digits[Int(byte & 15)])
    }
    return String(decoding: out, as: UTF8.self)
  }

  /// A header value trimmed, its inner runs of spaces collapsed to one.
  static func trimmed(_ value: String) -> String {
    value.split(separator: " ", omittingEmptySubsequences: true).joined(separator: " ")
      .trimmingWhitespace()
  }
}

extension String {
  /// Without leading and trailing spaces and tabs.
  func trimmingWhitespace() -> String {
    var slice = Substring(self)
    while let first = slice.first, first == " " || first == "\t" { slice = slice.dropFirst() }
    while let last = slice.last, last == " " || last == "\t" { slice = slice.dropLast() }
    return String(slice)
  }
}
