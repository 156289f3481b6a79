import CUserfaultfdTestSupport
import Foundation
import Glibc
import Synchronization
import Testing
import UffdTools
@testable import SnapshotPager
@testable import Userfaultfd

/// Remote snapshots against the real servers `.ci/run` starts (nginx for HTTP ranges, moto's S3
/// server): the sources, push and verify, and the pager serving VMM-like clients from them, every
/// byte checked; then the failures a network brings (a killed server, 500s, a slow server, wrong
/// bytes) injected by a proxy on loopback: no fault hangs past its deadline, no wrong byte reaches
/// a client, and a session of another snapshot keeps being served.
///
/// Nested in the kernel suite: these tests fork clients (which must not run beside another test's
/// UFFDIO_MOVE) and hold HTTP connections open (which must not run beside a test counting the
/// process's descriptors).
extension KernelTests {
@Suite(.serialized) struct RemoteSnapshotServingTests {
  /// A packed snapshot in a local folder: its raw file (what clients compare with) and manifest.
  struct Packed {
    let folder: String
    let raw: String
    let manifest: String
    let pages: Int
  }

  static func pack(_ name: String, pages: Int = 2048, chunk: Int = 256 << 10, seed: UInt64 = 7) async throws -> Packed {
    let folder = try TestSnapshots.folder(name)
    let raw = folder + "/mem"
    try TestSnapshots.write(TestSnapshots.bytes(pages: pages, seed: seed), to: raw)
    _ = try await SnapshotPacker.pack(file: raw, into: folder + "/out", chunkSize: chunk)
    return Packed(folder: folder, raw: raw, manifest: folder + "/out/manifest.json", pages: pages)
  }

