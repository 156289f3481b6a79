/// A snapshot's address as a user writes it: `s3://bucket/key`, `http(s)://host/path`, or a local
/// path; split into the source its folder is read from and the object's name in it.
public struct SnapshotLocation: Sendable, Hashable, CustomStringConvertible {
  /// Which kind of store.
  public enum Kind: String, Sendable, Hashable {
    /// A local file.
    case file
    /// An HTTP(S) range server.
    case http
    /// An S3-compatible object store.
    case s3
  }

  /// The kind of store.
  public let kind: Kind
  /// The folder (URL prefix, `s3://bucket/prefix`, or local folder).
  public let folder: String
  /// The object's name in the folder (`manifest.json`).
  public let name: String
  /// The address as given.
  public let address: String

  /// Parses `address`.
  ///
  /// - Throws: ``SnapshotSourceError/badConfiguration(_:)`` for an empty address, or an `s3://`
  ///   address without a bucket or key.
  public init(_ address: String) throws(SnapshotSourceError) {
    guard !address.isEmpty else { throw .badConfiguration("an empty snapshot address") }
    self.address = address
    if address.hasPrefix("s3://") {
      let rest = address.dropFirst(5)
      guard let slash = rest.firstIndex(of: "/"), slash != rest.startIndex, rest.index(after: slash) != rest.endIndex else {
        throw .badConfiguration("an S3 address is s3://BUCKET/KEY: \(address)")
      }
      kind = .s3
    } else if address.hasPrefix("http://") || address.hasPrefix("https://") {
      kind = .http
    } else if address.contains("://") {
      throw .badConfiguration("unknown scheme (use s3://, http://, https:// or a path): \(address)")
    } else {
      kind = .file
    }
    let directory = ObjectPath.directory(of: address)
    folder = directory.isEmpty ? "." : directory
    name = ObjectPath.lastComponent(of: address)
  }

  /// Whether the address names something to fetch rather than a local file.
  public var isRemote: Bool { kind != .file }

  /// The address.
  public var description: String { address }

  /// Opens the source for this location's folder (`endpoint`: an S3 endpoint overriding the
  /// environment's).
  public func source(endpoint: String? = nil,
                     environment: [String: String] = ProcessEnvironment.current) throws(SnapshotSourceError) -> any SnapshotSource {
    switch kind {
    case .file:
      return LocalFileSource(directory: folder)
    case .http:
      return try HTTPRangeSource(baseURL: folder)
    case .s3:
      let rest = folder.dropFirst(5)
      let bucket: String
      let prefix: String
      if let slash = rest.firstIndex(of: "/") {
        bucket = String(rest[..<slash])
        prefix = String(rest[rest.index(after: slash)...])
      } else {
        bucket = String(rest)
        prefix = ""
      }
      return try S3Source(bucket: bucket, prefix: prefix, endpoint: endpoint, environment: environment)
    }
  }
}
