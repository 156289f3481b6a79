import Foundation
import Glibc
import Testing
@testable import SnapshotPager

/// The chunked, layered format on local folders: pack, verify, diffs, damage refused, hostile
/// manifests refused without a trap; the chunk cache's dedup, bound and digest checks.
@Suite struct ChunkedSnapshotTests {
  @Test func packStoresEachChunkOnceAndNoZeroChunks() async throws {
    let folder = try TestSnapshots.folder("pack")
    defer { try? FileManager.default.removeItem(atPath: folder) }
    var bytes = TestSnapshots.bytes(pages: 1024, seed: 1)  // 4 MiB: 64 chunks of 64 KiB, every 5th zero
    // Two identical non-zero chunks: stored once.
    bytes.replaceSubrange((65536 * 7)..<(65536 * 8), with: bytes[0..<65536])
    try TestSnapshots.write(bytes, to: folder + "/mem")
    let report = try await SnapshotPacker.pack(file: folder + "/mem", into: folder + "/out", chunkSize: 65536)
    #expect(report.zeroChunks == 12)
    #expect(report.chunks == 64 - 12 - 1)
    #expect(report.chunksWritten == report.chunks)
    #expect(report.layerBytes == report.chunks * 65536)
    let stored = try FileManager.default.contentsOfDirectory(atPath: folder + "/out/chunks")
    #expect(stored.count == report.chunks)
    let verified = try await SnapshotTransfer.verify(folder + "/out/manifest.json")
    #expect(verified.ok, "\(verified.problems)")
    // Packing again writes nothing new.
    let again = try await SnapshotPacker.pack(file: folder + "/mem", into: folder + "/out", chunkSize: 65536)
    #expect(again.chunksWritten == 0 && again.identity == report.identity)
  }

  @Test func aDiffOfFivePercentStoresAboutFivePercent() async throws {
    let folder = try TestSnapshots.folder("diff")
    defer { try? FileManager.default.removeItem(atPath: folder) }
    let base = TestSnapshots.bytes(pages: 4096, seed: 2, zeroEvery: 0)  // 16 MiB, no zero chunk
    try TestSnapshots.write(base, to: folder + "/base.mem")
    try TestSnapshots.write(TestSnapshots.changed(base, fraction: 0.05, seed: 3), to: folder + "/next.mem")
    let first = try await SnapshotPacker.pack(file: folder + "/base.mem", into: folder + "/base")
    let diff = try await SnapshotPacker.pack(file: folder + "/next.mem", into: folder + "/next", basePath: folder + "/base/manifest.json")
    #expect(diff.changedPages == 4096 / 20)
    let stored = Double(diff.layerBytes + diff.manifestBytes) / Double(first.layerBytes)
    #expect(stored <= 0.06, "a 5% diff stores \(stored * 100)% of the base")
    let manifest = try SnapshotManifest.decode(Array(try Data(contentsOf: URL(fileURLWithPath: folder + "/next/manifest.json"))))
    #expect(manifest.layers.map(\.path) == ["../base", "."])
    let verified = try await SnapshotTransfer.verify(folder + "/next/manifest.json")
    #expect(verified.ok, "\(verified.problems)")
    // A diff over the diff: three layers, still whole.
    try TestSnapshots.write(TestSnapshots.changed(TestSnapshots.changed(base, fraction: 0.05, seed: 3), fraction: 0.01, seed: 4),
                            to: folder + "/third.mem")
    _ = try await SnapshotPacker.pack(file: folder + "/third.mem", into: folder + "/third", basePath: folder + "/next/manifest.json")
    let third = try await SnapshotTransfer.verify(folder + "/third/manifest.json")
    #expect(third.ok && third.layers == 3, "\(third.problems)")
  }

