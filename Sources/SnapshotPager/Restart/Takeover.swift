import CUserfaultfd
import Foundation
import Glibc
import Logging
import SystemPackage
import Userfaultfd

/// The upgrade path: a new pager (`uffd serve --takeover CONTROL`) asks the running one, over its
/// control socket, for everything it serves, and the running one hands it over with SCM_RIGHTS:
/// its listening sockets (so no client finds the socket closed or missing), then, per live
/// session, its userfaultfd and the client's connection, each after the session's serving loop has
/// let go of it between two turns. The old pager then drains what it kept (nothing, usually); the new
/// one serves them from its next turn, marking the pages present in each client as served and
/// waking every region, as a restart does. Sessions created with overlay pages are not handed over
/// (their overlay lives in the old pager's memory): the old pager drains them. A client in the middle of its
/// handshake at that instant sees its connection closed.
///
/// The messages, one JSON object each (``HandoverMessage``), a descriptor attached to all but the
/// last: `listener` (a snapshot socket, with its path and snapshot), `control` (the control
/// socket), `session` (a ``SessionRecord``, with the userfaultfd) followed by `client` (its
/// connection), and `done`.
struct HandoverMessage: Codable {
  var kind: String
  var path: String?
  var snapshot: String?
  var record: SessionRecord?
}

/// What a new pager received from the one it takes over from.
struct TakenOver {
  var listeners: [String: UnixSocket] = [:]
  var sessions: [(record: SessionRecord, uffd: Int32, client: UnixSocket?)] = []

  /// The listening socket received for `path`, if any (it is then the caller's).
  mutating func listener(at path: String) -> UnixSocket? { listeners.removeValue(forKey: path) }
}

extension SnapshotPagerHost {
  /// Whether a control line asks for a handover.
  func isHandoverRequest(_ line: [UInt8]) -> Bool {
    guard case .success(let request) = ControlProtocol.decode(line) else { return false }
    return request.op == "handover"
  }

