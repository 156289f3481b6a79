import CUserfaultfd
import Glibc
import Synchronization
import Userfaultfd

/// One of the pager's serving threads: an epoll loop over the userfaultfd and the connection of
/// every session it owns. Faults are answered on this thread as they are read (a copy from the
/// shared snapshot mapping takes microseconds: handing it to another thread would cost more than
/// it saves, and a fault served from another CPU costs several times more). Prefetch copies run
/// only when no descriptor of any session of this loop is ready, one bounded copy at a time, so a
/// demand fault waits for at most one prefetch copy, never for a whole prefetch. Sessions spread
/// over the loops prefetch in parallel, one CPU each. (A loop does not copy for another loop's
/// session: measured on a 2-CPU machine, a second copier took the CPU the client and the acceptor
/// needed and made a whole restore slower, and the kernel's own copy rate does not grow with a
/// second copier there; see the DocC article on restoring snapshots.)
///
/// The pager runs one loop per CPU and gives each new session to the loop with the fewest.
final class ServingLoop: Sendable {
  let index: Int
  private let epoll: Epoll
  /// Sessions handed over by the acceptor, taken by the loop on its next turn.
  private let mailbox = Mutex<[PagerSession]>([])
  /// Sessions to let go of without ending them (a takeover: another pager serves them next).
  private let releases = Mutex<[ReleaseRequest]>([])
  private let stopRequested = Atomic<Bool>(false)
  /// Sessions this loop serves (for the least-loaded choice).
  let load = Atomic<Int>(0)
  private let thread = Mutex<DedicatedThread?>(nil)
  private let ended: @Sendable (PagerSession, SnapshotServer.Statistics) -> Void
  private let metrics: PagerMetrics
  /// The nice value the loop's thread asks for (nil: the process's own).
  private let niceness: Int32?

  init(index: Int, metrics: PagerMetrics, niceness: Int32?, ended: @escaping @Sendable (PagerSession, SnapshotServer.Statistics) -> Void) throws(UserfaultfdError) {
    self.index = index
    self.metrics = metrics
    self.niceness = niceness
    self.ended = ended
    epoll = try Epoll()
  }

  func start() throws(UserfaultfdError) {
    let started = try DedicatedThread { [self] in run() }
    thread.withLock { $0 = started }
  }

  /// Gives `session` to this loop (any thread).
  func adopt(_ session: PagerSession) {
    load.add(1, ordering: .relaxed)
    mailbox.withLock { $0.append(session) }
    epoll.wake()
  }

  /// Stops serving `session` without ending it, between two turns (no fault of it is then read
  /// and unanswered, save retries the next server wakes); whether the loop did within `timeout`.
  func release(_ session: PagerSession, timeout: Duration) -> Bool {
    let request = ReleaseRequest(number: session.number)
    releases.withLock { $0.append(request) }
    epoll.wake()
    let deadline = ContinuousClock.now + timeout
    while !request.done.load(ordering: .acquiring) {
      guard ContinuousClock.now < deadline else { return false }
      usleep(200)
    }
    return true
  }

  /// Wakes the loop (any thread): a remote chunk its deferred faults wait for has arrived.
  func wake() { epoll.wake() }

  /// Ends every session of this loop and the thread (any thread); waits for it.
  func stop() {
    stopRequested.store(true, ordering: .releasing)
    epoll.wake()
    let running = thread.withLock { thread in
      defer { thread = nil }
      return thread
    }
    running?.join()
  }

