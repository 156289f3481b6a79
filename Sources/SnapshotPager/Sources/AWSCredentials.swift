import Glibc

/// An AWS key pair, found the way the AWS SDKs find it: `AWS_ACCESS_KEY_ID` /
/// `AWS_SECRET_ACCESS_KEY` (and `AWS_SESSION_TOKEN`) in the environment, else the profile
/// (`AWS_PROFILE`, default `default`) in the shared credentials file (`AWS_SHARED_CREDENTIALS_FILE`,
/// default `~/.aws/credentials`).
public struct AWSCredentials: Sendable, Hashable {
  /// The access key id.
  public var accessKeyID: String
  /// The secret key (never logged).
  public var secretAccessKey: String
  /// A temporary credential's session token.
  public var sessionToken: String?

  /// A key pair.
  public init(accessKeyID: String, secretAccessKey: String, sessionToken: String? = nil) {
    self.accessKeyID = accessKeyID
    self.secretAccessKey = secretAccessKey
    self.sessionToken = sessionToken
  }

  /// The credentials from `environment` or the profile file.
  ///
  /// - Throws: ``SnapshotSourceError/badConfiguration(_:)`` naming where it looked.
  public static func resolve(environment: [String: String] = ProcessEnvironment.current) throws(SnapshotSourceError) -> AWSCredentials {
    if let key = environment["AWS_ACCESS_KEY_ID"], let secret = environment["AWS_SECRET_ACCESS_KEY"], !key.isEmpty {
      return AWSCredentials(accessKeyID: key, secretAccessKey: secret, sessionToken: environment["AWS_SESSION_TOKEN"].flatMap { $0.isEmpty ? nil : $0 })
    }
    let profile = environment["AWS_PROFILE"] ?? "default"
    let file = environment["AWS_SHARED_CREDENTIALS_FILE"] ?? "\(environment["HOME"] ?? "/root")/.aws/credentials"
    if let text = ProcessEnvironment.readText(file) {
      let values = ProfileFile.section(profile, in: text)
      if let key = values["aws_access_key_id"], let secret = values["aws_secret_access_key"] {
        return AWSCredentials(accessKeyID: key, secretAccessKey: secret, sessionToken: values["aws_session_token"])
      }
    }
    throw .badConfiguration(
      "no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or profile [\(profile)] in \(file)")
  }

  /// The region: `AWS_REGION`, `AWS_DEFAULT_REGION`, the profile's `region` in `~/.aws/config`
  /// (`AWS_CONFIG_FILE`), else `us-east-1`.
  public static func region(environment: [String: String] = ProcessEnvironment.current) -> String {
    if let region = environment["AWS_REGION"] ?? environment["AWS_DEFAULT_REGION"], !region.isEmpty { return region }
    let profile = environment["AWS_PROFILE"] ?? "default"
    let file = environment["AWS_CONFIG_FILE"] ?? "\(environment["HOME"] ?? "/root")/.aws/config"
    if let text = ProcessEnvironment.readText(file) {
      let section = profile == "default" ? "default" : "profile \(profile)"
      if let region = ProfileFile.section(section, in: text)["region"] { return region }
    }
    return "us-east-1"
  }
}

/// The INI-style AWS profile files.
enum ProfileFile {
  /// The `key = value` pairs of `[name]`.
  static func section(_ name: String, in text: String) -> [String: String] {
    var inside = false
    var values: [String: String] = [:]
    for raw in text.split(separator: "\n", omittingEmptySubsequences: true) {
      let line = String(raw).trimmingWhitespace()
      if line.hasPrefix("#") || line.hasPrefix(";") || line.isEmpty { continue }
      if line.hasPrefix("[") && line.hasSuffix("]") {
        inside = String(line.dropFirst().dropLast()).trimmingWhitespace() == name
        continue
      }
      guard inside, let equals = line.firstIndex(of: "=") else { continue }
      values[String(line[..<equals]).trimmingWhitespace()] = String(line[line.index(after: equals)...]).trimmingWhitespace()
    }
    return values
  }
}

/// The process environment, read once per call (no Foundation).
public enum ProcessEnvironment {
  /// `environ` as a dictionary.
  public static var current: [String: String] {
    var result: [String: String] = [:]
    var cursor = environ
    while let entry = cursor.pointee {
      let pair = String(cString: entry)
      if let equals = pair.firstIndex(of: "=") { result[String(pair[..<equals])] = String(pair[pair.index(after: equals)...]) }
      cursor += 1
    }
    return result
  }

  /// A small text file's contents (nil when it cannot be read).
  static func readText(_ path: String) -> String? {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return nil }
    defer { _ = close(fd) }
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 4096)
    while bytes.count < 1 << 20 {
      let got = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
      if got < 0 && errno == EINTR { continue }
      guard got > 0 else { break }
      bytes += chunk[0..<got]
    }
    return String(decoding: bytes, as: UTF8.self)
  }
}
