import Crypto
import Foundation

/// `uffd snapshot push` and `uffd snapshot verify`: a packed snapshot copied to a store with its
/// relative paths kept, and a manifest checked end to end.
public enum SnapshotTransfer {
  /// What a push did.
  public struct PushReport: Sendable, Hashable, Codable {
    /// The address to serve (`--listen SOCKET=URL`).
    public var manifestURL: String
    /// Chunks the manifest names (each distinct chunk once).
    public var chunks: Int
    /// Chunks uploaded now.
    public var uploaded: Int
    /// Chunks the store already had (same path, same size).
    public var skipped: Int
    /// Bytes uploaded (chunks and manifest).
    public var bytesUploaded: Int

    enum CodingKeys: String, CodingKey {
      case chunks, uploaded, skipped
      case manifestURL = "manifest_url"
      case bytesUploaded = "bytes_uploaded"
    }
  }

  /// What a verify found.
  public struct VerifyReport: Sendable, Hashable, Codable {
    /// The manifest checked.
    public var manifest: String
    /// Whether everything matched.
    public var ok: Bool
    /// The snapshot's length.
    public var length: Int
    /// Its layers.
    public var layers: Int
    /// Distinct chunks read and checked.
    public var chunksChecked: Int
    /// Problems found (empty when ok).
    public var problems: [String]

    enum CodingKeys: String, CodingKey {
      case manifest, ok, length, layers, problems
      case chunksChecked = "chunks_checked"
    }
  }

  /// Uploads the manifest at `manifestPath` (local) and every chunk it names to the store prefix
  /// `destination` (`s3://bucket/prefix`, `http(s)://host/prefix`, or a folder), keeping their
  /// paths relative to the manifest and skipping chunks already there. The manifest goes last, so
  /// a reader never finds a manifest whose chunks are missing.
  public static func push(manifestPath: String, to destination: String, endpoint: String? = nil,
                          timeout: Duration = .seconds(60),
                          environment: [String: String] = ProcessEnvironment.current) async throws(RemoteSnapshotError) -> PushReport {
    let local = try SnapshotLocation.local(manifestPath)
    let prefix = destination.hasSuffix("/") ? String(destination.dropLast()) : destination
    let target = try SnapshotLocation.checked(prefix + "/" + local.name)
    let store: any SnapshotSource
    do { store = try target.source(endpoint: endpoint, environment: environment) } catch { throw .source(destination, error) }
    let (localSource, manifest, encoded) = try await SnapshotManifest.open(manifestPath, endpoint: nil, environment: environment,
                                                                           timeout: timeout)
    var report = PushReport(manifestURL: target.address, chunks: 0, uploaded: 0, skipped: 0, bytesUploaded: 0)
    var seen = Set<String>()
    for layer in manifest.layers {
      for index in layer.chunks.indices {
        let path = layer.objectPath(of: index)
        guard seen.insert(path).inserted else { continue }
        report.chunks += 1
        if let present = try? await store.info(path, timeout: timeout), present.size == layer.chunkBytes[index] {
          report.skipped += 1
          continue
        }
        do {
          let bytes = try await localSource.read(path, range: nil, expecting: nil, timeout: timeout)
          try await store.write(path, bytes: bytes, timeout: timeout)
          report.uploaded += 1
          report.bytesUploaded += bytes.count
        } catch {
          throw .source(path, error)
        }
      }
    }
    do { try await store.write(local.name, bytes: encoded, timeout: timeout) } catch { throw .source(target.address, error) }
    report.bytesUploaded += encoded.count
    return report
  }

  /// Checks the manifest at `address` end to end: its checksum and numbers, every chunk it names
  /// (present, its length, its digest), and the whole snapshot rebuilt from them against the
  /// manifest's identity.
  public static func verify(_ address: String, endpoint: String? = nil, timeout: Duration = .seconds(60),
                            environment: [String: String] = ProcessEnvironment.current) async throws(RemoteSnapshotError) -> VerifyReport {
    let (source, manifest, _) = try await SnapshotManifest.open(address, endpoint: endpoint, environment: environment, timeout: timeout)
    var report = VerifyReport(manifest: address, ok: true, length: manifest.length, layers: manifest.layers.count,
                              chunksChecked: 0, problems: [])
    // Chunks read once each, kept while the rebuild needs them (a diff's pages jump between layers).
    var chunks: [String: [UInt8]] = [:]
    var hasher = SHA256()
    let table = PageTable(manifest)
    let zeroPage = [UInt8](repeating: 0, count: manifest.pageSize)
    for page in 0..<table.pages {
      guard let extent = table.extent(ofPage: page) else {
        hasher.update(data: zeroPage)
        continue
      }
      let layer = manifest.layers[extent.layer]
      let path = layer.objectPath(of: extent.chunk)
      if chunks[path] == nil {
        if chunks.count >= 64 { chunks.removeAll() }
        do {
          let bytes = try await source.read(path, range: nil, expecting: nil, timeout: timeout)
          report.chunksChecked += 1
          if bytes.count != layer.chunkBytes[extent.chunk] {
            report.problems.append("\(path): \(bytes.count) bytes, the manifest says \(layer.chunkBytes[extent.chunk])")
          }
          if ChunkCache.digest(bytes) != layer.chunks[extent.chunk] {
            report.problems.append("\(path): its bytes do not hash to its name")
          }
          chunks[path] = bytes
        } catch {
          report.problems.append("\(path): \(error)")
          chunks[path] = []
        }
      }
      let bytes = chunks[path] ?? []
      let offset = (extent.pageInChunk + page - extent.page) * manifest.pageSize
      if offset + manifest.pageSize <= bytes.count {
        hasher.update(data: bytes[offset..<(offset + manifest.pageSize)])
      } else {
        hasher.update(data: zeroPage)
      }
      if report.problems.count > 100 { break }
    }
    let identity = "sha256:" + SigV4Signer.hex(hasher.finalize())
    if report.problems.isEmpty && identity != manifest.identity {
      report.problems.append("the rebuilt snapshot hashes to \(identity), the manifest says \(manifest.identity)")
    }
    report.ok = report.problems.isEmpty
    return report
  }
}

extension SnapshotManifest {
  /// The source of `address`'s folder, and the manifest there read and checked (with its bytes).
  static func open(_ address: String, endpoint: String?, environment: [String: String],
                   timeout: Duration) async throws(RemoteSnapshotError) -> (any SnapshotSource, SnapshotManifest, [UInt8]) {
    let location = try SnapshotLocation.checked(address)
    do {
      let source = try location.source(endpoint: endpoint, environment: environment)
      let bytes = try await source.read(location.name, range: nil, expecting: nil, timeout: timeout)
      return (source, try SnapshotManifest.decode(bytes), bytes)
    } catch let error as SnapshotSourceError {
      throw .source(address, error)
    } catch let error as SnapshotManifestError {
      throw .manifest(address, error)
    } catch {
      throw .setup(address, "\(error)")
    }
  }
}

extension SnapshotLocation {
  /// A location, its error as a ``RemoteSnapshotError``.
  static func checked(_ address: String) throws(RemoteSnapshotError) -> SnapshotLocation {
    do { return try SnapshotLocation(address) } catch { throw .source(address, error) }
  }

  /// A local manifest's location.
  static func local(_ path: String) throws(RemoteSnapshotError) -> SnapshotLocation {
    let location = try checked(path)
    guard location.kind == .file else { throw .setup(path, "push takes a local manifest (what `uffd snapshot pack` wrote)") }
    return location
  }
}
