import CUserfaultfd
import Glibc
import Logging
import Metrics
import Synchronization
import SystemPackage
import Userfaultfd

/// The snapshot pager a host runs once for all its VMs: it listens at any number of sockets (each
/// serving one snapshot file, and a control socket that creates per-session sockets), receives
/// each connecting VMM's userfaultfd and regions (Firecracker's handshake), and serves every
/// session's faults from one read-only, populated mapping per snapshot file.
///
/// Threads: one acceptor (connections, handshakes, control requests; never a fault) and a fixed
/// set of serving loops (``PagerConfiguration/loops``, one per CPU by default), each an epoll loop
/// over the userfaultfds and connections of its sessions. No thread per session. A session that
/// fails (its client dies, sends bad regions, stops, floods) ends alone and frees its descriptors
/// and page map.
///
/// ```swift
/// let pager = try SnapshotPagerHost(configuration: .init(
///   listens: [.init(socketPath: "/run/uffd/vm.sock", snapshotPath: "/srv/vm.mem")]))
/// try pager.start()
/// // ... on SIGTERM:
/// pager.drain()
/// _ = pager.waitUntilFinished(timeout: .seconds(60))
/// ```
public final class SnapshotPagerHost: Sendable {
  /// The settings it runs with.
  public let configuration: PagerConfiguration
  let logger: Logger
  let metrics: PagerMetrics
  let catalog: SnapshotCatalog
  let loops: [ServingLoop]
  let registry = Mutex(Registry())
  let nextSession = Atomic<UInt64>(1)
  private let draining = Atomic<Bool>(false)
  private let stopping = Atomic<Bool>(false)
  private let finished = Atomic<Bool>(false)
  private let started = Atomic<Bool>(false)
  let acceptorEpoll: Epoll
  private let acceptorThread = Mutex<DedicatedThread?>(nil)
  private let drainDeadline = Mutex<ContinuousClock.Instant?>(nil)
  /// Everything the acceptor thread owns (sockets, handshakes, control connections). Only that
  /// thread touches it once started; the Mutex makes that checkable rather than assumed.
  let watched = Mutex(Watched())
  private let onSessionEnded: (@Sendable (SnapshotServer.Statistics) -> Void)?
  /// Working sets recorded and replayed (WorkingSet/).
  let workingSets: WorkingSetLibrary
  /// The state directory's lock file, held for the pager's life (Restart/).
  let stateLock = Mutex<Int32>(-1)

  /// The sessions known to the pager, for the control requests and the session cap.
  struct Registry {
    var live: [UInt64: PagerSession] = [:]
    /// Connections in their handshake, and created sessions whose client has not connected yet.
    var pending = 0
    var endedTotals = ControlProtocol.Counters()
    var ended = 0
    var started = 0
  }

  /// A pager with `configuration`, logging to `logger` and counting with `metricsFactory` (the
  /// process's bootstrapped swift-metrics factory when nil). `onSessionEnded` hears each
  /// session's summary as it ends (on a serving thread: keep it short). Nothing is bound until
  /// ``start()``.
  ///
  /// - Throws: `UserfaultfdError.invalidArgument` for settings out of range.
  public init(configuration: PagerConfiguration, logger: Logger = Logger(label: "uffd.pager"),
              metricsFactory: (any MetricsFactory)? = nil,
              onSessionEnded: (@Sendable (SnapshotServer.Statistics) -> Void)? = nil) throws(UserfaultfdError) {
    try configuration.validate()
    self.onSessionEnded = onSessionEnded
    self.configuration = configuration
    self.logger = logger
    let metrics = PagerMetrics(factory: metricsFactory ?? MetricsSystem.factory)
    self.metrics = metrics
    let cache: ChunkCache
    do { cache = try ChunkCache(configuration: configuration.remote, logger: logger, metricsFactory: metricsFactory) } catch {
      throw .invalidArgument(.serve, .badConfiguration("\(error)"))
    }
    catalog = SnapshotCatalog(populate: configuration.populateSnapshots, remote: RemoteSnapshots(cache: cache))
    workingSets = WorkingSetLibrary(settings: configuration.workingSets, logger: logger)
    acceptorEpoll = try Epoll()
    var loops: [ServingLoop] = []
    let ended = Mutex<(@Sendable (PagerSession, SnapshotServer.Statistics) -> Void)?>(nil)
    for index in 0..<configuration.loops {
      loops.append(try ServingLoop(index: index, metrics: metrics, niceness: configuration.loopNiceness) { session, statistics in
        ended.withLock { $0 }?(session, statistics)
      })
    }
    self.loops = loops
    cache.whenChunkArrives { [loops] in for loop in loops { loop.wake() } }
    ended.withLock { $0 = { [weak self] session, statistics in self?.sessionEnded(session, statistics) } }
  }