  /// The old pager's side: hands every listening socket and every session over `socket`, then
  /// stops (on the acceptor thread, which owns the sockets).
  func handOver(over socket: UnixSocket) {
    logger.info("handing over to a new pager", metadata: ["active_sessions": "\(activeSessions)"])
    let fd = socket.fileDescriptor.rawValue
    // Blocking sends, each bounded: the new pager reads as we write.
    _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK)
    var limit = timeval(tv_sec: 10, tv_usec: 0)
    _ = setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &limit, socklen_t(MemoryLayout<timeval>.size))
    func send(_ message: HandoverMessage, _ descriptor: Int32?) -> Bool {
      guard var bytes = try? JSONEncoder().encode(message) else { return false }
      bytes.append(UInt8(ascii: "\n"))
      do {
        try socket.send(Array(bytes), descriptor: descriptor.map { FileDescriptor(rawValue: $0) })
        return true
      } catch {
        logger.error("handover: send failed: \(error)")
        return false
      }
    }
    // The listening sockets first: from now on, new clients queue on them for the new pager.
    let listeners = watched.withLock { watched -> [Entry] in
      let tokens = watched.entries.compactMap { token, entry -> UInt64? in
        switch entry {
        case .listener(let listener) where listener.created == nil: token
        case .controlListener: token
        default: nil
        }
      }
      return tokens.compactMap { watched.entries.removeValue(forKey: $0) }
    }
    var sent = true
    for entry in listeners {
      acceptorEpoll.remove(entry.descriptor)
      switch entry {
      case .listener(let listener):
        sent = sent && send(HandoverMessage(kind: "listener", path: listener.path, snapshot: listener.snapshotPath), entry.descriptor)
        listener.socket.close()  // the path stays: it is the new pager's now
      case .controlListener(let control):
        sent = sent && send(HandoverMessage(kind: "control", path: configuration.controlPath), entry.descriptor)
        control.close()
      default:
        break
      }
    }
    // Then each session, let go of by its loop between two turns.
    let sessions = registry.withLock { Array($0.live.values) }.sorted { $0.number < $1.number }
    var handed = 0
    for session in sessions where sent {
      guard session.server.overlay == nil, let pid = session.clientPID, let startTime = ClientProcess.startTime(of: pid) else { continue }
      guard loops.allSatisfy({ $0.release(session, timeout: .seconds(5)) }) else {
        logger.error("handover: a loop did not let go of a session in 5 s", metadata: ["session": "\(session.id)"])
        continue
      }
      let record = SessionRecord(
        session: session.number, pid: pid, startTime: startTime,
        uffdDescriptor: ClientProcess.descriptor(in: pid, sameFileAs: session.server.uffd.fileDescriptor.rawValue) ?? -1,
        snapshot: session.snapshotPath, regions: session.server.regions)
      sent = send(HandoverMessage(kind: "session", record: record), session.server.uffd.fileDescriptor.rawValue)
        && send(HandoverMessage(kind: "client"), session.client.fileDescriptor.rawValue)
      // Handed over (or lost with the new pager, which then fails as a crash would): no longer ours.
      registry.withLock { _ = $0.live.removeValue(forKey: session.number) }
      session.client.close()
      handed += 1
    }
    _ = send(HandoverMessage(kind: "done"), nil)
    socket.close()
    logger.info("handed over: stopping", metadata: ["sessions": "\(handed)", "listeners": "\(listeners.count)"])
    // A drain, not a stop: what could not be handed over (overlay sessions, or every session left
    // when the new pager went away mid-handover) is still served until it ends or the drain
    // timeout passes; with nothing left the pager ends at once.
    drain()
  }

  /// The new pager's side (``PagerConfiguration/takeoverControlPath``): asks the running pager
  /// for everything it serves and receives it (bounded: 10 s without a message fails it).
  func receiveTakeover() throws(UserfaultfdError) -> TakenOver {
    var taken = TakenOver()
    guard let path = configuration.takeoverControlPath else { return taken }
    let socket = try UnixSocket.connect(to: path)
    defer { socket.close() }
    try socket.send(Array(#"{"op":"handover"}"#.utf8) + [UInt8(ascii: "\n")])
    var pending: (record: SessionRecord, uffd: Int32)?
    var buffer: [UInt8] = []
    while true {
      guard let message = try socket.receive(capacity: 1 << 20, timeout: .seconds(10)) else {
        throw .invalidArgument(.serve, .badConfiguration("takeover: the running pager closed the connection before it was done"))
      }
      buffer += message.bytes
      var descriptor: Int32? = message.hasDescriptor ? (try? message.takeDescriptor())?.rawValue : nil
      while let newline = buffer.firstIndex(of: UInt8(ascii: "\n")) {
        let line = Array(buffer[..<newline])
        buffer.removeSubrange(...newline)
        guard let decoded = try? JSONDecoder().decode(HandoverMessage.self, from: Data(line)) else {
          if let descriptor { close(descriptor) }
          throw .invalidArgument(.serve, .badConfiguration("takeover: an unreadable message from the running pager"))
        }
        let attached = descriptor
        descriptor = nil  // a descriptor goes with the first line of its message
        switch decoded.kind {
        case "listener", "control":
          if let attached, let path = decoded.path { taken.listeners[path] = UnixSocket(attached) }
        case "session":
          if let attached, let record = decoded.record { pending = (record, attached) }
        case "client":
          if let (record, uffd) = pending {
            taken.sessions.append((record, uffd, attached.map(UnixSocket.init)))
            pending = nil
          }
        case "done":
          logger.info("took over", metadata: ["sessions": "\(taken.sessions.count)", "listeners": "\(taken.listeners.count)"])
          return taken
        default:
          if let attached { close(attached) }
        }
      }
    }
  }

  /// Serves the sessions taken over (after the loops have started).
  func adoptTakenOver(_ taken: inout TakenOver) {
    for (record, uffd, client) in taken.sessions {
      var sessionLogger = logger
      sessionLogger[metadataKey: "session"] = "s-\(record.session)"
      sessionLogger[metadataKey: "client_pid"] = "\(record.pid)"
      // Without its connection, the client's pidfd says when it is gone.
      guard let watcher = client ?? { let pidfd = cuffd_pidfd_open(record.pid); return pidfd >= 0 ? UnixSocket(pidfd) : nil }() else {
        close(uffd)
        sessionLogger.warning("taken-over session dropped: its client has exited")
        continue
      }
      if let failure = adopt(record, descriptor: uffd, client: watcher, sessionLogger: sessionLogger) {
        sessionLogger.warning("taken-over session not served: \(failure)")
      }
      let number = record.session
      while nextSession.load(ordering: .relaxed) <= number {
        let next = nextSession.load(ordering: .relaxed)
        _ = nextSession.compareExchange(expected: next, desired: number + 1, ordering: .relaxed)
      }
    }
    taken.sessions.removeAll()
    // Listening sockets the new configuration does not name: closed, their paths removed.
    for (path, socket) in taken.listeners {
      socket.close()
      unlink(path)
    }
    taken.listeners.removeAll()
  }
}