  @Test func damageIsFoundAndNamed() async throws {
    let folder = try TestSnapshots.folder("damage")
    defer { try? FileManager.default.removeItem(atPath: folder) }
    try TestSnapshots.write(TestSnapshots.bytes(pages: 256, seed: 5), to: folder + "/mem")
    _ = try await SnapshotPacker.pack(file: folder + "/mem", into: folder + "/out", chunkSize: 65536)
    let chunks = try FileManager.default.contentsOfDirectory(atPath: folder + "/out/chunks").sorted()
    // A flipped byte in a chunk.
    let victim = folder + "/out/chunks/" + chunks[0]
    var bytes = Array(try Data(contentsOf: URL(fileURLWithPath: victim)))
    bytes[100] ^= 1
    try TestSnapshots.write(bytes, to: victim)
    let report = try await SnapshotTransfer.verify(folder + "/out/manifest.json")
    #expect(!report.ok && report.problems.contains { $0.contains(chunks[0]) && $0.contains("hash") })
    // An edited manifest: the checksum refuses it.
    let manifestPath = folder + "/out/manifest.json"
    var text = try String(contentsOfFile: manifestPath, encoding: .utf8)
    text = text.replacingOccurrences(of: "\"length\":1048576", with: "\"length\":1052672")
    try text.write(toFile: manifestPath, atomically: true, encoding: .utf8)
    await #expect {
      try await SnapshotTransfer.verify(manifestPath)
    } throws: { "\($0)".contains("checksum mismatch") }
  }

  @Test func hostileManifestsAreRefusedNotTrapped() throws {
    let good = SnapshotManifest(length: 8192, pageSize: 4096, chunkSize: 8192, identity: "sha256:x",
                                layers: [.init(path: ".", identity: "x", chunks: [String(repeating: "a", count: 64)], chunkBytes: [8192])],
                                extents: [.init(page: 0, pages: 2, layer: 0, chunk: 0, pageInChunk: 0)])
    #expect(throws: Never.self) { try SnapshotManifest.decode(try good.encoded()) }
    var cases: [SnapshotManifest] = []
    var m = good; m.extents[0].pages = Int.max; cases.append(m)
    m = good; m.extents[0].layer = 7; cases.append(m)
    m = good; m.extents[0].chunk = -1; cases.append(m)
    m = good; m.extents[0].pageInChunk = 1; cases.append(m)
    m = good; m.chunkSize = 4095; cases.append(m)
    m = good; m.length = -1; cases.append(m)
    m = good; m.layers[0].chunks[0] = "../../etc/passwd"; cases.append(m)
    m = good; m.layers[0].path = "/etc"; cases.append(m)
    m = good; m.extents.append(.init(page: 1, pages: 1, layer: 0, chunk: 0, pageInChunk: 0)); cases.append(m)
    m = good; m.version = 99; cases.append(m)
    for hostile in cases {
      #expect(throws: SnapshotManifestError.self) { try SnapshotManifest.decode(try hostile.encoded()) }
    }
    for junk in ["", "{}", "[1,2]", "{\"format\":\"uffd-chunked-snapshot\"}", String(repeating: "[", count: 10_000)] {
      #expect(throws: SnapshotManifestError.self) { try SnapshotManifest.decode(Array(junk.utf8)) }
    }
  }

  @Test func thePageTableFindsEveryPageAndStaysSmallForHugeLengths() throws {
    // Random extents with gaps, checked page by page against a plain scan.
    var generator = SplitMix(seed: 9)
    var extents: [SnapshotManifest.Extent] = []
    var page = 0
    while page < 20_000 {
      page += Int(generator.next() % 40)
      let pages = 1 + Int(generator.next() % 70)
      extents.append(.init(page: page, pages: pages, layer: 0, chunk: 0, pageInChunk: 0))
      page += pages
    }
    let manifest = SnapshotManifest(length: (page + 50) * 4096, pageSize: 4096, chunkSize: 65536, identity: "x", extents: extents)
    let table = PageTable(manifest)
    for probe in -1...(page + 50) {
      let expected = extents.firstIndex { probe >= $0.page && probe < $0.page + $0.pages }
      #expect(table.index(ofPage: probe) == expected, "page \(probe)")
    }
    // A manifest claiming 64 TiB in 4 KiB chunks: the index stays near a million entries.
    let huge = SnapshotManifest(length: 1 << 46, pageSize: 4096, chunkSize: 4096, identity: "x",
                                extents: [.init(page: (1 << 34) - 1, pages: 1, layer: 0, chunk: 0, pageInChunk: 0)])
    let hugeTable = PageTable(huge)
    #expect(hugeTable.index(ofPage: (1 << 34) - 1) == 0 && hugeTable.index(ofPage: 0) == nil && hugeTable.index(ofPage: 1 << 34) == nil)
  }

  @Test func theCacheFetchesOnceStaysBoundedAndNeverServesAWrongChunk() async throws {
    let folder = try TestSnapshots.folder("cache")
    defer { try? FileManager.default.removeItem(atPath: folder) }
    let source = LocalFileSource(directory: folder)
    var digests: [String] = []
    for index in 0..<12 {
      let bytes = TestSnapshots.bytes(pages: 512, seed: UInt64(100 + index), zeroEvery: 0)  // 2 MiB
      let digest = ChunkCache.digest(bytes)
      try TestSnapshots.write(bytes, to: folder + "/" + digest)
      digests.append(digest)
    }
    let cache = try ChunkCache(configuration: .init(cacheBytes: 16 << 20, attemptTimeout: .seconds(5), attempts: 2,
                                                    backoff: .milliseconds(1)), logger: PagerFixture.quietLogger)
    func fetch(_ digest: String) -> ChunkFetch { ChunkFetch(source: source, path: digest, bytes: 2 << 20) }
    // 64 lookups of one chunk at once: one fetch.
    for _ in 0..<64 { _ = cache.chunk(digests[0], fetch: fetch(digests[0])) }
    try await waitUntil { cache.contains(digests[0]) }
    var statistics = cache.statistics
    #expect(statistics.fetches == 1 && statistics.chunksFetched == 1 && statistics.joinedInFlight == 63)
    guard case .ready(let buffer) = cache.chunk(digests[0], fetch: fetch(digests[0])) else { Issue.record("not ready"); return }
    #expect(ChunkCache.digest(Array(buffer.bytes)) == digests[0])
    // Twelve 2 MiB chunks through a 16 MiB cache: the bound holds, the oldest go.
    for digest in digests { _ = cache.chunk(digest, fetch: fetch(digest)) ; try await waitUntil { cache.contains(digest) } }
    statistics = cache.statistics
    #expect(statistics.bytesCached <= 16 << 20 && statistics.evictions >= 4)
    // A chunk whose bytes do not match its name: every attempt refused, never ready.
    let wrong = String(repeating: "0", count: 64)
    try TestSnapshots.write(TestSnapshots.bytes(pages: 512, seed: 999, zeroEvery: 0), to: folder + "/" + wrong)
    _ = cache.chunk(wrong, fetch: fetch(wrong))
    try await waitUntil {
      if case .failed = cache.chunk(wrong, fetch: fetch(wrong)) { true } else { false }
    }
    // At least both attempts of the first fetch were refused. A failure is held for 1 s; a lookup
    // after that starts another fetch (refused again), which a slow machine (qemu TCG: seen on
    // 6.12) reaches before the wait above sees the failure, so the count is a floor, not exact.
    #expect(cache.statistics.digestMismatches >= 2 && !cache.contains(wrong))
    // A missing object fails at once (not retried: 404 is final).
    let missing = String(repeating: "1", count: 64)
    _ = cache.chunk(missing, fetch: fetch(missing))
    try await waitUntil { if case .failed = cache.chunk(missing, fetch: fetch(missing)) { true } else { false } }
    // A chunk that failed from one store is fetched from another that has it (another snapshot
    // with the same chunk), not failed by inheritance.
    let elsewhere = try TestSnapshots.folder("cache-elsewhere")
    defer { try? FileManager.default.removeItem(atPath: elsewhere) }
    let shared = TestSnapshots.bytes(pages: 512, seed: 777, zeroEvery: 0)
    let sharedDigest = ChunkCache.digest(shared)
    try TestSnapshots.write(shared, to: elsewhere + "/" + sharedDigest)
    _ = cache.chunk(sharedDigest, fetch: fetch(sharedDigest))  // not in `folder`: fails
    try await waitUntil { if case .failed = cache.chunk(sharedDigest, fetch: fetch(sharedDigest)) { true } else { false } }
    let other = ChunkFetch(source: LocalFileSource(directory: elsewhere), path: sharedDigest, bytes: 2 << 20)
    try await waitUntil { if case .ready = cache.chunk(sharedDigest, fetch: other) { true } else { false } }
  }
}

