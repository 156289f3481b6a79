import CUserfaultfdTestSupport
import Foundation
import Glibc
import SnapshotPager
import Synchronization
import SystemPackage
import Testing
@testable import Userfaultfd

/// The pager daemon against the real kernel: many VMM-like clients in other processes at once,
/// clients that die or misbehave beside good ones, the session cap, drains, a thousand sessions
/// without growth, the control socket and its overlays. Every wait is bounded.
extension KernelTests {
@Suite("Snapshot pager")
struct SnapshotPagerTests {
  typealias Snapshot = SnapshotServerTests.Snapshot

  @Test func servesManyClientsAtOnceEveryByteChecked() throws {
    let snapshot = try Snapshot(pages: 256, pageSize: PageSize.base, name: "pager-many")
    let socket = PagerFixture.socketPath("many")
    try PagerFixture.withPager(socket: socket, snapshot: snapshot.path, configure: { $0.server.prefetch = true }) { pager in
      let statuses = PagerFixture.runClients(8, socket: socket, snapshot: snapshot.path, pages: 256)
      #expect(statuses == Array(repeating: 0, count: 8), "every client's byte-by-byte checks passed (user mode, write(2), zeros)")
      #expect(eventually(seconds: 10) { pager.activeSessions == 0 }, "every session ended with its client")
      #expect(pager.totalSessions == 8)
    }
  }

  /// A session's prefetch copies (2 MiB, between its faults) while a balloon releases blocks: the
  /// released blocks read zeros, the rest the snapshot, beside a second client restoring in full.
  @Test func prefetchOnEveryLoopNeverCopiesOverReleasedPages() throws {
    let snapshot = try Snapshot(pages: 4096, pageSize: PageSize.base, name: "pager-balloon")
    let socket = PagerFixture.socketPath("balloon")
    try PagerFixture.withPager(socket: socket, snapshot: snapshot.path, configure: {
      $0.server.prefetch = true
      $0.server.prefetchPages = 512
    }) { pager in
      let statuses = PagerFixture.runClients(
        2, socket: socket, snapshot: snapshot.path, pages: 4096, scripts: [CUFFD_TEST_VMM_BALLOON, CUFFD_TEST_VMM_FULL])
      #expect(statuses == [0, 0], "released blocks read zero, every other byte the snapshot's")
      #expect(eventually(seconds: 10) { pager.activeSessions == 0 })
    }
  }

  @Test func aClientKilledMidRestoreEndsOnlyItsSession() throws {
    let snapshot = try Snapshot(pages: 128, pageSize: PageSize.base, name: "pager-killed")
    let socket = PagerFixture.socketPath("killed")
    try PagerFixture.withPager(socket: socket, snapshot: snapshot.path) { pager in
      let scripts = [CUFFD_TEST_VMM_FULL, CUFFD_TEST_VMM_DIE, CUFFD_TEST_VMM_FULL, CUFFD_TEST_VMM_DIE, CUFFD_TEST_VMM_FULL]
      let statuses = PagerFixture.runClients(5, socket: socket, snapshot: snapshot.path, pages: 128, scripts: scripts)
      #expect(statuses == [0, 128 + SIGKILL, 0, 128 + SIGKILL, 0], "the killed ones died, the others restored every byte")
      #expect(eventually(seconds: 10) { pager.activeSessions == 0 })
      #expect(pager.totalSessions == 5)
    }
  }