  @Test(.enabled(if: RemoteServers.httpAvailable, RemoteServers.httpMissing))
  func httpSourceReadsRangesAndRefusesAChangedObject() async throws {
    let base = try RemoteServers.requireHTTP()
    let source = try HTTPRangeSource(baseURL: base + "/" + RemoteServers.prefix("etag"))
    let first = TestSnapshots.bytes(pages: 4, seed: 1, zeroEvery: 0)
    try await source.write("object", bytes: first, timeout: .seconds(10))
    let info = try await source.info("object", timeout: .seconds(10))
    #expect(info.size == first.count && info.identity.etag != nil)
    let range = try await source.read("object", range: 4096..<8192, expecting: info.identity, timeout: .seconds(10))
    #expect(range == Array(first[4096..<8192]))
    // Replaced by another version of the same size: refused, not mixed.
    try await Task.sleep(for: .milliseconds(1100))  // nginx's ETag has the mtime in seconds
    try await source.write("object", bytes: TestSnapshots.bytes(pages: 4, seed: 2, zeroEvery: 0), timeout: .seconds(10))
    await #expect(throws: SnapshotSourceError.self) {
      _ = try await source.read("object", range: 0..<4096, expecting: info.identity, timeout: .seconds(10))
    }
    await #expect(throws: SnapshotSourceError.notFound("GET \(base)/\(RemoteServers.prefix("etag"))/missing")) {
      _ = try await source.read("missing", range: nil, expecting: nil, timeout: .seconds(10))
    }
  }

  @Test(.enabled(if: RemoteServers.s3Available, RemoteServers.s3Missing))
  func s3SourceWritesReadsRangesAndHeads() async throws {
    let s3 = try RemoteServers.requireS3()
    let source = try S3Source(bucket: s3.bucket, prefix: RemoteServers.prefix("s3"), endpoint: s3.endpoint)
    let bytes = TestSnapshots.bytes(pages: 8, seed: 3, zeroEvery: 0)
    try await source.write("dir/object with space", bytes: bytes, timeout: .seconds(10))
    let info = try await source.info("dir/object with space", timeout: .seconds(10))
    #expect(info.size == bytes.count)
    let range = try await source.read("dir/object with space", range: 8192..<12288, expecting: info.identity, timeout: .seconds(10))
    #expect(range == Array(bytes[8192..<12288]))
    await #expect(throws: SnapshotSourceError.self) {
      _ = try await source.read("nothing-here", range: nil, expecting: nil, timeout: .seconds(10))
    }
  }

  @Test(.enabled(if: RemoteServers.httpAvailable && RemoteServers.s3Available, "needs nginx and the S3 server: run `source .ci/remote-servers` first"))
  func thePagerServesFromHTTPAndS3EveryByteCheckedEachChunkFetchedOnce() async throws {
    let http = try RemoteServers.requireHTTP()
    let s3 = try RemoteServers.requireS3()
    let packed = try await Self.pack("serve")
    defer { try? FileManager.default.removeItem(atPath: packed.folder) }
    let httpPrefix = http + "/" + RemoteServers.prefix("serve")
    let pushedHTTP = try await SnapshotTransfer.push(manifestPath: packed.manifest, to: httpPrefix)
    let pushedS3 = try await SnapshotTransfer.push(manifestPath: packed.manifest, to: "s3://\(s3.bucket)/\(RemoteServers.prefix("serve"))",
                                                    endpoint: s3.endpoint)
    #expect(pushedHTTP.uploaded == pushedHTTP.chunks && pushedS3.uploaded == pushedS3.chunks)
    let again = try await SnapshotTransfer.push(manifestPath: packed.manifest, to: httpPrefix)
    #expect(again.uploaded == 0 && again.skipped == again.chunks)
    let remoteVerify = try await SnapshotTransfer.verify(pushedS3.manifestURL, endpoint: s3.endpoint)
    #expect(remoteVerify.ok, "\(remoteVerify.problems)")
    let logStart = RemoteServers.httpAccessLog.flatMap { try? String(contentsOfFile: $0, encoding: .utf8) }?.count ?? 0

    let httpSocket = PagerFixture.socketPath("remote-http")
    let s3Socket = PagerFixture.socketPath("remote-s3")
    let localSocket = PagerFixture.socketPath("remote-local")
    try PagerFixture.withPager(socket: httpSocket, snapshot: pushedHTTP.manifestURL, configure: { configuration in
      configuration.listens.append(.init(socketPath: s3Socket, snapshotPath: pushedS3.manifestURL))
      configuration.listens.append(.init(socketPath: localSocket, snapshotPath: packed.manifest))
      configuration.remote.endpoint = s3.endpoint
    }) { pager in
      // Eight clones at once from HTTP, four from S3, two from the local manifest.
      let statuses = [(httpSocket, 8), (s3Socket, 4), (localSocket, 2)].map { socket, count in
        (0..<count).map { _ in cuffd_test_vmm_client(socket, packed.raw, packed.pages * 4096, 0, Int32(CUFFD_TEST_VMM_FULL.rawValue)) }
      }.joined().map { $0 > 0 ? cuffd_test_wait($0, 120_000) : -1 }
      #expect(statuses.allSatisfy { $0 == 0 }, "client exit statuses \(statuses)")
      let statistics = try #require(pager.chunkCache?.statistics)
      // Content addressing: the three addresses share their chunks' digests, so each chunk came
      // in once, from whichever store asked first.
      #expect(statistics.chunksFetched + statistics.diskHits <= pushedHTTP.chunks, "\(statistics)")
      #expect(statistics.failures == 0 && statistics.digestMismatches == 0)
    }
    // nginx's own log: no chunk was requested twice.
    if let log = RemoteServers.httpAccessLog, let text = try? String(contentsOfFile: log, encoding: .utf8) {
      let prefix = "/" + RemoteServers.prefix("serve") + "/chunks/"
      var counts: [String: Int] = [:]
      for line in text.dropFirst(logStart).split(separator: "\n") where line.contains("\"GET \(prefix)") {
        if let path = line.split(separator: " ").first(where: { $0.hasPrefix(prefix) }) { counts[String(path), default: 0] += 1 }
      }
      #expect(counts.values.allSatisfy { $0 <= 1 }, "chunks requested more than once: \(counts.filter { $0.value > 1 })")
    }
  }

  /// A pager serving one snapshot through the fault-injecting proxy (to nginx) and one local
  /// manifest; `mode` is switched on before the clients start.
  func withInjectedFault(_ mode: FaultInjectingProxy.Mode, name: String,
                         configure: (inout RemoteSnapshotConfiguration) -> Void = { _ in },
                         check: (_ failingStatus: Int32, _ healthyStatus: Int32, _ elapsed: Duration, _ cache: ChunkCache.Statistics) -> Void) async throws {
    let http = try RemoteServers.requireHTTP()
    let port = try #require(RemoteServers.port(of: http))
    let packed = try await Self.pack("fault-\(name)", pages: 512, chunk: 64 << 10, seed: 11)
    // The healthy session's snapshot has other content: chunks it fetched would otherwise serve
    // the failing session too (the cache is content-addressed), and nothing would fail.
    let healthy = try await Self.pack("healthy-\(name)", pages: 512, chunk: 64 << 10, seed: 12)
    defer {
      try? FileManager.default.removeItem(atPath: packed.folder)
      try? FileManager.default.removeItem(atPath: healthy.folder)
    }
    let pushed = try await SnapshotTransfer.push(manifestPath: packed.manifest, to: http + "/" + RemoteServers.prefix("fault-\(name)"))
    let proxy = try FaultInjectingProxy(upstreamPort: port)
    defer { proxy.stop() }
    let viaProxy = pushed.manifestURL.replacingOccurrences(of: http, with: proxy.url)
    let failingSocket = PagerFixture.socketPath("fault-\(name)")
    let healthySocket = PagerFixture.socketPath("healthy-\(name)")
    try PagerFixture.withPager(socket: failingSocket, snapshot: viaProxy, configure: { configuration in
      configuration.listens.append(.init(socketPath: healthySocket, snapshotPath: healthy.manifest))
      configuration.remote.attemptTimeout = .milliseconds(500)
      configuration.remote.attempts = 2
      configuration.remote.backoff = .milliseconds(20)
      configuration.remote.faultDeadline = .seconds(3)
      configure(&configuration.remote)
    }) { pager in
      proxy.set(mode)  // after the manifest was read at start
      let started = ContinuousClock.now
      let failing = cuffd_test_vmm_client(failingSocket, packed.raw, packed.pages * 4096, 0, Int32(CUFFD_TEST_VMM_FULL.rawValue))
      let other = cuffd_test_vmm_client(healthySocket, healthy.raw, healthy.pages * 4096, 0, Int32(CUFFD_TEST_VMM_FULL.rawValue))
      let failingStatus = failing > 0 ? cuffd_test_wait(failing, 30_000) : -1
      let elapsed = ContinuousClock.now - started
      let healthyStatus = other > 0 ? cuffd_test_wait(other, 30_000) : -1
      check(failingStatus, healthyStatus, elapsed, pager.chunkCache?.statistics ?? .init())
      // The store recovers: once the failure is forgotten (1 s), a new clone is served whole.
      proxy.set(.pass)
      usleep(1_200_000)
      let recovered = cuffd_test_vmm_client(failingSocket, packed.raw, packed.pages * 4096, 0, Int32(CUFFD_TEST_VMM_FULL.rawValue))
      #expect((recovered > 0 ? cuffd_test_wait(recovered, 30_000) : -1) == 0, "a clone after the store recovered")
    }
  }

  /// What a client that met an unfetchable chunk must show: SIGBUS (poison) where the kernel has
  /// UFFDIO_POISON, never a wrong byte (exit 20 or 21), never a hang (-1).
  static func expectFailedCleanly(_ status: Int32, _ elapsed: Duration, within bound: Duration) {
    #expect(status != 0 && status != 20 && status != 21 && status != -1, "the failing clone's status \(status)")
    #expect(status == 128 + SIGBUS || !UserfaultfdTestKernel.hasPoison, "SIGBUS from the poisoned page, got \(status)")
    #expect(elapsed < bound, "the failing clone ended after \(elapsed)")
  }

  @Test(.enabled(if: RemoteServers.httpAvailable, RemoteServers.httpMissing))
  func aKilledServerFailsFaultsBySIGBUSAndOthersKeepBeingServed() async throws {
    try await withInjectedFault(.kill, name: "kill") { failing, healthy, elapsed, cache in
      Self.expectFailedCleanly(failing, elapsed, within: .seconds(10))
      #expect(healthy == 0)
      #expect(cache.failures >= 1)
    }
  }

  @Test(.enabled(if: RemoteServers.httpAvailable, RemoteServers.httpMissing))
  func fiveHundredsAreRetriedThenFailTheFault() async throws {
    try await withInjectedFault(.status(500), name: "500") { failing, healthy, elapsed, cache in
      Self.expectFailedCleanly(failing, elapsed, within: .seconds(10))
      #expect(healthy == 0)
      #expect(cache.retries >= 1 && cache.failures >= 1)
    }
  }

  @Test(.enabled(if: RemoteServers.httpAvailable, RemoteServers.httpMissing))
  func aSlowServerNeverHoldsAFaultPastItsDeadline() async throws {
    try await withInjectedFault(.delay(.seconds(5)), name: "slow") { failing, healthy, elapsed, _ in
      // Deadline 3 s (two attempts of 0.5 s): the fault fails before the server's 5 s.
      Self.expectFailedCleanly(failing, elapsed, within: .milliseconds(4500))
      #expect(healthy == 0)
    }
  }

  @Test(.enabled(if: RemoteServers.httpAvailable, RemoteServers.httpMissing))
  func aWorkingSetRecordedFromHTTPIsReplayedWithItsChunksFetchedAhead() async throws {
    let http = try RemoteServers.requireHTTP()
    let packed = try await Self.pack("ws-remote", pages: 2048, chunk: 64 << 10)
    let directory = try TestSnapshots.folder("ws-remote-sets")
    defer {
      try? FileManager.default.removeItem(atPath: packed.folder)
      try? FileManager.default.removeItem(atPath: directory)
    }
    let pushed = try await SnapshotTransfer.push(manifestPath: packed.manifest, to: http + "/" + RemoteServers.prefix("ws-remote"))
    let socket = PagerFixture.socketPath("ws-remote")
    let ended = Mutex<[SnapshotServer.Statistics]>([])
    // Two pagers one after the other: the first records the clone's working set, the second (an
    // empty chunk cache) replays it into the next clone.
    func run(_ settings: WorkingSetSettings) throws -> (SnapshotServer.Statistics?, ChunkCache.Statistics?) {
      var configuration = PagerConfiguration(listens: [.init(socketPath: socket, snapshotPath: pushed.manifestURL)], loops: 2)
      configuration.handshakeTimeout = .seconds(5)
      configuration.workingSets = settings
      let pager = try SnapshotPagerHost(configuration: configuration, logger: PagerFixture.quietLogger) { statistics in
        ended.withLock { $0.append(statistics) }
      }
      try pager.start()
      let pid = cuffd_test_restore_client(socket, packed.raw, packed.pages * 4096, 0, Int32(CUFFD_TEST_RESTORE_WORKING_SET.rawValue), nil, 0)
      let status = pid > 0 ? cuffd_test_wait(pid, 60_000) : -1
      #expect(status == 0, "the client read every byte of its working set right (status \(status))")
      let cache = pager.chunkCache?.statistics
      pager.stop()
      #expect(pager.waitUntilFinished(timeout: .seconds(20)), "the pager stopped within 20 s")
      return (ended.withLock { $0.last }, cache)
    }
    let (recorded, _) = try run(WorkingSetSettings(recordDirectory: directory, traces: 1, settle: SettleDetector(window: .milliseconds(300))))
    let file = directory + "/" + WorkingSetLibrary.fileName(of: pushed.manifestURL) + ".wset"
    #expect(FileManager.default.fileExists(atPath: file), "the working set was written as \(file)")
    let manifest = try JSONDecoder().decode(SnapshotManifest.self, from: Data(contentsOf: URL(fileURLWithPath: packed.manifest)))
    let set = try WorkingSet.read(from: file, expecting: SnapshotIdentity(manifest: manifest))
    #expect(!set.pages.isEmpty)
    let (replayed, cache) = try run(WorkingSetSettings(replayDirectory: directory))
    let first = try #require(recorded)
    let second = try #require(replayed)
    #expect(second.pagesByReplay > 0 && second.failedFaults == 0 && first.failedFaults == 0)
    #expect(second.faults < first.faults, "replay took faults off the clone (\(second.faults) against \(first.faults))")
    let statistics = try #require(cache)
    // Every chunk once: the working set's, asked for in recorded order, joined by the faults.
    #expect(statistics.chunksFetched <= pushed.chunks && statistics.failures == 0 && statistics.digestMismatches == 0, "\(statistics)")
  }

  @Test(.enabled(if: RemoteServers.httpAvailable, RemoteServers.httpMissing))
  func aWrongChunkIsNeverServed() async throws {
    try await withInjectedFault(.wrongBytes, name: "wrong") { failing, healthy, elapsed, cache in
      Self.expectFailedCleanly(failing, elapsed, within: .seconds(10))
      #expect(healthy == 0)
      #expect(cache.digestMismatches >= 1)
    }
  }
}

}  // extension KernelTests

