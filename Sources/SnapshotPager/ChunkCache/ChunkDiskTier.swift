import Glibc
import Synchronization

/// The chunk cache's on-disk tier: verified chunks as files named by their digest in one folder,
/// bounded in bytes (``RemoteSnapshotConfiguration/diskCacheBytes``). When a new chunk takes the
/// folder past its bound, the least recently used chunks are deleted until it holds 15/16 of it.
///
/// The tier knows its files from an index in memory (built from the folder at start, oldest
/// modification first), so a miss costs no system call and eviction needs no directory scan.
/// A chunk read from disk is hashed again before it is used (a damaged file is never served: it
/// is deleted and fetched again). Only files named like a chunk (64 hex digits) are ever counted
/// or deleted, with the temporary files of writers that died mid-write (`<digest>.tmp-<pid>` of a
/// process that no longer exists); anything else in the folder is left alone.
final class ChunkDiskTier: Sendable {
  /// The folder.
  let directory: String
  /// The most bytes of chunk files it keeps.
  let bound: Int

  private struct State {
    /// Each chunk file: its length and last use (a tick; larger is more recent).
    var files: [String: (bytes: Int, use: UInt64)] = [:]
    var bytes = 0
    var tick: UInt64 = 0
    var evictions = 0
  }

  private let state = Mutex(State())

  /// The tier in `directory` (created if missing), bounded to `bound` bytes: the chunks already
  /// there are indexed, and the oldest deleted if they exceed the bound.
  init(directory: String, bound: Int) throws(SnapshotSourceError) {
    try LocalFileSource.makeDirectories(forFile: directory + "/x")
    self.directory = directory
    self.bound = bound
    var found: [(name: String, bytes: Int, modified: Int)] = []
    guard let folder = opendir(directory) else { throw .transport("opendir(\(directory)): errno \(errno)") }
    defer { closedir(folder) }
    while let entry = readdir(folder) {
      let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
      var info = stat()
      if Self.isChunkName(name) {
        guard stat(directory + "/" + name, &info) == 0, (info.st_mode & S_IFMT) == S_IFREG else { continue }
        found.append((name, Int(info.st_size), info.st_mtim.tv_sec * 1_000_000_000 + info.st_mtim.tv_nsec))
      } else if let writer = Self.temporaryWriter(name), writer != getpid(), kill(writer, 0) != 0, errno == ESRCH {
        _ = unlink(directory + "/" + name)  // left by a writer that died mid-write
      }
    }
    found.sort { $0.modified < $1.modified }
    let victims = state.withLock { state in
      for file in found {
        state.tick &+= 1
        state.files[file.name] = (file.bytes, state.tick)
        state.bytes += file.bytes
      }
      return Self.evict(&state, bound: bound)
    }
    remove(victims)
  }

  /// Whether `name` is a chunk's file name (64 lowercase hex digits).
  static func isChunkName(_ name: String) -> Bool {
    name.utf8.count == 64 && name.utf8.allSatisfy { (48...57).contains($0) || (97...102).contains($0) }
  }

  /// The process id of a temporary file `<digest>.tmp-<pid>`, nil for any other name.
  static func temporaryWriter(_ name: String) -> pid_t? {
    let parts = name.split(separator: ".", maxSplits: 1)
    guard parts.count == 2, isChunkName(String(parts[0])), parts[1].hasPrefix("tmp-") else { return nil }
    return pid_t(parts[1].dropFirst(4))
  }

  /// The chunk's bytes when the tier has it (nil at once when it does not), within `timeout`.
  func read(_ digest: String, timeout: Duration) async -> [UInt8]? {
    let known = state.withLock { state -> Bool in
      guard let file = state.files[digest] else { return false }
      state.tick &+= 1
      state.files[digest] = (file.bytes, state.tick)
      return true
    }
    guard known else { return nil }
    return try? await LocalFileSource(directory: directory).read(digest, range: nil, expecting: nil, timeout: timeout)
  }

  /// Forgets and deletes a chunk file found damaged (its bytes do not hash to its name).
  func discard(_ digest: String) {
    let known = state.withLock { state -> Bool in
      guard let file = state.files.removeValue(forKey: digest) else { return false }
      state.bytes -= file.bytes
      return true
    }
    if known { remove([digest]) }
  }

  /// Stores a verified chunk (unless it is there already, or larger than the whole bound), then
  /// deletes the least recently used chunks until the bound holds again.
  func write(_ digest: String, bytes: [UInt8], timeout: Duration) async {
    guard Self.isChunkName(digest), bytes.count <= bound, state.withLock({ $0.files[digest] == nil }) else { return }
    do {
      try await LocalFileSource(directory: directory).write(digest, bytes: bytes, timeout: timeout)
    } catch {
      return  // a full or read-only disk: the chunk stays in memory only
    }
    let victims = state.withLock { state -> [String] in
      state.tick &+= 1
      if let old = state.files[digest] { state.bytes -= old.bytes }
      state.files[digest] = (bytes.count, state.tick)
      state.bytes += bytes.count
      return Self.evict(&state, bound: bound)
    }
    remove(victims)
  }

  /// Bytes and chunk files held now, and chunks deleted to keep the bound so far.
  var usage: (bytes: Int, files: Int, evictions: Int) {
    state.withLock { ($0.bytes, $0.files.count, $0.evictions) }
  }

  /// Takes the least recently used chunks out of the index once `bound` is passed, down to 15/16
  /// of it (so a full tier sorts its index once per sixteenth of its bound written, not at every
  /// chunk); their names (deleted by the caller, outside the lock).
  private static func evict(_ state: inout State, bound: Int) -> [String] {
    guard state.bytes > bound else { return [] }
    let target = bound - bound / 16
    var victims: [String] = []
    for (name, file) in state.files.sorted(by: { $0.value.use < $1.value.use }) {
      guard state.bytes > target else { break }
      state.files.removeValue(forKey: name)
      state.bytes -= file.bytes
      state.evictions += 1
      victims.append(name)
    }
    return victims
  }

  private func remove(_ names: [String]) {
    for name in names { _ = unlink(directory + "/" + name) }
  }
}
