import Foundation
import Glibc
import SnapshotPager
import Testing

/// The real servers the remote-snapshot tests use, found through the variables `.ci/run` (via
/// `.ci/remote-servers`) exports. Outside CI a test that needs one is skipped, naming the server
/// and how to start it; in CI (`CI=true`) a missing server fails the test instead.
enum RemoteServers {
  static let environment = ProcessInfo.processInfo.environment
  static let inCI = environment["CI"] == "true"

  /// nginx's URL (`UFFD_TEST_HTTP_URL`).
  static var http: String? { environment["UFFD_TEST_HTTP_URL"] }
  /// nginx's access log.
  static var httpAccessLog: String? { environment["UFFD_TEST_HTTP_ACCESS_LOG"] }
  /// The S3 server's endpoint and bucket.
  static var s3: (endpoint: String, bucket: String)? {
    guard let endpoint = environment["UFFD_TEST_S3_ENDPOINT"], let bucket = environment["UFFD_TEST_S3_BUCKET"] else { return nil }
    return (endpoint, bucket)
  }

  /// Whether a test needing nginx runs (it does in CI, and fails there without it).
  static var httpAvailable: Bool { http != nil || inCI }
  /// Whether a test needing the S3 server runs.
  static var s3Available: Bool { s3 != nil || inCI }

  static let httpMissing: Comment = "needs nginx (UFFD_TEST_HTTP_URL unset): run `source .ci/remote-servers` first"
  static let s3Missing: Comment = "needs the S3 server, moto (UFFD_TEST_S3_ENDPOINT unset): run `source .ci/remote-servers` first"

  /// nginx's URL, or a failure saying CI did not start it.
  static func requireHTTP() throws -> String {
    try #require(http, "UFFD_TEST_HTTP_URL is unset: .ci/run must start nginx (.ci/remote-servers)")
  }

  /// The S3 server, or a failure saying CI did not start it.
  static func requireS3() throws -> (endpoint: String, bucket: String) {
    try #require(s3, "UFFD_TEST_S3_ENDPOINT is unset: .ci/run must start the S3 server (.ci/remote-servers)")
  }

  /// The port of `url` (`http://127.0.0.1:PORT`).
  static func port(of url: String) -> Int? { url.split(separator: ":").last.flatMap { Int($0.prefix { $0.isNumber }) } }

  /// A prefix unique to this test process and `name`.
  static func prefix(_ name: String) -> String { "uffd-test-\(getpid())-\(name)" }
}

/// Snapshot files the tests pack: pseudo-random pages, some zero chunks, a seed each.
enum TestSnapshots {
  /// A folder for this test, removed by the caller.
  static func folder(_ name: String) throws -> String {
    let path = NSTemporaryDirectory() + "uffd-test-\(getpid())-\(name)"
    try? FileManager.default.removeItem(atPath: path)
    try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    return path
  }

  /// `pages` pages of pseudo-random bytes from `seed`, every `zeroChunkEvery`-th 64 KiB run zero.
  static func bytes(pages: Int, seed: UInt64, zeroEvery: Int = 5) -> [UInt8] {
    var state = seed &* 0x9E37_79B9_7F4A_7C15 | 1
    var bytes = [UInt8](repeating: 0, count: pages * 4096)
    bytes.withUnsafeMutableBytes { raw in
      let words = raw.bindMemory(to: UInt64.self)
      for index in 0..<words.count {
        let page = index / 512
        if zeroEvery > 0, (page / 16) % zeroEvery == zeroEvery - 1 { continue }
        state ^= state << 13
        state ^= state >> 7
        state ^= state << 17
        words[index] = state
      }
    }
    return bytes
  }

  /// Writes `bytes` to `path`.
  static func write(_ bytes: [UInt8], to path: String) throws {
    try Data(bytes).write(to: URL(fileURLWithPath: path))
  }

  /// `bytes` with `fraction` of its pages (a seeded choice) overwritten with new random bytes.
  static func changed(_ bytes: [UInt8], fraction: Double, seed: UInt64) -> [UInt8] {
    var result = bytes
    let pages = bytes.count / 4096
    var generator = SplitMix(seed: seed)
    var chosen = Set<Int>()
    while chosen.count < Int(Double(pages) * fraction) { chosen.insert(Int(generator.next() % UInt64(pages))) }
    for page in chosen {
      for offset in stride(from: 0, to: 4096, by: 8) {
        var value = generator.next()
        withUnsafeBytes(of: &value) { result.replaceSubrange((page * 4096 + offset)..<(page * 4096 + offset + 8), with: $0) }
      }
    }
    return result
  }
}

/// A small seeded generator.
struct SplitMix: RandomNumberGenerator {
  var state: UInt64
  init(seed: UInt64) { state = seed }
  mutating func next() -> UInt64 {
    state &+= 0x9E37_79B9_7F4A_7C15
    var z = state
    z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
    z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
    return z ^ (z >> 31)
  }
}
