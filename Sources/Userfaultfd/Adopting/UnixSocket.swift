import CUserfaultfd
import Glibc
import Synchronization
import SystemPackage

/// A Unix-domain stream socket that carries a descriptor with a message (`SCM_RIGHTS`): how a VMM
/// or a restoring process hands its userfaultfd to a page server. The descriptor is closed once,
/// by ``close()`` or when the last reference goes away.
///
/// ```swift
/// let listener = try UnixSocket.listen(at: "/run/vm/uffd.sock")
/// guard let client = try listener.accept(timeout: .seconds(30)) else { return }
/// guard let message = try client.receive(timeout: .seconds(5)) else { return }  // nil: it hung up
/// let uffd = try Userfaultfd(adopting: message.takeDescriptor())
/// ```
public final class UnixSocket: Sendable {
  private let descriptor: Atomic<Int32>

  /// The largest message ``receive(capacity:timeout:)`` accepts (1 MiB).
  public static let maxMessageSize = 1 << 20

  /// Owns `fd`, an open socket (the pager accepts its own connections, non-blocking).
  package init(_ fd: Int32) { descriptor = Atomic(fd) }

  deinit { close() }

  /// Listens at `path` (a socket file that must not exist yet; remove it when done).
  public static func listen(at path: String, backlog: Int = 1) throws(UserfaultfdError) -> UnixSocket {
    guard (1...128).contains(backlog) else {
      throw .invalidArgument(.socket, .outOfRange(parameter: "backlog", value: backlog, valid: 1...128))
    }
    let fd = cuffd_socket_listen(path, Int32(backlog))
    guard fd >= 0 else { throw .systemCallFailed("bind/listen(\(path))", .current) }
    return UnixSocket(fd)
  }

  /// Connects to the socket listening at `path`.
  public static func connect(to path: String) throws(UserfaultfdError) -> UnixSocket {
    let fd = cuffd_socket_connect(path)
    guard fd >= 0 else { throw .systemCallFailed("connect(\(path))", .current) }
    return UnixSocket(fd)
  }

  /// Waits up to `timeout` (forever when nil) for a connection and accepts it; nil on timeout.
  public func accept(timeout: Duration? = nil) throws(UserfaultfdError) -> UnixSocket? {
    guard try wait(for: Int16(POLLIN), timeout: timeout, operation: "accept") else { return nil }
    let fd = cuffd_socket_accept(try open(.socket))
    guard fd >= 0 else { throw .systemCallFailed("accept", .current) }
    return UnixSocket(fd)
  }

  /// Sends `bytes` as one message, with `descriptor` attached when given (the descriptor stays
  /// yours: the receiver gets a duplicate).
  public func send(_ bytes: [UInt8], descriptor: FileDescriptor? = nil) throws(UserfaultfdError) {
    guard !bytes.isEmpty, bytes.count <= Self.maxMessageSize else {
      throw .invalidArgument(
        .socket, .outOfRange(parameter: "message size", value: bytes.count, valid: 1...Self.maxMessageSize))
    }
    let fd = try open(.socket)
    let sent = bytes.withUnsafeBytes { cuffd_socket_send(fd, $0.baseAddress, $0.count, descriptor?.rawValue ?? -1) }
    guard sent >= 0 else { throw .systemCallFailed("sendmsg", .current) }
    guard sent == bytes.count else { throw .systemCallFailed("sendmsg (short write)", .messageTooLong) }
  }

  /// One received message and the descriptor it carried, if any.
  public struct Message: ~Copyable {
    /// The message's bytes.
    public let bytes: [UInt8]
    private var descriptor: Int32

    init(bytes: [UInt8], descriptor: Int32) {
      self.bytes = bytes
      self.descriptor = descriptor
    }

    /// Whether a descriptor came with the message.
    public var hasDescriptor: Bool { descriptor >= 0 }

    /// Takes the descriptor out of the message: it is yours to close (or to adopt with
    /// ``Userfaultfd/init(adopting:origin:)``). Throws when the message carried none.
    public consuming func takeDescriptor() throws(UserfaultfdError) -> FileDescriptor {
      let fd = descriptor
      descriptor = -1
      guard fd >= 0 else { throw .invalidArgument(.socket, .noDescriptorAttached) }
      return FileDescriptor(rawValue: fd)
    }

