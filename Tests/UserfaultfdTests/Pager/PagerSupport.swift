import CUserfaultfdTestSupport
import Foundation
import Glibc
import Logging
import SnapshotPager
import Synchronization
import SystemPackage
import Testing
@testable import Userfaultfd

/// What the pager tests share: a pager on test sockets, VMM-like clients, and in-process clients
/// whose memory a test thread reads while the pager's loops serve it.
enum PagerFixture {
  /// A socket path unique to this test process and `name`.
  static func socketPath(_ name: String) -> String { "/tmp/uffd-test-\(getpid())-pager-\(name).sock" }

  /// A started pager serving `snapshot` at `socket` (plus `control` when given); stopped and
  /// waited for (bounded) after `body`, whatever it throws.
  static func withPager<T>(
    socket: String?, snapshot: String?, control: String? = nil,
    configure: (inout PagerConfiguration) -> Void = { _ in },
    _ body: (SnapshotPagerHost) throws -> T
  ) throws -> T {
    var listens: [PagerConfiguration.Listen] = []
    if let socket, let snapshot { listens.append(.init(socketPath: socket, snapshotPath: snapshot)) }
    var configuration = PagerConfiguration(listens: listens, controlPath: control, loops: 2)
    configuration.handshakeTimeout = .seconds(2)
    configure(&configuration)
    let pager = try SnapshotPagerHost(configuration: configuration, logger: quietLogger)
    try pager.start()
    defer {
      pager.stop()
      let stopped = pager.waitUntilFinished(timeout: .seconds(20))
      #expect(stopped, "the pager stopped within 20 s")
    }
    return try body(pager)
  }

  /// Forks `count` VMM-like clients against `socket`, each restoring `pages` pages of `pageSize`
  /// bytes and checking every byte; returns their exit statuses (every wait bounded).
  static func runClients(
    _ count: Int, socket: String, snapshot: String, pages: Int, huge: Bool = false,
    scripts: [cuffd_test_vmm_script]? = nil
  ) -> [Int32] {
    let pageSize = huge ? PageSize.huge : PageSize.base
    let children = (0..<count).map { index in
      let script = scripts?[index] ?? CUFFD_TEST_VMM_FULL
      return cuffd_test_vmm_client(socket, snapshot, pages * pageSize, huge ? 1 : 0, Int32(script.rawValue))
    }
    return children.map { $0 > 0 ? cuffd_test_wait($0, 120_000) : -1 }
  }

  /// The pager's log at warning level and above: refusals show, the routine lines do not.
  static var quietLogger: Logger {
    var logger = Logger(label: "test.pager")
    logger.logLevel = .warning
    return logger
  }

  /// The number of descriptors this process has open.
  static var openDescriptors: Int {
    (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd").count) ?? -1
  }

  /// This process's resident set in bytes (`/proc/self/statm`).
  static var residentBytes: Int {
    guard let text = try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8) else { return -1 }
    let fields = text.split(separator: " ")
    guard fields.count > 1, let pages = Int(fields[1]) else { return -1 }
    return pages * PageSize.base
  }
}

/// A restoring "VMM" inside the test process: its own userfaultfd and registered memory, handed to
/// the pager over the socket like Firecracker does. A test thread reads the memory; the pager's
/// loops (other threads) serve it.
final class InProcessClient {
  let uffd: Userfaultfd
  let memory: AnonymousMemory
  let socket: UnixSocket
  let pages: Int

  init(socket path: String, pages: Int, regionsJSON: [UInt8]? = nil) throws {
    self.pages = pages
    uffd = try Userfaultfd(features: [.eventRemove], options: .nonBlocking)
    memory = try AnonymousMemory(length: pages * PageSize.base)
    try uffd.register(memory.baseAddress, length: memory.length, mode: .missing)
    socket = try UnixSocket.connect(to: path)
    let regions = [GuestRegion(base: Address(memory.baseAddress), size: memory.length, offset: 0)]
    try socket.send(regionsJSON ?? (try RegionsJSON.encode(regions)), descriptor: uffd.fileDescriptor)
  }

  /// Reads every page on a test thread (bounded); whether each equals `expected(page)`.
  func readsBack(seconds: Double = 20, _ expected: @escaping @Sendable (Int) -> [UInt8]) -> Bool {
    let base = Address(memory.baseAddress)
    let pages = self.pages
    let right = Atomic<Bool>(false)
    let reader = TestThread {
      let same = (0..<pages).allSatisfy { index in
        expected(index).withUnsafeBytes { bytes in
          guard let from = bytes.baseAddress, bytes.count == PageSize.base else { return false }
          return memcmp((base + index * PageSize.base).mapped, from, PageSize.base) == 0
        }
      }
      right.store(same, ordering: .relaxed)
    }
    guard reader.join(seconds: seconds) else { return false }
    return right.load(ordering: .relaxed)
  }

  /// Hangs up (the VMM exits).
  func close() { socket.close() }
}

/// A connection that sends `bytes` (and optionally a descriptor), as a misbehaving client would.
func connectAndSend(_ path: String, _ bytes: [UInt8]?, descriptor: FileDescriptor? = nil) throws -> UnixSocket {
  let socket = try UnixSocket.connect(to: path)
  if let bytes { try socket.send(bytes, descriptor: descriptor) }
  return socket
}

/// Whether the pager closed `socket` within `seconds` (a read returns end-of-file).
func closedByPeer(_ socket: UnixSocket, seconds: Double = 10) -> Bool {
  (try? socket.peerHasHungUp(timeout: .milliseconds(Int64(seconds * 1000)))) ?? false
}

/// A control-socket client: one JSON line out, one back (bounded).
final class ControlClient {
  let socket: UnixSocket

  init(_ path: String) throws { socket = try UnixSocket.connect(to: path) }

  func request(_ line: String, seconds: Double = 10) throws -> [String: Any] {
    try socket.send(Array((line + "\n").utf8))
    var received: [UInt8] = []
    let deadline = Date().addingTimeInterval(seconds)
    while !received.contains(UInt8(ascii: "\n")) {
      guard Date() < deadline else { throw ControlTimeout() }
      var entry = pollfd(fd: socket.fileDescriptor.rawValue, events: Int16(POLLIN), revents: 0)
      guard poll(&entry, 1, 100) > 0 else { continue }
      var chunk = [UInt8](repeating: 0, count: 65_536)
      let got = chunk.withUnsafeMutableBytes { recv(socket.fileDescriptor.rawValue, $0.baseAddress, $0.count, 0) }
      guard got > 0 else { throw ControlTimeout() }
      received += chunk[0..<got]
    }
    let line = received.prefix { $0 != UInt8(ascii: "\n") }
    return (try JSONSerialization.jsonObject(with: Data(line)) as? [String: Any]) ?? [:]
  }

  struct ControlTimeout: Error {}
}
