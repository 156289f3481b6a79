import CUserfaultfdTestSupport
import Foundation
import Glibc
import SnapshotPager
import SnapshotPagerDaemon
import Synchronization
import Testing
@testable import Userfaultfd

/// The daemon as `uffd serve` runs it: the pager, its Prometheus endpoint over HTTP, and the
/// service group that drains it; scraped while clients fault.
extension KernelTests {
@Suite("Pager daemon")
struct PagerDaemonTests {
  /// GET `path` from 127.0.0.1:`port` over a plain TCP socket (HTTP/1.1, bounded); the status line
  /// and the body.
  static func get(port: Int, path: String) -> (status: String, body: String)? {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = in_port_t(UInt16(port).bigEndian)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    let connected = withUnsafePointer(to: &address) {
      $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    guard connected == 0 else { return nil }
    let request = Array("GET \(path) HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".utf8)
    guard request.withUnsafeBytes({ send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }) == request.count else { return nil }
    var response: [UInt8] = []
    let deadline = Date().addingTimeInterval(10)
    while Date() < deadline {
      var entry = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
      guard poll(&entry, 1, 100) > 0 else { continue }
      var chunk = [UInt8](repeating: 0, count: 65_536)
      let got = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
      if got <= 0 { break }
      response += chunk[0..<got]
    }
    let text = String(decoding: response, as: UTF8.self)
    guard let split = text.range(of: "\r\n\r\n") else { return nil }
    return (String(text[..<split.lowerBound].prefix { $0 != "\r" }), String(text[split.upperBound...]))
  }

  /// The value of the sample `name` (with its labels, exactly as exposed), if present.
  static func sample(_ body: String, _ name: String) -> Double? {
    for line in body.split(separator: "\n") where line.hasPrefix(name + " ") {
      return Double(line.dropFirst(name.count + 1))
    }
    return nil
  }

  @Test func metricsAreScrapedWhileClientsFaultAndTheDaemonDrains() async throws {
    let snapshot = try SnapshotServerTests.Snapshot(pages: 512, pageSize: PageSize.base, name: "daemon-metrics")
    let socket = PagerFixture.socketPath("daemon")
    var configuration = PagerConfiguration(listens: [.init(socketPath: socket, snapshotPath: snapshot.path)], loops: 2)
    configuration.drainTimeout = .seconds(20)
    var daemon = PagerDaemon(configuration: configuration, metrics: ("127.0.0.1", 0))
    daemon.handlesSignals = false
    let port = Atomic<Int>(0)
    let host = Mutex<SnapshotPagerHost?>(nil)
    daemon.metricsBound = { port.store($0, ordering: .releasing) }
    daemon.started = { pager in host.withLock { $0 = pager } }
    let running = Task { [daemon] in try await daemon.run(logger: PagerFixture.quietLogger) }
    defer { host.withLock { $0 }?.stop() }  // whatever fails, the pager's threads end
    let deadline = ContinuousClock.now + .seconds(20)
    while port.load(ordering: .acquiring) == 0 && ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(10)) }
    let bound = port.load(ordering: .acquiring)
    try #require(bound > 0, "the metrics endpoint is listening")
    // Clients restore on plain threads (their waits block); the test scrapes meanwhile.
    let statuses = Mutex<[Int32]>([])
    let snapshotPath = snapshot.path
    let clients = TestThread {
      statuses.withLock { $0 = PagerFixture.runClients(6, socket: socket, snapshot: snapshotPath, pages: 512) }
    }
    var scrapedWhileRunning = 0
    while !clients.isFinished && ContinuousClock.now < deadline + .seconds(100) {
      if let response = Self.get(port: bound, path: "/metrics"), response.status.contains("200") { scrapedWhileRunning += 1 }
      try await Task.sleep(for: .milliseconds(20))
    }
    #expect(clients.join(seconds: 1))
    #expect(statuses.withLock { $0 } == Array(repeating: 0, count: 6), "every client restored every byte")
    #expect(scrapedWhileRunning > 0, "the endpoint answered while clients faulted")
    let pager = try #require(host.withLock { $0 })
    #expect(eventually(seconds: 10) { pager.activeSessions == 0 })
    let metrics = try #require(Self.get(port: bound, path: "/metrics"))
    #expect(metrics.status.contains("200"))
    #expect(Self.sample(metrics.body, "uffd_pager_sessions_total") == 6)
    #expect(Self.sample(metrics.body, #"uffd_pager_sessions_ended_total{reason="client-hung-up"}"#) == 6)
    let byFault = Self.sample(metrics.body, #"uffd_pager_pages_total{source="fault"}"#) ?? 0
    #expect(byFault == 6 * 512, "every page of every client came in by fault: \(byFault)")
    // Released pages are handed back to the kernel, which zero-fills them: no round trip, no zero page from the pager.
    #expect(Self.sample(metrics.body, "uffd_pager_released_pages_total") == 24)
    #expect(Self.sample(metrics.body, #"uffd_pager_pages_total{source="zero"}"#) ?? 0 == 0)
    #expect((Self.sample(metrics.body, "uffd_pager_fault_service_seconds_count") ?? 0) > 0)
    #expect(metrics.body.contains("uffd_pager_fault_service_seconds_bucket"))
    #expect(Self.get(port: bound, path: "/nope")?.status.contains("404") == true)
    // A drain with no live session ends the daemon: run() returns.
    pager.drain()
    let ended = Task {
      try await Task.sleep(for: .seconds(20))
      running.cancel()
    }
    try await running.value
    ended.cancel()
    #expect(pager.isFinished)
    #expect(access(socket, F_OK) != 0)
  }
}
}