extension KernelTests.RemoteSnapshotServingTests {
  @Test(.enabled(if: RemoteServers.httpAvailable, RemoteServers.httpMissing))
  func theEndSessionPolicyEndsOnlyThatSession() async throws {
    let http = try RemoteServers.requireHTTP()
    let port = try #require(RemoteServers.port(of: http))
    let packed = try await Self.pack("end-session", pages: 512, chunk: 64 << 10, seed: 21)
    let healthy = try await Self.pack("end-session-healthy", pages: 512, chunk: 64 << 10, seed: 22)
    defer {
      try? FileManager.default.removeItem(atPath: packed.folder)
      try? FileManager.default.removeItem(atPath: healthy.folder)
    }
    let pushed = try await SnapshotTransfer.push(manifestPath: packed.manifest, to: http + "/" + RemoteServers.prefix("end-session"))
    let proxy = try FaultInjectingProxy(upstreamPort: port)
    defer { proxy.stop() }
    let failingSocket = PagerFixture.socketPath("end-session")
    let healthySocket = PagerFixture.socketPath("end-session-healthy")
    var configuration = PagerConfiguration(listens: [
      .init(socketPath: failingSocket, snapshotPath: pushed.manifestURL.replacingOccurrences(of: http, with: proxy.url)),
      .init(socketPath: healthySocket, snapshotPath: healthy.manifest),
    ], loops: 2)
    configuration.remote.onFailure = .endSession
    configuration.remote.attempts = 1
    configuration.remote.attemptTimeout = .milliseconds(300)
    let ended = Mutex<[SnapshotServer.Statistics.EndReason]>([])
    let pager = try SnapshotPagerHost(configuration: configuration, logger: PagerFixture.quietLogger) { statistics in
      ended.withLock { $0.append(statistics.endReason) }
    }
    try pager.start()
    defer {
      pager.stop()
      #expect(pager.waitUntilFinished(timeout: .seconds(20)))
    }
    proxy.set(.kill)
    let failing = cuffd_test_vmm_client(failingSocket, packed.raw, packed.pages * 4096, 0, Int32(CUFFD_TEST_VMM_FULL.rawValue))
    let other = cuffd_test_vmm_client(healthySocket, healthy.raw, healthy.pages * 4096, 0, Int32(CUFFD_TEST_VMM_FULL.rawValue))
    // The failing session ends (reason "failed") within the fault deadline; the pager goes on.
    try await waitUntil(seconds: 10) { ended.withLock { $0.contains(.failed) } }
    #expect((other > 0 ? cuffd_test_wait(other, 30_000) : -1) == 0, "the other session restored every byte")
    // Its client's faulting thread is not resolved: ending a session hands the VM to its VMM or
    // orchestrator (the socket closed), which stops it. Here: no wrong byte, and it is killed.
    let status = failing > 0 ? cuffd_test_wait(failing, 1_000) : -1
    #expect(status != 0 && status != 20 && status != 21, "the failing clone's status \(status)")
  }
}

