import CUserfaultfd
import Glibc
import Logging
import SystemPackage
import Userfaultfd

/// Surviving the pager's own restart. With a state directory (``PagerConfiguration/stateDirectory``)
/// the pager keeps one ``SessionRecord`` per live session; a pager started on that directory
/// re-adopts every session whose client still runs:
///
/// 1. `pidfd_open` (Linux 5.3) pins the client, whose start time must match the record's (a
///    recycled pid is not the client);
/// 2. `pidfd_getfd` (Linux 5.6; ptrace access to the client, which root has) duplicates the
///    client's userfaultfd into this process;
/// 3. `/proc/PID/pagemap` says which pages are present already: they are marked served and never
///    copied again (a page the client wrote keeps its bytes; a copy that still meets one gets
///    EEXIST, which is expected and never fatal);
/// 4. the session joins a serving loop, and `UFFDIO_WAKE` over every region releases the threads
///    whose fault the dead pager had read but not answered: they fault again, and are served.
///
/// A session whose client has exited is cleaned up (its record removed). Where `pidfd_getfd` is
/// missing (kernels before 5.6) or not permitted, the pager says so at start and serves new
/// sessions. Sessions created with overlay pages are not recorded (their overlay lives in the
/// dead pager's memory), nor are released ranges beyond what the kernel keeps itself: ranges the
/// pager handed back (unregistered) stay unregistered, but a page released and not handed back
/// in the instant before the crash would be served from the snapshot again.
extension SnapshotPagerHost {
  /// Takes the state directory (creating it, mode 0700) for this pager: an exclusive `flock` on
  /// its `lock` file, held until the process exits (the kernel lets go of it when the process
  /// dies, SIGKILL included). Two pagers re-adopting the same sessions would both read their
  /// events, and a REMOVE one of them never saw could let the other serve stale snapshot bytes.
  ///
  /// - Throws: `UserfaultfdError.invalidArgument` when another pager holds the directory or it
  ///   cannot be created.
  func lockStateDirectory() throws(UserfaultfdError) {
    guard let directory = configuration.stateDirectory else { return }
    if mkdir(directory, 0o700) != 0 && errno != EEXIST {
      throw .invalidArgument(.serve, .badConfiguration("state directory \(directory): \(String(cString: strerror(errno)))"))
    }
    let fd = open("\(directory)/lock", O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
    guard fd >= 0 else {
      throw .invalidArgument(.serve, .badConfiguration("state directory \(directory): \(String(cString: strerror(errno)))"))
    }
    // Taking over, the old pager lets go of the directory as it stops: wait for it (bounded).
    let deadline = ContinuousClock.now + (configuration.takeoverControlPath != nil ? .seconds(10) : .zero)
    while flock(fd, LOCK_EX | LOCK_NB) != 0 && errno == EWOULDBLOCK && ContinuousClock.now < deadline { usleep(10_000) }
    guard flock(fd, LOCK_EX | LOCK_NB) == 0 else {
      close(fd)
      throw .invalidArgument(.serve, .badConfiguration(
        "state directory \(directory) is held by another running pager (its lock file is locked): one pager per state directory"))
    }
    stateLock.withLock { $0 = fd }
  }

  /// Lets go of the state directory (the pager has stopped).
  func releaseStateDirectory() {
    stateLock.withLock { fd in
      if fd >= 0 { close(fd) }
      fd = -1
    }
  }

  /// Records a session before its first fault is served (on the acceptor; only with a state
  /// directory: a few hundred microseconds of /proc reads and one small file).
  func saveSessionState(_ session: PagerSession, hasOverlay: Bool) {
    guard let directory = configuration.stateDirectory else { return }
    guard !hasOverlay else {
      session.logger.info("session has overlay pages: not re-adoptable after a pager restart")
      return
    }
    guard let pid = session.clientPID, let startTime = ClientProcess.startTime(of: pid),
          let descriptor = ClientProcess.descriptor(in: pid, sameFileAs: session.server.uffd.fileDescriptor.rawValue)
    else {
      session.logger.warning("session cannot be re-adopted after a pager restart: the client's userfaultfd was not found in /proc")
      return
    }
    let record = SessionRecord(
      session: session.number, pid: pid, startTime: startTime, uffdDescriptor: descriptor,
      snapshot: session.snapshotPath, regions: session.server.regions)
    do {
      try record.write(directory: directory)
    } catch {
      session.logger.warning("session state not written (\(error)): not re-adoptable after a pager restart")
    }
  }

  /// Removes an ended session's record, unless the pager stopped it (its client still waits).
  func forgetSessionState(_ session: PagerSession, reason: SnapshotServer.Statistics.EndReason) {
    guard let directory = configuration.stateDirectory, reason != .stopped else { return }
    SessionRecord.remove(directory: directory, session: session.number)
  }

  /// Whether this kernel lets a pager recover another process's descriptor; the reason when not.
  static func pidfdGetfdUnavailable() -> String? {
    let me = cuffd_pidfd_open(getpid())
    guard me >= 0 else {
      return errno == ENOSYS ? "pidfd_open is missing (needs Linux 5.3)" : "pidfd_open failed: \(String(cString: strerror(errno)))"
    }
    defer { close(me) }
    let copy = cuffd_pidfd_getfd(me, me)
    guard copy >= 0 else {
      return errno == ENOSYS ? "pidfd_getfd is missing (needs Linux 5.6)" : "pidfd_getfd failed: \(String(cString: strerror(errno)))"
    }
    close(copy)
    return nil
  }

  /// Re-adopts the sessions recorded in the state directory (at start, before any new client).
  func readoptSessions() {
    guard let directory = configuration.stateDirectory else { return }
    let (records, unreadable) = SessionRecord.all(in: directory)
    for path in unreadable {
      logger.warning("unreadable session state removed", metadata: ["state_file": "\(path)"])
      unlink(path)
    }
    if let reason = Self.pidfdGetfdUnavailable() {
      logger.warning("sessions cannot be re-adopted after a restart here: \(reason); serving new sessions only", metadata: [
        "state_dir": "\(directory)", "recorded_sessions": "\(records.count)"])
      return
    }
    guard !records.isEmpty else { return }
    logger.info("re-adopting sessions", metadata: ["state_dir": "\(directory)", "recorded_sessions": "\(records.count)"])
    var highest: UInt64 = 0
    for record in records {
      highest = max(highest, record.session)
      // Taken over already (the old pager's records stay for a later restart).
      if registry.withLock({ $0.live[record.session] != nil }) { continue }
      readopt(record, directory: directory)
    }
    // New sessions are numbered after the re-adopted ones.
    while true {
      let next = nextSession.load(ordering: .relaxed)
      guard next <= highest else { break }
      if nextSession.compareExchange(expected: next, desired: highest + 1, ordering: .relaxed).exchanged { break }
    }
  }

  private func readopt(_ record: SessionRecord, directory: String) {
    var sessionLogger = logger
    sessionLogger[metadataKey: "session"] = "s-\(record.session)"
    sessionLogger[metadataKey: "client_pid"] = "\(record.pid)"
    sessionLogger[metadataKey: "snapshot"] = "\(record.snapshot)"
    func drop(_ why: String) {
      sessionLogger.info("session not re-adopted: \(why); its state removed")
      SessionRecord.remove(directory: directory, session: record.session)
    }
    let pidfd = cuffd_pidfd_open(record.pid)
    guard pidfd >= 0 else { return drop(errno == ESRCH ? "its client has exited" : "pidfd_open: \(String(cString: strerror(errno)))") }
    let pidSocket = UnixSocket(pidfd)  // owns the pidfd: readable when the client exits
    guard ClientProcess.startTime(of: record.pid) == record.startTime else {
      pidSocket.close()
      return drop("its client has exited (pid \(record.pid) now names another process)")
    }
    let descriptor = cuffd_pidfd_getfd(pidfd, record.uffdDescriptor)
    guard descriptor >= 0 else {
      let error = errno
      pidSocket.close()
      return drop(error == EPERM
        ? "pidfd_getfd was refused (the pager needs ptrace access to its clients: CAP_SYS_PTRACE)"
        : "pidfd_getfd: \(String(cString: strerror(error)))")
    }
    if let failure = adopt(record, descriptor: descriptor, client: pidSocket, sessionLogger: sessionLogger) {
      drop(failure)
    }
  }

  /// Serves a session another pager served: `descriptor` is this process's copy of the client's
  /// userfaultfd (taken over: this function owns it), `client` what says when the client is gone
  /// (its connection, or a pidfd). Marks the pages present in the client as served, gives the
  /// session to a loop and wakes every region. Nil on success, else why it could not.
  func adopt(_ record: SessionRecord, descriptor: Int32, client: UnixSocket, sessionLogger: Logger) -> String? {
    guard ClientProcess.isUserfaultfd("/proc/self/fd/\(descriptor)") else {
      close(descriptor)
      client.close()
      return "descriptor \(record.uffdDescriptor) of the client is no longer a userfaultfd"
    }
    _ = cuffd_set_nonblocking(descriptor)
    do throws(UserfaultfdError) {
      guard reserveRestoredSlot() else {
        close(descriptor)
        client.close()
        return "--max-sessions is reached"
      }
      let uffd: Userfaultfd
      do {
        uffd = try Userfaultfd(adopting: FileDescriptor(rawValue: descriptor), origin: .anotherProcess)
      } catch {
        close(descriptor)
        throw error
      }
      let snapshot = try catalog.snapshot(at: record.snapshot)
      let server = try SnapshotServer(
        uffd: uffd, regions: record.regions, snapshot: snapshot, configuration: configuration.server,
        overlay: nil, observer: metrics)
      // Pages already present are served: never copied again, never overwritten.
      var present = 0
      for region in record.regions {
        let pageSize = Int(region.effectivePageSize)
        guard let pages = ClientProcess.presentPages(
          in: record.pid, start: UInt(region.baseHostVirtAddr), count: Int(region.size) / pageSize, pageSize: pageSize)
        else { continue }
        present += server.markPresent(regionBase: UInt(region.baseHostVirtAddr), pageSize: pageSize, present: pages)
      }
      workingSets.prepare(server, snapshotPath: record.snapshot, logger: sessionLogger, recording: false)
      let session = PagerSession(
        number: record.session, server: server, client: client, snapshotPath: record.snapshot, logger: logger,
        clientPID: record.pid)
      let loop = admit(session)
      if let directory = configuration.stateDirectory { try? record.write(directory: directory) }
      loop.adopt(session)
      // Threads whose fault the dead pager read and never answered wait until woken.
      for region in record.regions {
        _ = RangeIoctl.wake(uffd.coreDescriptor, UInt(region.baseHostVirtAddr), length: Int(region.size))
      }
      session.logger.info("session re-adopted", metadata: [
        "present_pages": "\(present)", "regions": "\(record.regions.count)", "loop": "\(loop.index)"])
      return nil
    } catch {
      registry.withLock { $0.pending -= 1 }
      client.close()
      return "\(error)"
    }
  }

  /// A slot for a re-adopted session (counted as pending until it is live).
  private func reserveRestoredSlot() -> Bool {
    registry.withLock { registry in
      guard registry.live.count + registry.pending < configuration.maxSessions else { return false }
      registry.pending += 1
      return true
    }
  }
}