  /// Maps (and populates) every configured snapshot, binds every socket (reclaiming stale socket
  /// files, refusing paths something listens on), and starts the threads. Fails before anything
  /// is served when any of it fails; whatever was bound is released again. A pager starts once.
  public func start() throws(UserfaultfdError) {
    guard !started.exchange(true, ordering: .acquiringAndReleasing) else {
      throw .invalidArgument(.serve, .badConfiguration("this pager has been started already"))
    }
    var bound: [String] = []
    var taken = TakenOver()
    do {
      raiseDescriptorLimit()
      taken = try receiveTakeover()  // Restart/Takeover.swift: only with --takeover
      try lockStateDirectory()  // Restart/: one pager per state directory
      for listen in configuration.listens {
        let snapshot = try catalog.snapshot(at: listen.snapshotPath)
        // The first session's handshake must not pay for the JSON decoder's, the page map's and
        // the histogram's first use (runtime metadata: hundreds of microseconds).
        SnapshotServer.warmUp(snapshot)
        let inherited = taken.listener(at: listen.socketPath)
        let socket = if let inherited { inherited } else { try bind(listen.socketPath) }
        bound.append(listen.socketPath)
        watch(.listener(Listener(socket: socket, path: listen.socketPath, snapshot: snapshot, snapshotPath: listen.snapshotPath)))
        logger.info("listening", metadata: [
          "socket": "\(listen.socketPath)", "snapshot": "\(listen.snapshotPath)", "snapshot_bytes": "\(snapshot.length)"])
      }
      if let controlPath = configuration.controlPath {
        let inherited = taken.listener(at: controlPath)
        let socket = if let inherited { inherited } else { try bind(controlPath) }
        bound.append(controlPath)
        watch(.controlListener(socket))
        logger.info("control socket listening", metadata: ["socket": "\(controlPath)"])
      }
      try workingSets.start(snapshots: configuration.listens.map(\.snapshotPath))
      for loop in loops { try loop.start() }
      adoptTakenOver(&taken)
      readoptSessions()  // Restart/: the sessions a previous pager served, before any new client
      let acceptor = try DedicatedThread { [self] in runAcceptor() }
      acceptorThread.withLock { $0 = acceptor }
    } catch {
      for loop in loops { loop.stop() }
      workingSets.stop()
      releaseStateDirectory()
      for session in taken.sessions { close(session.uffd) }
      watched.withLock { $0 = Watched() }
      for path in bound { unlink(path) }
      throw error
    }
    logger.info("serving", metadata: ["loops": "\(loops.count)", "max_sessions": "\(configuration.maxSessions)"])
  }

  /// Binds a listening socket at `path` with the configured access (a socket taken over is used as is).
  private func bind(_ path: String) throws(UserfaultfdError) -> UnixSocket {
    try ListeningSocket.bind(path, access: configuration.socketAccess)
  }

  /// Stops taking sessions (the sockets go away, the control socket answers "draining") and ends
  /// once the live sessions have ended or ``PagerConfiguration/drainTimeout`` has passed (any
  /// thread, any number of times).
  public func drain() {
    guard !draining.exchange(true, ordering: .acquiringAndReleasing) else { return }
    drainDeadline.withLock { $0 = .now + configuration.drainTimeout }
    logger.info("draining", metadata: ["active_sessions": "\(activeSessions)", "timeout_s": "\(configuration.drainTimeout)"])
    acceptorEpoll.wake()
  }

