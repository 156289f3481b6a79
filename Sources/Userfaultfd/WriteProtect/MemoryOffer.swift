import Glibc
import SystemPackage

/// A process's offer of one memory range to a tool in another process that write-protects it: a
/// live snapshot (``LiveSnapshot/init(adopting:region:view:pageSize:file:fileOffset:stagingBytes:)``,
/// `uffd snapshot live`) or a watch of its writes (``DirtyTracker/init(adopting:region:processID:)``,
/// `uffd dirty watch`).
///
/// ```swift
/// let memory = try AnonymousMemory.memfd(length: 64 << 20)
/// let offer = try MemoryOffer(memory: memory, socketPath: "/run/app/snapshot.sock", purpose: .liveSnapshot)
/// defer { offer.close() }
/// guard try offer.handOver(timeout: .seconds(30)) else { return }   // a tool connected
/// _ = try offer.waitForTool(timeout: .seconds(10))                  // "cut": the point in time
/// _ = try offer.waitForTool(timeout: .seconds(600))                 // "done"
/// ```
///
/// ## The handshake
/// The offering process opens a userfaultfd, registers its range for write protection, listens on
/// a Unix socket, and to the one tool that connects sends two messages: the range as a JSON array
/// of one ``GuestRegion`` (Firecracker's handshake format; `offset` is the range's offset in the
/// memfd) carrying the userfaultfd, then the word `memfd` carrying the memfd behind the range. The
/// tool answers, one word a line, `cut` once it has protected the range for a live snapshot (writers the process
/// paused for a point-in-time copy may resume), or `watching` once it tracks the range's writes,
/// and `done` when it has finished.
///
/// ## Trust
/// Handing over a userfaultfd registered on a range gives the tool the power to stall every write
/// to it (a fault waits until the tool resolves it) and, through the memfd, to read and write its
/// content. Offer only to a tool you trust as much as the process itself: the socket is created
/// with owner-only permissions, and ``handOver(timeout:)`` accepts only a peer running as this
/// process's user or root (`SO_PEERCRED`). Should the tool die, ``close()`` un-protects the range
/// (waking any writer) and unregisters it; the process must call it.
///
/// The range must be memfd memory (``AnonymousMemory/memfd(length:)``), so the tool can map the
/// same pages; write protection of shmem needs Linux 5.19.
public final class MemoryOffer: @unchecked Sendable {
  // @unchecked: `client` and `pending` are used by the one caller driving the offer (handOver,
  // then waitForTool); the other stored properties are immutable.

  /// What the tool will do with the range: it decides how the userfaultfd is opened.
  public enum Purpose: String, Sendable, Hashable {
    /// A live snapshot: synchronous write-protect faults (the tool copies before each first write).
    case liveSnapshot = "live-snapshot"
    /// Dirty tracking: `UFFD_FEATURE_WP_ASYNC` where the kernel has it (the kernel resolves the
    /// faults, the tool scans the process's pagemap), else synchronous faults.
    case dirtyTracking = "dirty-tracking"
  }

  /// The offered range.
  public let memory: AnonymousMemory
  /// Where the offer listens.
  public let socketPath: String
  /// What the tool is to do.
  public let purpose: Purpose
  private let uffd: Userfaultfd
  private let listener: UnixSocket
  private var client: UnixSocket?
  /// Bytes the tool sent that do not yet make a whole word.
  private var pending: [UInt8] = []