  @Test func hostileClientsBesideGoodOnesEndOnlyTheirOwnSessions() throws {
    let snapshot = try Snapshot(pages: 64, pageSize: PageSize.base, name: "pager-hostile")
    let socket = PagerFixture.socketPath("hostile")
    try PagerFixture.withPager(socket: socket, snapshot: snapshot.path, configure: { $0.handshakeTimeout = .milliseconds(500) }) { pager in
      // Good clients run while the hostile ones act.
      let good = (0..<3).map { _ in
        cuffd_test_vmm_client(socket, snapshot.path, 64 * PageSize.base, 0, Int32(CUFFD_TEST_VMM_FULL.rawValue))
      }
      let decoy = try Userfaultfd(options: .nonBlocking)
      let memory = try AnonymousMemory(length: 8 * PageSize.base)
      let base = UInt(bitPattern: memory.baseAddress)
      let overlapping = #"[{"base_host_virt_addr":\#(base),"size":16384,"offset":0},{"base_host_virt_addr":\#(base + 4096),"size":8192,"offset":0}]"#
      let beyond = #"[{"base_host_virt_addr":\#(base),"size":1073741824,"offset":0}]"#
      let silent = try connectAndSend(socket, nil)  // connects, never sends its regions
      let garbage = try connectAndSend(socket, Array("not json at all".utf8), descriptor: decoy.fileDescriptor)
      let noDescriptor = try connectAndSend(socket, Array(#"[{"base_host_virt_addr":4096,"size":4096,"offset":0}]"#.utf8))
      let overlaps = try connectAndSend(socket, Array(overlapping.utf8), descriptor: decoy.fileDescriptor)
      let tooLong = try connectAndSend(socket, Array(beyond.utf8), descriptor: decoy.fileDescriptor)
      let pipeEnds = try FileDescriptor.pipe()
      defer {
        try? pipeEnds.readEnd.close()
        try? pipeEnds.writeEnd.close()
      }
      let notUffd = try connectAndSend(
        socket, Array(#"[{"base_host_virt_addr":\#(base),"size":4096,"offset":0}]"#.utf8), descriptor: pipeEnds.readEnd)
      try connectAndSend(socket, nil).close()  // connects and hangs up at once
      for refused in [garbage, noDescriptor, overlaps, tooLong, notUffd] {
        #expect(closedByPeer(refused), "a bad handshake ends with the connection closed")
      }
      #expect(closedByPeer(silent, seconds: 5), "a client that never sends is cut off after the handshake timeout")
      let statuses = good.map { $0 > 0 ? cuffd_test_wait($0, 120_000) : -1 }
      #expect(statuses == [0, 0, 0], "the good clients restored every byte meanwhile")
      #expect(eventually(seconds: 10) { pager.activeSessions == 0 })
      #expect(pager.totalSessions == 3, "only the good handshakes became sessions")
    }
  }

  @Test func theClientBeyondMaxSessionsIsRefusedNotHung() throws {
    let snapshot = try Snapshot(pages: 16, pageSize: PageSize.base, name: "pager-cap")
    let socket = PagerFixture.socketPath("cap")
    try PagerFixture.withPager(socket: socket, snapshot: snapshot.path, configure: { $0.maxSessions = 2 }) { pager in
      let first = try InProcessClient(socket: socket, pages: 16)
      let second = try InProcessClient(socket: socket, pages: 16)
      #expect(eventually(seconds: 10) { pager.activeSessions == 2 })
      // The third: the pager may close it before its handshake arrives (the send then fails with
      // EPIPE) or after; either way it is refused, never left waiting.
      let third = try UnixSocket.connect(to: socket)
      let decoy = try Userfaultfd(options: .nonBlocking)
      let regions = try RegionsJSON.encode([GuestRegion(base: 0x10_0000, size: 16 * PageSize.base, offset: 0)])
      _ = try? third.send(regions, descriptor: decoy.fileDescriptor)
      #expect(closedByPeer(third), "the third client sees its connection closed")
      #expect(pager.activeSessions == 2 && pager.totalSessions == 2)
      // The first two are served all along.
      let expected = try SnapshotFile(path: snapshot.path)
      let page: @Sendable (Int) -> [UInt8] = { index in Array(expected.bytes[(index * PageSize.base)..<((index + 1) * PageSize.base)]) }
      #expect(first.readsBack(page) && second.readsBack(page))
      first.close()
      #expect(eventually(seconds: 10) { pager.activeSessions == 1 })
      let fourth = try InProcessClient(socket: socket, pages: 16)
      #expect(eventually(seconds: 10) { pager.activeSessions == 2 }, "a freed slot takes a new client")
      #expect(fourth.readsBack(page))
      second.close()
      fourth.close()
    }
  }

  @Test func drainKeepsServingLiveSessionsThenEnds() throws {
    let snapshot = try Snapshot(pages: 32, pageSize: PageSize.base, name: "pager-drain")
    let socket = PagerFixture.socketPath("drain")
    try PagerFixture.withPager(socket: socket, snapshot: snapshot.path, configure: { $0.drainTimeout = .seconds(60) }) { pager in
      let client = try InProcessClient(socket: socket, pages: 32)
      #expect(eventually(seconds: 10) { pager.activeSessions == 1 })
      pager.drain()
      #expect(eventually(seconds: 5) { access(socket, F_OK) != 0 }, "the socket goes away: no new sessions")
      // The live session is still served while draining.
      let expected = try SnapshotFile(path: snapshot.path)
      #expect(client.readsBack { index in Array(expected.bytes[(index * PageSize.base)..<((index + 1) * PageSize.base)]) })
      #expect(!pager.isFinished, "a drain waits for live sessions")
      client.close()
      #expect(pager.waitUntilFinished(timeout: .seconds(10)), "the drain ends once the last session has")
    }
  }

  @Test func drainTimeoutEndsSessionsThatDoNotEnd() throws {
    let snapshot = try Snapshot(pages: 8, pageSize: PageSize.base, name: "pager-drain-timeout")
    let socket = PagerFixture.socketPath("drain-timeout")
    try PagerFixture.withPager(socket: socket, snapshot: snapshot.path, configure: { $0.drainTimeout = .milliseconds(300) }) { pager in
      let client = try InProcessClient(socket: socket, pages: 8)
      #expect(eventually(seconds: 10) { pager.activeSessions == 1 })
      pager.drain()
      #expect(pager.waitUntilFinished(timeout: .seconds(10)), "the drain timeout ends it")
      #expect(closedByPeer(client.socket), "the client's connection was closed")
    }
  }

  @Test func aThousandSessionsLeaveNoDescriptorsOrMemoryBehind() throws {
    let snapshot = try Snapshot(pages: 64, pageSize: PageSize.base, name: "pager-thousand")
    let socket = PagerFixture.socketPath("thousand")
    try PagerFixture.withPager(socket: socket, snapshot: snapshot.path) { pager in
      func cycle(_ count: Int) throws {
        for _ in 0..<count {
          let before = pager.totalSessions
          let client = try InProcessClient(socket: socket, pages: 64)
          guard eventually(seconds: 10, { pager.totalSessions == before + 1 }) else {
            Issue.record("a session did not start")
            return
          }
          client.close()
          guard eventually(seconds: 10, { pager.activeSessions == 0 }) else {
            Issue.record("a session did not end")
            return
          }
        }
      }
      try cycle(50)  // warm: the allocator's and the runtime's first-use growth
      let descriptors = PagerFixture.openDescriptors
      let resident = PagerFixture.residentBytes
      try cycle(1000)
      let grownDescriptors = PagerFixture.openDescriptors - descriptors
      let grownBytes = PagerFixture.residentBytes - resident
      print("1000 sessions: descriptors \(descriptors) -> \(descriptors + grownDescriptors), RSS grew \(grownBytes >> 10) KiB")
      #expect(grownDescriptors <= 0, "no descriptor outlives its session")
      #expect(grownBytes < 8 << 20, "RSS grew \(grownBytes >> 10) KiB over 1000 sessions (bound 8 MiB)")
      #expect(pager.totalSessions == 1050)
    }
  }

  @Test func aStaleSocketIsReclaimedALiveOneRefused() throws {
    let snapshot = try Snapshot(pages: 4, pageSize: PageSize.base, name: "pager-stale")
    let socket = PagerFixture.socketPath("stale")
    unlink(socket)
    // A socket file nothing listens on: what a killed pager leaves.
    let dead = try UnixSocket.listen(at: socket)
    dead.close()
    #expect(access(socket, F_OK) == 0)
    try PagerFixture.withPager(socket: socket, snapshot: snapshot.path) { _ in
      // Something listens now: a second pager on the same path must refuse to start.
      let second = try SnapshotPagerHost(configuration: .init(listens: [.init(socketPath: socket, snapshotPath: snapshot.path)], loops: 1))
      #expect(throws: UserfaultfdError.self) { try second.start() }
      #expect(access(socket, F_OK) == 0, "the live pager's socket is left alone")
    }
    #expect(access(socket, F_OK) != 0, "the pager removes its socket when it stops")
    let file = "/tmp/uffd-test-\(getpid())-pager-regular-file"
    #expect(FileManager.default.createFile(atPath: file, contents: Data([1])))
    defer { unlink(file) }
    let third = try SnapshotPagerHost(configuration: .init(listens: [.init(socketPath: file, snapshotPath: snapshot.path)], loops: 1))
    #expect(throws: UserfaultfdError.self, "a path that is not a socket is never replaced") { try third.start() }
    #expect(FileManager.default.fileExists(atPath: file))
  }

  @Test func socketModeAndOwnerAreSetForTheJailer() throws {
    let snapshot = try Snapshot(pages: 4, pageSize: PageSize.base, name: "pager-mode")
    let socket = PagerFixture.socketPath("mode")
    try PagerFixture.withPager(socket: socket, snapshot: snapshot.path, configure: {
      $0.socketAccess = .init(mode: 0o660, owner: 4321, group: 4322)
    }) { _ in
      var info = stat()
      #expect(lstat(socket, &info) == 0)
      #expect(info.st_mode & 0o777 == 0o660)
      #expect(info.st_uid == 4321 && info.st_gid == 4322)
    }
  }

  @Test func controlSocketCreatesSessionsWithOverlaysAndRefusesBadRequests() throws {
    let snapshot = try Snapshot(pages: 16, pageSize: PageSize.base, name: "pager-control")
    let control = PagerFixture.socketPath("control")
    try PagerFixture.withPager(socket: nil, snapshot: nil, control: control) { pager in
      let client = try ControlClient(control)
      let health = try client.request(#"{"op":"health"}"#)
      #expect(health["ok"] as? Bool == true && health["status"] as? String == "serving")
      for bad in ["not json", #"{"op":"explode"}"#, #"{"op":"create-session"}"#,
                  #"{"op":"create-session","snapshot":"/nonexistent/uffd.snap"}"#,
                  #"{"op":"create-session","snapshot":"\#(snapshot.path)","overlay":[{"offset":4096,"data":"%%%"}]}"#,
                  #"{"op":"create-session","snapshot":"\#(snapshot.path)","overlay":[{"offset":100,"data":"AAAA"}]}"#,
                  #"{"nothing":1}"#, "[]", "{}"] {
        let answer = try client.request(bad)
        #expect(answer["ok"] as? Bool == false && (answer["error"] as? String)?.isEmpty == false, "\(bad) -> \(answer)")
      }
      // An overlay page at offset 4096 (page 1): this session sees it there, the snapshot elsewhere.
      let own = [UInt8](repeating: 0xA5, count: PageSize.base)
      let created = try client.request(
        #"{"op":"create-session","snapshot":"\#(snapshot.path)","overlay":[{"offset":4096,"data":"\#(Data(own).base64EncodedString())"}]}"#)
      let path = try #require(created["socket"] as? String, "\(created)")
      let id = try #require(created["session"] as? String)
      let listed = try client.request(#"{"op":"list"}"#)
      let waiting = (listed["sessions"] as? [[String: Any]])?.first { $0["id"] as? String == id }
      #expect(waiting?["state"] as? String == "waiting")
      let vmm = try InProcessClient(socket: path, pages: 16)
      #expect(eventually(seconds: 10) { pager.activeSessions == 1 })
      let expected = try SnapshotFile(path: snapshot.path)
      #expect(vmm.readsBack { index in
        index == 1 ? own : Array(expected.bytes[(index * PageSize.base)..<((index + 1) * PageSize.base)])
      }, "page 1 from the overlay, every other page from the snapshot")
      #expect(access(path, F_OK) != 0, "a per-session socket serves one client, then goes away")
      let stats = try client.request(#"{"op":"stats"}"#)
      let total = stats["total"] as? [String: Any]
      #expect(total?["overlay_pages"] as? Int == 1)
      #expect(total?["pages_by_fault"] as? Int == 15)
      // A second session of the same snapshot without the overlay sees the snapshot's page 1.
      let plain = try client.request(#"{"op":"create-session","snapshot":"\#(snapshot.path)"}"#)
      let plainPath = try #require(plain["socket"] as? String)
      let other = try InProcessClient(socket: plainPath, pages: 16)
      #expect(other.readsBack { index in Array(expected.bytes[(index * PageSize.base)..<((index + 1) * PageSize.base)]) })
      let drained = try client.request(#"{"op":"drain"}"#)
      #expect(drained["status"] as? String == "draining")
      let refused = try client.request(#"{"op":"create-session","snapshot":"\#(snapshot.path)"}"#)
      #expect(refused["ok"] as? Bool == false, "no new sessions while draining")
      vmm.close()
      other.close()
      #expect(pager.waitUntilFinished(timeout: .seconds(10)), "the drain ended with the last session")
    }
  }

  @Test(.enabled(if: HugePages.canReserve, "needs 2 MiB hugetlb pages: none could be reserved (vm.nr_hugepages)"))
  func servesHugetlbfsClientsAtOnce() throws {
    try HugePages.withReserved(16) {
      let snapshot = try Snapshot(pages: 4, pageSize: PageSize.huge, name: "pager-huge")
      let socket = PagerFixture.socketPath("huge")
      try PagerFixture.withPager(socket: socket, snapshot: snapshot.path) { pager in
        let statuses = PagerFixture.runClients(3, socket: socket, snapshot: snapshot.path, pages: 4, huge: true)
        #expect(statuses == [0, 0, 0], "every 2 MiB page of every client checked")
        #expect(eventually(seconds: 10) { pager.activeSessions == 0 })
      }
    }
  }
}
}