  /// Ends every session now and stops (any thread). Their clients' next missing page is no longer
  /// served: use ``drain()`` for a graceful end.
  public func stop() {
    stopping.store(true, ordering: .releasing)
    acceptorEpoll.wake()
  }

  /// Whether the pager has stopped (drained, or stopped).
  public var isFinished: Bool { finished.load(ordering: .acquiring) }

  /// Whether a drain has begun.
  public var isDraining: Bool { draining.load(ordering: .acquiring) }

  /// Waits until the pager has stopped, at most `timeout` (no bound when nil); whether it has.
  public func waitUntilFinished(timeout: Duration? = nil) -> Bool {
    let deadline = timeout.map { ContinuousClock.now + $0 }
    while !isFinished {
      if let deadline, ContinuousClock.now >= deadline { return false }
      usleep(5_000)
    }
    acceptorThread.withLock { thread in
      thread?.join()
      thread = nil
    }
    return true
  }

  /// Sessions being served now.
  public var activeSessions: Int { registry.withLock { $0.live.count } }

  /// Sessions served since the start, ended ones included.
  public var totalSessions: Int { registry.withLock { $0.started } }

  // MARK: Sessions

  private func sessionEnded(_ session: PagerSession, _ statistics: SnapshotServer.Statistics) {
    registry.withLock { registry in
      registry.live[session.number] = nil
      registry.endedTotals.add(statistics)
      registry.ended += 1
    }
    workingSets.collect(session.server, snapshotPath: session.snapshotPath, sessionID: session.id, final: true, logger: session.logger)
    forgetSessionState(session, reason: statistics.endReason)
    metrics.sessionsActive.record(activeSessions)
    metrics.sessionsEnded[statistics.endReason]?.increment()
    session.logger.info("session ended", metadata: [
      "reason": "\(statistics.endReason.rawValue)", "faults": "\(statistics.faults)",
      "pages_by_fault": "\(statistics.pagesByFault)", "pages_by_prefetch": "\(statistics.pagesByPrefetch)",
      "pages_by_replay": "\(statistics.pagesByReplay)",
      "zero_pages": "\(statistics.zeroPages)", "failed_faults": "\(statistics.failedFaults)",
      "fault_p50_us": "\(Self.microseconds(statistics.faultLatencyP50))", "fault_p99_us": "\(Self.microseconds(statistics.faultLatencyP99))",
    ])
    onSessionEnded?(statistics)
    acceptorEpoll.wake()  // a drain may be waiting for this one
  }

  /// Takes a slot for a new session, or says why not (the cap, a drain).
  private func reserveSlot() -> String? {
    if isDraining { return "the pager is draining: no new sessions" }
    return registry.withLock { registry in
      guard registry.live.count + registry.pending < configuration.maxSessions else {
        return "\(registry.live.count + registry.pending) sessions already (--max-sessions \(configuration.maxSessions))"
      }
      registry.pending += 1
      return nil
    }
  }

  private func releaseSlot() { registry.withLock { $0.pending -= 1 } }

  private func raiseDescriptorLimit() {
    // Four descriptors per session (connection, userfaultfd, the server's wake pipe): the soft
    // limit of 1024 would cap a busy host near 250 VMs.
    var limit = rlimit()
    guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0, limit.rlim_cur < limit.rlim_max else { return }
    limit.rlim_cur = limit.rlim_max
    _ = setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
  }

  // MARK: The acceptor thread

  struct Listener {
    let socket: UnixSocket
    let path: String
    let snapshot: SnapshotFile
    let snapshotPath: String
    /// A per-session socket from create-session: one client, then it goes away.
    var created: (number: UInt64, overlay: SessionOverlay?)? = nil
  }

  struct Handshake {
    let socket: UnixSocket
    let deadline: ContinuousClock.Instant
    let snapshot: SnapshotFile
    let snapshotPath: String
    let number: UInt64
    let overlay: SessionOverlay?
  }