    deinit { if descriptor >= 0 { _ = Glibc.close(descriptor) } }
  }

  /// Waits up to `timeout` (forever when nil) for one message of at most `capacity` bytes. Returns
  /// nil when the peer has closed the connection. A message carrying more than one descriptor is
  /// refused (each is closed), as is one longer than `capacity`.
  public func receive(capacity: Int = 64 << 10, timeout: Duration? = nil) throws(UserfaultfdError) -> Message? {
    guard (1...Self.maxMessageSize).contains(capacity) else {
      throw .invalidArgument(.socket, .outOfRange(parameter: "capacity", value: capacity, valid: 1...Self.maxMessageSize))
    }
    guard try wait(for: Int16(POLLIN), timeout: timeout, operation: "receive") else {
      throw .systemCallFailed("recvmsg (no message within the timeout)", .timedOut)
    }
    let fd = try open(.socket)
    var received: Int32 = -1
    var buffer = [UInt8](repeating: 0, count: capacity)
    let count = buffer.withUnsafeMutableBytes { cuffd_socket_receive(fd, $0.baseAddress, $0.count, &received) }
    guard count >= 0 else { throw .systemCallFailed("recvmsg", .current) }
    guard count > 0 else {
      if received >= 0 { _ = Glibc.close(received) }
      return nil
    }
    buffer.removeSubrange(count...)
    return Message(bytes: buffer, descriptor: received)
  }

  /// Whether the peer has closed its end (a read would return end-of-file), checked without
  /// consuming data; waits up to `timeout` for it.
  public func peerHasHungUp(timeout: Duration = .zero) throws(UserfaultfdError) -> Bool {
    guard try wait(for: Int16(POLLIN), timeout: timeout, operation: "poll") else { return false }
    var byte: UInt8 = 0
    let peeked = recv(try open(.socket), &byte, 1, Int32(MSG_PEEK | MSG_DONTWAIT))
    return peeked == 0 || (peeked < 0 && Errno.current != .resourceTemporarilyUnavailable)
  }

  /// The process id of the connected peer (`SO_PEERCRED`), nil when unknown.
  public var peerProcessID: Int32? {
    let fd = descriptor.load(ordering: .acquiring)
    guard fd >= 0 else { return nil }
    let pid = cuffd_socket_peer_pid(fd)
    return pid > 0 ? pid : nil
  }

  /// The descriptor, for poll/epoll; -1 once closed. Do not close it yourself.
  public var fileDescriptor: FileDescriptor { FileDescriptor(rawValue: descriptor.load(ordering: .acquiring)) }

  /// Closes the socket now; closing twice is harmless.
  public func close() {
    let fd = descriptor.exchange(-1, ordering: .acquiringAndReleasing)
    if fd >= 0 { _ = Glibc.close(fd) }
  }

  private func open(_ operation: Operation) throws(UserfaultfdError) -> Int32 {
    let fd = descriptor.load(ordering: .acquiring)
    guard fd >= 0 else { throw .closed(operation) }
    return fd
  }

  /// poll(2) for `events`; false on timeout.
  private func wait(for events: Int16, timeout: Duration?, operation: String) throws(UserfaultfdError) -> Bool {
    var entry = pollfd(fd: try open(.socket), events: events, revents: 0)
    let milliseconds = timeout.map { Self.milliseconds($0) } ?? -1
    while true {
      let ready = poll(&entry, 1, milliseconds)
      if ready > 0 { return true }
      if ready == 0 { return false }
      if Errno.current != .interrupted { throw .systemCallFailed("poll (\(operation))", .current) }
    }
  }

  static func milliseconds(_ duration: Duration) -> Int32 {
    let (seconds, attoseconds) = duration.components
    guard seconds >= 0 else { return 0 }
    let total = seconds.multipliedReportingOverflow(by: 1000)
    guard !total.overflow, total.partialValue < Int64(Int32.max) else { return Int32.max }
    return Int32(total.partialValue + attoseconds / 1_000_000_000_000_000)
  }
}