extension ChunkedSnapshotTests {
  /// `count` chunks of `pages` pages each, written to `folder` under their digests.
  static func chunks(_ count: Int, pages: Int, in folder: String, seed: UInt64) throws -> [String] {
    try (0..<count).map { index in
      let bytes = TestSnapshots.bytes(pages: pages, seed: seed + UInt64(index), zeroEvery: 0)
      let digest = ChunkCache.digest(bytes)
      try TestSnapshots.write(bytes, to: folder + "/" + digest)
      return digest
    }
  }

  @Test func theOnDiskTierStaysWithinItsBoundOldestFirstAndServesOnlyGoodChunks() async throws {
    let store = try TestSnapshots.folder("disk-store")
    let directory = try TestSnapshots.folder("disk-tier")
    defer {
      try? FileManager.default.removeItem(atPath: store)
      try? FileManager.default.removeItem(atPath: directory)
    }
    let digests = try Self.chunks(12, pages: 512, in: store, seed: 300)  // 2 MiB each
    // Left alone: a file that is not a chunk. Deleted: a temporary file of a writer long gone.
    try TestSnapshots.write([1, 2, 3], to: directory + "/notes.txt")
    let gone: pid_t = 4_194_303
    let deadWriter = kill(gone, 0) != 0 && errno == ESRCH
    try TestSnapshots.write([1], to: directory + "/\(digests[0]).tmp-\(gone)")
    let source = LocalFileSource(directory: store)
    func fetch(_ digest: String) -> ChunkFetch { ChunkFetch(source: source, path: digest, bytes: 2 << 20) }
    let configuration = RemoteSnapshotConfiguration(cacheBytes: 64 << 20, cacheDirectory: directory, diskCacheBytes: 20 << 20,
                                                    attemptTimeout: .seconds(5), attempts: 2, backoff: .milliseconds(1))
    let cache = try ChunkCache(configuration: configuration, logger: PagerFixture.quietLogger)
    #expect(FileManager.default.fileExists(atPath: directory + "/notes.txt"))
    if deadWriter { #expect(!FileManager.default.fileExists(atPath: directory + "/\(digests[0]).tmp-\(gone)")) }
    // Twelve 2 MiB chunks through a 20 MiB disk tier: never more than 20 MiB of chunk files, the
    // least recently used deleted first.
    for (index, digest) in digests.enumerated() {
      _ = cache.chunk(digest, fetch: fetch(digest))
      try await waitUntil { cache.contains(digest) && cache.statistics.diskBytes + cache.statistics.diskEvictions * (2 << 20) == (index + 1) * (2 << 20) }
      let onDisk = try FileManager.default.contentsOfDirectory(atPath: directory).filter(ChunkDiskTier.isChunkName)
      let bytes = try onDisk.reduce(0) { $0 + (try FileManager.default.attributesOfItem(atPath: directory + "/" + $1)[.size] as? Int ?? 0) }
      #expect(bytes <= 20 << 20 && bytes == cache.statistics.diskBytes, "after chunk \(index): \(bytes) bytes on disk")
    }
    var statistics = cache.statistics
    #expect(statistics.diskEvictions >= 2 && statistics.chunksFetched == 12)
    #expect(!FileManager.default.fileExists(atPath: directory + "/" + digests[0]))
    #expect(FileManager.default.fileExists(atPath: directory + "/" + digests[11]))
    // Memory dropped: the last chunk comes from disk, not the store.
    cache.removeAll()
    _ = cache.chunk(digests[11], fetch: fetch(digests[11]))
    try await waitUntil { cache.contains(digests[11]) }
    statistics = cache.statistics
    #expect(statistics.diskHits == 1 && statistics.chunksFetched == 12)
    // A chunk file damaged on disk is never served: deleted, fetched from the store again.
    try TestSnapshots.write(TestSnapshots.bytes(pages: 512, seed: 1, zeroEvery: 0), to: directory + "/" + digests[10])
    cache.removeAll()
    _ = cache.chunk(digests[10], fetch: fetch(digests[10]))
    try await waitUntil { cache.contains(digests[10]) }
    guard case .ready(let buffer) = cache.chunk(digests[10], fetch: fetch(digests[10])) else { Issue.record("not ready"); return }
    #expect(ChunkCache.digest(Array(buffer.bytes)) == digests[10] && cache.statistics.chunksFetched == 13)
    // A pager started again with a smaller bound trims the folder to it at once, oldest first.
    let smaller = try ChunkCache(configuration: RemoteSnapshotConfiguration(cacheDirectory: directory, diskCacheBytes: 16 << 20),
                                 logger: PagerFixture.quietLogger)
    #expect(smaller.statistics.diskBytes <= 16 << 20 && smaller.statistics.diskEvictions >= 1 && FileManager.default.fileExists(atPath: directory + "/notes.txt"))
    #expect(throws: SnapshotSourceError.self) { try ChunkCache(configuration: RemoteSnapshotConfiguration(diskCacheBytes: 1 << 20)) }
  }

  @Test func chunksAskedForBeyondTheFetchSlotsWaitInOrderAndAllArrive() async throws {
    let store = try TestSnapshots.folder("queue-store")
    defer { try? FileManager.default.removeItem(atPath: store) }
    let count = ChunkCache.maxInFlight * 2 + 5
    let digests = try Self.chunks(count, pages: 16, in: store, seed: 500)  // 64 KiB each
    let source = LocalFileSource(directory: store)
    let cache = try ChunkCache(configuration: .init(cacheBytes: 16 << 20, attemptTimeout: .seconds(5)), logger: PagerFixture.quietLogger)
    cache.prefetch(digests.map { ($0, ChunkFetch(source: source, path: $0, bytes: 64 << 10)) })
    // A fault's chunk asked for meanwhile is not lost behind them.
    let late = try Self.chunks(1, pages: 16, in: store, seed: 900)[0]
    _ = cache.chunk(late, fetch: ChunkFetch(source: source, path: late, bytes: 64 << 10))
    try await waitUntil { (digests + [late]).allSatisfy(cache.contains) }
    let statistics = cache.statistics
    #expect(statistics.fetches == count + 1 && statistics.chunksFetched == count + 1 && statistics.failures == 0, "\(statistics)")
  }
}

/// Polls `condition` every 5 ms for at most `seconds`; fails when it never holds.
func waitUntil(seconds: Double = 20, _ condition: () -> Bool) async throws {
  let deadline = ContinuousClock.now + .milliseconds(Int64(seconds * 1000))
  while !condition() {
    guard ContinuousClock.now < deadline else {
      Issue.record("the condition did not hold within \(seconds) s")
      throw WaitTimedOut()
    }
    try await Task.sleep(for: .milliseconds(5))
  }
}

struct WaitTimedOut: Error {}