  struct ControlConnection {
    let socket: UnixSocket
    var buffer: [UInt8] = []
  }

  enum Entry {
    case listener(Listener)
    case controlListener(UnixSocket)
    case handshake(Handshake)
    case control(ControlConnection)

    var descriptor: Int32 {
      switch self {
      case .listener(let l): l.socket.fileDescriptor.rawValue
      case .controlListener(let s): s.fileDescriptor.rawValue
      case .handshake(let h): h.socket.fileDescriptor.rawValue
      case .control(let c): c.socket.fileDescriptor.rawValue
      }
    }
  }

  struct Watched {
    var entries: [UInt64: Entry] = [:]
    var nextToken: UInt64 = 1
  }

  @discardableResult
  private func watch(_ entry: Entry) -> UInt64 {
    let token = watched.withLock { watched in
      let token = watched.nextToken
      watched.nextToken += 1
      watched.entries[token] = entry
      return token
    }
    if !acceptorEpoll.add(entry.descriptor, token: token) {
      logger.error("cannot watch a socket (epoll_ctl: errno \(errno))")
    }
    return token
  }

  /// Stops watching `token` and closes what it held (a listener's socket file goes too).
  private func unwatch(_ token: UInt64) {
    guard let entry = watched.withLock({ $0.entries.removeValue(forKey: token) }) else { return }
    acceptorEpoll.remove(entry.descriptor)
    switch entry {
    case .listener(let listener):
      listener.socket.close()
      unlink(listener.path)
      if listener.created != nil { releaseSlot() }
    case .controlListener(let socket):
      socket.close()
      if let path = configuration.controlPath { unlink(path) }
    case .handshake(let handshake):
      handshake.socket.close()
    case .control(let connection):
      connection.socket.close()
    }
  }

  private func runAcceptor() {
    var ready = Epoll.Ready()
    var closedForDrain = false
    while true {
      if stopping.load(ordering: .acquiring) { break }
      if isDraining && !closedForDrain {
        closedForDrain = true
        // No new sessions: every snapshot socket and unused per-session socket goes away now.
        let listeners = watched.withLock { $0.entries.filter { if case .listener = $0.value { true } else { false } }.map(\.key) }
        for token in listeners { unwatch(token) }
      }
      if isDraining {
        let (live, pending) = registry.withLock { ($0.live.count, $0.pending) }
        if live == 0 && pending == 0 { break }
        if let deadline = drainDeadline.withLock({ $0 }), ContinuousClock.now >= deadline {
          logger.warning("drain timeout: ending the sessions still live", metadata: ["active_sessions": "\(live)"])
          break
        }
      }
      acceptorEpoll.wait(into: &ready, milliseconds: 100)
      for slot in 0..<ready.count {
        let token = ready.tokens[slot]
        if token == Epoll.wakeToken {
          acceptorEpoll.drainWake()
          continue
        }
        guard let entry = watched.withLock({ $0.entries[token] }) else { continue }
        switch entry {
        case .listener(let listener): accept(on: listener, token: token)
        case .controlListener(let socket): acceptControl(on: socket)
        case .handshake(let handshake): completeHandshake(handshake, token: token)
        case .control(let connection): serveControl(connection, token: token)
        }
      }
      expireHandshakes()
      collectSettledTraces()
    }
    // The end: every socket closes, the loops end what is still live, then the pager is finished.
    let tokens = watched.withLock { Array($0.entries.keys) }
    for token in tokens { unwatch(token) }
    for loop in loops { loop.stop() }
    workingSets.stop()  // after the loops: the traces of the sessions they ended are written
    releaseStateDirectory()
    logger.info("stopped", metadata: ["sessions_served": "\(totalSessions)"])
    finished.store(true, ordering: .releasing)
  }

  private func acceptConnection(_ socket: UnixSocket) -> UnixSocket? {
    let fd = cuffd_socket_accept_nonblocking(socket.fileDescriptor.rawValue)
    guard fd >= 0 else {
      if errno != EAGAIN && errno != EWOULDBLOCK && errno != ECONNABORTED && errno != EINTR {
        logger.error("accept failed: errno \(errno)")
      }
      return nil
    }
    return UnixSocket(fd)
  }