  private func run() {
    // A loop answers the faults of many clients: when the client it has just woken preempts it,
    // every other session's fault waits for that client's slice. A higher priority than the
    // clients' (where the pager may set one: CAP_SYS_NICE, root) keeps the loop running.
    // (On Linux, PRIO_PROCESS with id 0 sets the calling thread's nice value only.)
    if let nice = niceness { _ = setpriority(__priority_which_t(PRIO_PROCESS.rawValue), 0, nice) }
    // Everything the loop touches per turn is allocated here, once.
    guard let buffer = try? EventBuffer(capacity: 64) else { return }
    var sessions: [UInt64: PagerSession] = [:]
    var ready = Epoll.Ready()
    var discard = [UInt8](repeating: 0, count: 4096)
    var prefetchTurn = 0

    func end(_ session: PagerSession, _ reason: SnapshotServer.Statistics.EndReason) {
      guard sessions.removeValue(forKey: session.number) != nil else { return }
      epoll.remove(session.server.uffd.fileDescriptor.rawValue)
      epoll.remove(session.client.fileDescriptor.rawValue)
      let statistics = session.server.end(reason: reason)
      report(session, statistics)
      session.client.close()
      load.subtract(1, ordering: .relaxed)
      ended(session, statistics)
    }

    while true {
      for session in mailbox.withLock({ box in defer { box.removeAll() }; return box }) {
        let uffdFD = session.server.uffd.fileDescriptor.rawValue
        let socketFD = session.client.fileDescriptor.rawValue
        guard epoll.add(uffdFD, token: session.number << 1), epoll.add(socketFD, token: session.number << 1 | 1, hangUps: true) else {
          epoll.remove(uffdFD)
          session.logger.error("cannot watch the session's descriptors (epoll_ctl: errno \(errno)); ending it")
          sessions[session.number] = session
          end(session, .failed)
          continue
        }
        session.server.begin()
        sessions[session.number] = session
      }
      for request in releases.withLock({ box in defer { box.removeAll() }; return box }) {
        if let session = sessions.removeValue(forKey: request.number) {
          epoll.remove(session.server.uffd.fileDescriptor.rawValue)
          epoll.remove(session.client.fileDescriptor.rawValue)
          report(session, nil)
          load.subtract(1, ordering: .relaxed)
        }
        request.done.store(true, ordering: .releasing)
      }
      if stopRequested.load(ordering: .acquiring) {
        for session in Array(sessions.values) { end(session, .stopped) }
        return
      }
      let deferred = sessions.values.contains { $0.server.hasDeferredFaults }
      let prefetching = sessions.values.contains { $0.prefetching.load(ordering: .relaxed) }
      // A prefetcher waiting for a remote chunk polls every millisecond rather than spinning.
      let stalled = prefetching && sessions.values.allSatisfy { !$0.prefetching.load(ordering: .relaxed) || $0.server.prefetchStalled.load(ordering: .relaxed) }
      epoll.wait(into: &ready, milliseconds: deferred || stalled ? 1 : prefetching ? 0 : 1000)
      // Wake-ups (a chunk arrived) are not work: replay and prefetch still get their turn below,
      // or a stream of arrivals would keep a replay waiting for those very chunks from running.
      var work = ready.count
      for slot in 0..<ready.count {
        let token = ready.tokens[slot]
        if token == Epoll.wakeToken {
          epoll.drainWake()
          work -= 1
          continue
        }
        guard let session = sessions[token >> 1] else { continue }
        if token & 1 == 1 {
          // The connection: the client sends nothing after the handshake, so readable means it
          // hung up, or it is writing junk, which is read and dropped (bounded per turn).
          if let reason = drainConnection(session.client, into: &discard) { end(session, reason) }
        } else if ready.events[slot] & UInt32(CUFFD_EPOLL_ERR | CUFFD_EPOLL_HUP) != 0 {
          end(session, .processGone)
        } else if case .ended(let reason) = session.server.serviceEvents(buffer: buffer) {
          end(session, reason)
        } else {
          report(session, nil)
        }
      }
      if deferred {
        for session in Array(sessions.values) where session.server.hasDeferredFaults {
          if case .ended(let reason) = session.server.serviceEvents(buffer: buffer) { end(session, reason) }
        }
      }
      if work == 0 && prefetching {
        // Nothing is ready: one prefetch copy, sessions taking turns.
        let candidates = sessions.values.filter { $0.prefetching.load(ordering: .relaxed) }.sorted { $0.number < $1.number }
        if !candidates.isEmpty {
          let session = candidates[prefetchTurn % candidates.count]
          prefetchTurn &+= 1
          if !session.server.prefetchOnce() { session.prefetching.store(false, ordering: .relaxed) }
          report(session, nil)
        }
      }
    }
  }

  /// Reads and drops what a connection holds; the end reason when it has hung up.
  private func drainConnection(_ socket: UnixSocket, into discard: inout [UInt8]) -> SnapshotServer.Statistics.EndReason? {
    let fd = socket.fileDescriptor.rawValue
    for _ in 0..<16 {
      let got = discard.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
      if got == 0 { return .clientHungUp }
      if got < 0 {
        return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR ? nil : .clientHungUp
      }
    }
    return nil
  }

  /// Adds a session's progress to the metrics (`final`: its summary at the end).
  private func report(_ session: PagerSession, _ final: SnapshotServer.Statistics?) {
    let now = final ?? session.server.statistics
    session.reported.withLock { before in
      metrics.add(now, since: before)
      before = now
    }
  }
}

/// A takeover's request to let go of one session (``ServingLoop/release(_:timeout:)``).
final class ReleaseRequest: Sendable {
  let number: UInt64
  let done = Atomic<Bool>(false)
  init(number: UInt64) { self.number = number }
}