  /// Registers `memory` for write protection with a new userfaultfd and listens at `socketPath`
  /// (which must not exist; it is created owner-only and removed by ``close()``).
  ///
  /// - Throws: ``UserfaultfdError/invalidArgument(_:_:)`` when `memory` is not memfd memory;
  ///   ``UserfaultfdError/notSupported(_:_:)`` naming what this kernel lacks (uffd-wp on shmem,
  ///   Linux 5.19); the socket's or the register ioctl's failure. Nothing is left behind on failure.
  public init(memory: AnonymousMemory, socketPath: String, purpose: Purpose) throws(UserfaultfdError) {
    guard memory.file != nil else { throw .invalidArgument(.memory, .notFileBacked) }
    let supported = try Userfaultfd.probeSupportedFeatures().features
    let backend: DirtyTrackingBackend
    if purpose == .dirtyTracking && DirtyTrackingBackend.asyncWriteProtect.isAvailable(for: .shmem, supported: supported) {
      backend = .asyncWriteProtect
    } else {
      backend = .writeProtectFaults
    }
    guard backend.isAvailable(for: .shmem, supported: supported) else {
      throw .notSupported(.liveSnapshot, "offering memfd memory needs \(backend.requirement(for: .shmem));"
        + " this kernel (\(kernelRelease())) lacks it")
    }
    var features = backend.neededFeatures(for: .shmem)
    if supported.contains(.wpUnpopulated) { features.insert(.wpUnpopulated) }
    // A dirty watch by faults reports dropped pages, as DirtyTracker does.
    if purpose == .dirtyTracking && backend == .writeProtectFaults { features.insert(.eventRemove) }
    let uffd = try Userfaultfd(features: features, options: .nonBlocking)
    try uffd.register(memory.baseAddress, length: memory.length, mode: .writeProtect)
    let listener: UnixSocket
    do {
      let previous = umask(0o077)
      defer { umask(previous) }
      listener = try UnixSocket.listen(at: socketPath)
    } catch {
      try? uffd.unregister(memory.baseAddress, length: memory.length)
      throw error
    }
    self.memory = memory
    self.socketPath = socketPath
    self.purpose = purpose
    self.uffd = uffd
    self.listener = listener
  }

  deinit { close() }

  /// Waits up to `timeout` for a tool to connect, checks it runs as this process's user or root,
  /// and hands it the range (the two messages of the handshake). False when none connected in
  /// time; a peer of another user is refused (its connection closed) and waited past.
  public func handOver(timeout: Duration) throws(UserfaultfdError) -> Bool {
    let deadline = ContinuousClock.now + timeout
    while true {
      let left = deadline - ContinuousClock.now
      guard left > .zero, let peer = try listener.accept(timeout: left) else { return false }
      guard let pid = peer.peerProcessID, Self.isTrusted(pid) else {
        peer.close()
        continue
      }
      let region = GuestRegion(base: Address(memory.baseAddress), size: memory.length, offset: 0, pageSize: memory.pageSize)
      let json: [UInt8]
      do {
        json = try RegionsJSON.encode([region])
      } catch {
        throw .invalidArgument(.socket, .outOfRange(parameter: "region", value: memory.length, valid: 0...Int.max))
      }
      try peer.send(json, descriptor: FileDescriptor(rawValue: uffd.coreDescriptor))
      try peer.send(Array("memfd".utf8), descriptor: memory.file)
      client = peer
      return true
    }
  }

  /// Waits up to `timeout` for the tool's next word (`cut`, `watching`, `done`); nil when it hung
  /// up or said nothing in time.
  public func waitForTool(timeout: Duration) throws(UserfaultfdError) -> String? {
    guard let client else { return nil }
    let deadline = ContinuousClock.now + timeout
    // Words end with a newline; the socket is a stream, so two may arrive in one read.
    while true {
      if let end = pending.firstIndex(of: UInt8(ascii: "\n")) {
        let word = String(decoding: pending[..<end], as: UTF8.self)
        pending.removeSubrange(...end)
        return word
      }
      let left = deadline - ContinuousClock.now
      guard left > .zero else { return nil }
      let message: UnixSocket.Message?
      do {
        message = try client.receive(capacity: 256, timeout: left)
      } catch .systemCallFailed(_, .timedOut) {
        return nil
      }
      guard let message else { return nil }
      pending.append(contentsOf: message.bytes)
      guard pending.count <= 4096 else { return nil }  // not a tool speaking this protocol
    }
  }

  /// Ends the offer: un-protects the range (waking any writer a vanished tool left waiting),
  /// unregisters it, and closes the socket and its file. Safe to call more than once.
  public func close() {
    try? uffd.removeWriteProtection(memory.baseAddress, length: memory.length)
    try? uffd.wake(memory.baseAddress, length: memory.length)
    try? uffd.unregister(memory.baseAddress, length: memory.length)
    uffd.close()
    client?.close()
    listener.close()
    _ = unlink(socketPath)
  }

  /// Root, or a process of this process's real user.
  private static func isTrusted(_ pid: Int32) -> Bool {
    guard let status = readSmallFile("/proc/\(pid)/status") else { return false }
    for line in status.split(separator: "\n") where line.hasPrefix("Uid:") {
      guard let real = line.split(whereSeparator: { $0 == " " || $0 == "\t" }).dropFirst().first,
            let uid = UInt32(real) else { return false }
      return uid == 0 || uid == getuid()
    }
    return false
  }
}