  private func accept(on listener: Listener, token: UInt64) {
    guard let client = acceptConnection(listener.socket) else { return }
    let number: UInt64
    let overlay: SessionOverlay?
    if let created = listener.created {
      // A per-session socket: its slot was taken at create-session; it serves this one client.
      number = created.number
      overlay = created.overlay
      watched.withLock { _ = $0.entries.removeValue(forKey: token) }
      acceptorEpoll.remove(listener.socket.fileDescriptor.rawValue)
      listener.socket.close()
      unlink(listener.path)
    } else {
      if let refusal = reserveSlot() {
        metrics.sessionsRefused.increment()
        logger.warning("client refused: \(refusal)", metadata: [
          "client_pid": "\(client.peerProcessID.map(String.init) ?? "unknown")", "socket": "\(listener.path)"])
        client.close()
        return
      }
      number = nextSession.add(1, ordering: .relaxed).oldValue
      overlay = nil
    }
    watch(.handshake(Handshake(
      socket: client, deadline: .now + configuration.handshakeTimeout, snapshot: listener.snapshot,
      snapshotPath: listener.snapshotPath, number: number, overlay: overlay)))
  }

  private func completeHandshake(_ handshake: Handshake, token: UInt64) {
    var sessionLogger = logger
    sessionLogger[metadataKey: "session"] = "s-\(handshake.number)"
    sessionLogger[metadataKey: "client_pid"] = "\(handshake.socket.peerProcessID.map(String.init) ?? "unknown")"
    sessionLogger[metadataKey: "snapshot"] = "\(handshake.snapshotPath)"
    // The connection leaves the acceptor either way: it becomes a session or is closed.
    watched.withLock { _ = $0.entries.removeValue(forKey: token) }
    acceptorEpoll.remove(handshake.socket.fileDescriptor.rawValue)
    do {
      guard let message = try handshake.socket.receive(capacity: 64 << 10, timeout: .zero) else {
        throw UserfaultfdError.invalidArgument(.serve, .badRegions("the client hung up before sending its regions"))
      }
      let regions = try SnapshotServer.decodeRegions(message.bytes)
      let descriptor = try message.takeDescriptor()
      // The loops never block on a read: the descriptor's open file becomes non-blocking (VMMs
      // open it so already).
      _ = cuffd_set_nonblocking(descriptor.rawValue)
      let uffd: Userfaultfd
      do {
        uffd = try Userfaultfd(adopting: descriptor, origin: .anotherProcess)
      } catch {
        _ = close(descriptor.rawValue)
        throw error
      }
      let server = try SnapshotServer(
        uffd: uffd, regions: regions, snapshot: handshake.snapshot, configuration: configuration.server,
        overlay: handshake.overlay, observer: metrics)
      workingSets.prepare(server, snapshotPath: handshake.snapshotPath, logger: sessionLogger)
      let session = PagerSession(
        number: handshake.number, server: server, client: handshake.socket, snapshotPath: handshake.snapshotPath, logger: logger)
      let loop = admit(session)
      session.logger.info("session started", metadata: [
        "regions": "\(regions.count)", "bytes": "\(regions.reduce(UInt64(0)) { $0 &+ $1.size })", "loop": "\(loop.index)",
        "overlay_pages": "\(handshake.overlay?.count ?? 0)"])
      // Recorded before its first fault is served: a pager killed at any point after finds it.
      saveSessionState(session, hasOverlay: handshake.overlay != nil)
      loop.adopt(session)
    } catch {
      releaseSlot()
      metrics.failedHandshakes.increment()
      sessionLogger.warning("handshake refused: \(error)")
      handshake.socket.close()
    }
  }

  /// Recording sessions whose restore has settled hand their trace to the working-set writer.
  private func collectSettledTraces() {
    guard configuration.workingSets.recordDirectory != nil else { return }
    for session in registry.withLock({ Array($0.live.values) }) where session.server.isRecording {
      workingSets.collect(session.server, snapshotPath: session.snapshotPath, sessionID: session.id, final: false, logger: session.logger)
    }
  }