extension KernelTests.RemoteSnapshotServingTests {
  @Test(.enabled(if: HugePages.canReserve, "needs 2 MiB hugetlb pages: none could be reserved (vm.nr_hugepages)"))
  func aChunkedSnapshotAndADiffServeHugetlbfsClients() async throws {
    // 2 MiB chunks hold whole huge pages: each is copied from one chunk in one ioctl.
    let packed = try await Self.pack("huge", pages: 8 * 512, chunk: 2 << 20, seed: 31)
    defer { try? FileManager.default.removeItem(atPath: packed.folder) }
    // A diff over it: its huge pages gather changed 4 KiB pages from the diff's chunks and the
    // rest from the base's.
    let next = packed.folder + "/next.mem"
    try TestSnapshots.write(TestSnapshots.changed(Array(try Data(contentsOf: URL(fileURLWithPath: packed.raw))), fraction: 0.05, seed: 32),
                            to: next)
    _ = try await SnapshotPacker.pack(file: next, into: packed.folder + "/next", chunkSize: 2 << 20, basePath: packed.manifest)
    try HugePages.withReserved(32) {
      let socket = PagerFixture.socketPath("chunked-huge")
      let diffSocket = PagerFixture.socketPath("chunked-huge-diff")
      try PagerFixture.withPager(socket: socket, snapshot: packed.manifest, configure: { configuration in
        configuration.listens.append(.init(socketPath: diffSocket, snapshotPath: packed.folder + "/next/manifest.json"))
      }) { _ in
        let statuses = PagerFixture.runClients(2, socket: socket, snapshot: packed.raw, pages: 8, huge: true)
        #expect(statuses == [0, 0], "every 2 MiB page of every client checked")
        let diffStatuses = PagerFixture.runClients(2, socket: diffSocket, snapshot: next, pages: 8, huge: true)
        #expect(diffStatuses == [0, 0], "every 2 MiB page of the diff checked")
      }
    }
  }
}

/// What the kernel under test offers.
enum UserfaultfdTestKernel {
  /// Whether UFFDIO_POISON is there (Linux 6.6+).
  static var hasPoison: Bool {
    (try? Userfaultfd(features: [], options: .nonBlocking))?.supportedFeatures.contains(.poison) ?? false
  }
}