  private func expireHandshakes() {
    let now = ContinuousClock.now
    let expired = watched.withLock { watched in
      watched.entries.compactMap { token, entry -> (UInt64, Handshake)? in
        if case .handshake(let handshake) = entry, handshake.deadline <= now { return (token, handshake) }
        return nil
      }
    }
    for (token, handshake) in expired {
      logger.warning("handshake timed out: no regions within \(configuration.handshakeTimeout)", metadata: [
        "session": "s-\(handshake.number)", "client_pid": "\(handshake.socket.peerProcessID.map(String.init) ?? "unknown")",
        "snapshot": "\(handshake.snapshotPath)"])
      metrics.failedHandshakes.increment()
      unwatch(token)
      releaseSlot()
    }
  }

  // MARK: Control

  private func acceptControl(on socket: UnixSocket) {
    guard let connection = acceptConnection(socket) else { return }
    let count = watched.withLock { $0.entries.values.filter { if case .control = $0 { true } else { false } }.count }
    guard count < 64 else {
      logger.warning("control connection refused: 64 are open")
      connection.close()
      return
    }
    watch(.control(ControlConnection(socket: connection)))
  }

  private func serveControl(_ connection: ControlConnection, token: UInt64) {
    var connection = connection
    var chunk = [UInt8](repeating: 0, count: 16 << 10)
    let fd = connection.socket.fileDescriptor.rawValue
    let got = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
    if got == 0 || (got < 0 && errno != EAGAIN && errno != EINTR) {
      unwatch(token)
      return
    }
    if got > 0 { connection.buffer.append(contentsOf: chunk[0..<got]) }
    while let newline = connection.buffer.firstIndex(of: UInt8(ascii: "\n")) {
      let line = Array(connection.buffer[..<newline])
      connection.buffer.removeSubrange(...newline)
      guard !line.allSatisfy({ $0 == UInt8(ascii: " ") || $0 == UInt8(ascii: "\r") }) else { continue }
      if isHandoverRequest(line) {  // Restart/Takeover.swift: the sessions go to a new pager
        watched.withLock { _ = $0.entries.removeValue(forKey: token) }
        acceptorEpoll.remove(fd)
        handOver(over: connection.socket)
        return
      }
      let answer = ControlProtocol.encode(respond(to: line))
      // Answers are small; a client that does not read them loses its connection, never the pager's time.
      let sent = answer.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT | MSG_NOSIGNAL)) }
      guard sent == answer.count else {
        logger.warning("control client does not read its answers: connection closed")
        unwatch(token)
        return
      }
    }
    guard connection.buffer.count <= ControlProtocol.maxLine else {
      let answer = ControlProtocol.encode(.failure("request longer than \(ControlProtocol.maxLine) bytes"))
      _ = answer.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT | MSG_NOSIGNAL)) }
      unwatch(token)
      return
    }
    watched.withLock { $0.entries[token] = .control(connection) }
  }

  private func respond(to line: [UInt8]) -> ControlProtocol.Response {
    let request: ControlProtocol.Request
    switch ControlProtocol.decode(line) {
    case .success(let decoded): request = decoded
    case .failure(let refusal): return .failure(refusal.reason)
    }
    switch request.op {
    case "create-session": return createSession(request)
    case "list": return list(counters: false)
    case "stats": return list(counters: true)
    case "health":
      var response = ControlProtocol.Response(ok: true, status: isDraining ? "draining" : "serving")
      response.activeSessions = activeSessions
      response.loops = loops.count
      response.snapshots = catalog.count
      return response
    case "drain":
      drain()
      var response = ControlProtocol.Response(ok: true, status: "draining")
      response.activeSessions = activeSessions
      return response
    default:
      return .failure("unknown op \"\(request.op)\": create-session, list, stats, health or drain")
    }
  }

  private func createSession(_ request: ControlProtocol.Request) -> ControlProtocol.Response {
    guard let snapshotPath = request.snapshot, !snapshotPath.isEmpty else {
      return .failure("create-session needs \"snapshot\": the snapshot file's path")
    }
    let overlay: SessionOverlay?
    switch ControlProtocol.overlay(request.overlay) {
    case .success(let decoded): overlay = decoded
    case .failure(let refusal): return .failure(refusal.reason)
    }
    if let refusal = reserveSlot() { return .failure(refusal) }
    let number = nextSession.add(1, ordering: .relaxed).oldValue
    let directory = configuration.sessionDirectory ?? Self.directory(of: configuration.controlPath ?? "/tmp/x")
    let path = "\(directory)/uffd-session-\(number).sock"
    do {
      let snapshot = try catalog.snapshot(at: snapshotPath)
      let socket = try ListeningSocket.bind(path, access: configuration.socketAccess, backlog: 1)
      watch(.listener(Listener(
        socket: socket, path: path, snapshot: snapshot, snapshotPath: snapshotPath, created: (number, overlay))))
    } catch {
      releaseSlot()
      return .failure("create-session: \(error)")
    }
    logger.info("session created", metadata: [
      "session": "s-\(number)", "snapshot": "\(snapshotPath)", "socket": "\(path)", "overlay_pages": "\(overlay?.count ?? 0)"])
    return ControlProtocol.Response(ok: true, session: "s-\(number)", socket: path)
  }

  private func list(counters: Bool) -> ControlProtocol.Response {
    let now = ContinuousClock.now
    let (live, endedTotals, ended) = registry.withLock { ($0.live.values.sorted { $0.number < $1.number }, $0.endedTotals, $0.ended) }
    var entries: [ControlProtocol.SessionEntry] = live.map { session in
      ControlProtocol.SessionEntry(
        id: session.id, state: "serving", clientPID: session.clientPID, snapshot: session.snapshotPath, socket: nil,
        ageMs: Self.milliseconds(now - session.started), counters: counters ? ControlProtocol.Counters(session.statistics) : nil)
    }
    let waiting = watched.withLock { $0.entries.values.compactMap { entry -> ControlProtocol.SessionEntry? in
      if case .listener(let listener) = entry, let created = listener.created {
        return ControlProtocol.SessionEntry(
          id: "s-\(created.number)", state: "waiting", clientPID: nil, snapshot: listener.snapshotPath, socket: listener.path, ageMs: 0)
      }
      return nil
    } }
    entries += waiting.sorted { $0.id < $1.id }
    var response = ControlProtocol.Response(ok: true, status: isDraining ? "draining" : "serving", sessions: entries)
    response.activeSessions = live.count
    if counters {
      var total = endedTotals
      total.sessions = ended + live.count
      for session in live { total.add(session.statistics) }
      response.total = total
    }
    return response
  }

  static func directory(of path: String) -> String {
    guard let slash = path.lastIndex(of: "/") else { return "." }
    return slash == path.startIndex ? "/" : String(path[..<slash])
  }

  static func microseconds(_ duration: Duration) -> Int64 {
    let (seconds, attoseconds) = duration.components
    return seconds * 1_000_000 + attoseconds / 1_000_000_000_000
  }

  static func milliseconds(_ duration: Duration) -> Int {
    let (seconds, attoseconds) = duration.components
    return Int(seconds) * 1000 + Int(attoseconds / 1_000_000_000_000_000)
  }
}

extension SnapshotPagerHost {
  /// Counts `session` (pending until now) as live and picks the least loaded serving loop for it:
  /// the one step a new session and a re-adopted one share.
  func admit(_ session: PagerSession) -> ServingLoop {
    let count = registry.withLock { registry in
      registry.pending -= 1
      registry.live[session.number] = session
      registry.started += 1
      return registry.live.count
    }
    metrics.sessionsTotal.increment()
    metrics.sessionsActive.record(count)
    return loops.min { $0.load.load(ordering: .relaxed) < $1.load.load(ordering: .relaxed) } ?? loops[0]
  }
}
