import Glibc
import Logging
import Synchronization
import Userfaultfd

/// Where a pager keeps working sets and what it does with them: a session whose snapshot has a
/// valid working set in the replay folder is replayed ahead of demand; a session whose snapshot
/// has none (or fewer than ``WorkingSetSettings/traces`` traces in it) is recorded, and its trace merged
/// into the snapshot's working set once the restore settles or the session ends.
///
/// Files: `<replay or record folder>/<snapshot file name>.wset` (the merged working set) and
/// `<record folder>/<snapshot file name>.<session>.trace.wset` (each recorded session). A file
/// for another snapshot that happens to share the name is refused by its identity, never replayed.
/// A chunked snapshot (a manifest's URL or path) is named by its whole address, its characters
/// other than letters, digits, `-` and `.` turned into `_` (every manifest is `manifest.json`),
/// and bound to its manifest's content identity (`SnapshotIdentity.init(manifest:)`); replaying
/// one also fetches its chunks ahead, in recorded order.
///
/// Files are written by one writer thread from a bounded queue, never on a serving loop or the
/// acceptor (a write takes milliseconds a fault must not wait for).
package final class WorkingSetLibrary: Sendable {
  let settings: WorkingSetSettings
  private let logger: Logger
  /// Each snapshot's identity, taken when its first session starts (the catalog maps a path once).
  private let identities = Mutex<[String: SnapshotIdentity]>([:])
  /// The last working set read (or written) per working-set file, with the file's identity then.
  private let loaded = Mutex<[String: (file: SnapshotIdentity, result: Result<WorkingSet, WorkingSetError>)]>([:])
  private let queue = Mutex<[Job]>([])
  private let stopping = Atomic<Bool>(false)
  private let writer = Mutex<DedicatedThread?>(nil)
  /// Traces written (for tests and logs).
  private let written = Atomic<Int>(0)

  /// The most traces waiting for the writer; beyond it a trace is dropped (logged).
  static let queueLimit = 64

  struct Job {
    let snapshotPath: String
    let sessionID: String
    let trace: WorkingSet
    let logger: Logger
  }

  init(settings: WorkingSetSettings, logger: Logger) {
    self.settings = settings
    self.logger = logger
  }

  /// Reads the working sets of `snapshots` (so the first session's handshake does not decode
  /// one) and starts the writer thread (when recording).
  func start(snapshots: [String]) throws(UserfaultfdError) {
    if let directory = settings.replayDirectory {
      // A chunked snapshot's identity is its manifest's: read at its first session, not here.
      for snapshot in snapshots where !RemoteSnapshots.isManifest(snapshot) {
        if let identity = identity(of: snapshot) { _ = workingSet(in: directory, of: snapshot, identity: identity, logger: logger) }
      }
    }
    guard settings.recordDirectory != nil else { return }
    let thread = try DedicatedThread { [self] in runWriter() }
    writer.withLock { $0 = thread }
  }

  /// Writes what is queued and stops the writer (bounded by the queue's length).
  func stop() {
    stopping.store(true, ordering: .releasing)
    let thread = writer.withLock { thread in
      defer { thread = nil }
      return thread
    }
    thread?.join()
  }

  /// Traces written so far.
  var tracesWritten: Int { written.load(ordering: .acquiring) }

  static func fileName(of snapshotPath: String) -> String {
    guard RemoteSnapshots.isManifest(snapshotPath) else {
      return String(snapshotPath.split(separator: "/").last ?? Substring(snapshotPath))
    }
    let name = String(snapshotPath.map { $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-" || $0 == ".") ? $0 : "_" })
    return name.count > 200 ? String(name.suffix(200)) : name  // within NAME_MAX with the suffixes
  }

  func workingSetPath(directory: String, snapshotPath: String) -> String {
    "\(directory)/\(Self.fileName(of: snapshotPath)).wset"
  }

  private func identity(of snapshotPath: String, chunked: ChunkedSnapshot? = nil) -> SnapshotIdentity? {
    if let known = identities.withLock({ $0[snapshotPath] }) { return known }
    let identity: SnapshotIdentity
    if let chunked {
      identity = SnapshotIdentity(manifest: chunked.manifest)
    } else if !RemoteSnapshots.isManifest(snapshotPath), let file = try? SnapshotIdentity(path: snapshotPath) {
      identity = file
    } else {
      return nil
    }
    identities.withLock { $0[snapshotPath] = $0[snapshotPath] ?? identity }
    return identity
  }

  /// The valid working set of `snapshotPath` in `directory`, read again only when the file
  /// changed; a refusal is logged once per file version.
  private func workingSet(in directory: String, of snapshotPath: String, identity: SnapshotIdentity,
                          logger: Logger) -> WorkingSet? {
    let path = workingSetPath(directory: directory, snapshotPath: snapshotPath)
    guard let file = try? SnapshotIdentity(path: path) else { return nil }  // no file
    if let cached = loaded.withLock({ $0[path] }), cached.file == file {
      return try? cached.result.get()
    }
    let result = Result { () throws(WorkingSetError) -> WorkingSet in try WorkingSet.read(from: path, expecting: identity) }
    loaded.withLock { $0[path] = (file, result) }
    if case .failure(let error) = result {
      logger.warning("working set refused, serving on demand: \(error)", metadata: ["working_set": "\(path)"])
    }
    return try? result.get()
  }

  /// Sets up a new session: replay when its snapshot has a valid working set, recording (unless
  /// `recording` is false: a re-adopted session's trace would miss its start) when the pager
  /// records and the working set still gathers traces. Runs on the acceptor (a `stat` and,
  /// when the file changed, one read).
  func prepare(_ server: SnapshotServer, snapshotPath: String, logger: Logger, recording: Bool = true) {
    guard settings.isActive, let identity = identity(of: snapshotPath, chunked: server.snapshot.chunked) else { return }
    var traces = 0
    if let directory = settings.replayDirectory,
       let set = workingSet(in: directory, of: snapshotPath, identity: identity, logger: logger) {
      traces = set.traces
      if !set.pages.isEmpty {
        server.startReplay(set)
        // A remote snapshot's chunks are asked for now, in recorded order: the network's round
        // trips overlap each other and the guest's start instead of following its faults.
        server.snapshot.chunked?.prefetch(set)
        logger.info("replaying working set", metadata: [
          "pages": "\(set.pages.count)", "mib": "\(set.bytes >> 20)", "traces": "\(set.traces)"])
        return  // a replayed session's faults are not its working set: it is not recorded
      }
    }
    guard recording, settings.recordDirectory != nil else { return }
    if traces == 0, let directory = settings.recordDirectory, directory != settings.replayDirectory,
       let set = workingSet(in: directory, of: snapshotPath, identity: identity, logger: logger) {
      traces = set.traces
    }
    guard traces < settings.traces else { return }
    server.startRecording(detector: settings.settle)
    logger.info("recording working set", metadata: ["traces_so_far": "\(traces)"])
  }

  /// Takes a session's settled trace (or, when `final`, whatever it recorded) and queues it for the
  /// writer. Cheap when the session does not record.
  func collect(_ server: SnapshotServer, snapshotPath: String, sessionID: String, final: Bool, logger: Logger) {
    guard settings.recordDirectory != nil, let identity = identities.withLock({ $0[snapshotPath] }),
          let trace = server.takeTrace(at: .now, identity: identity, final: final)
    else { return }
    let queued = queue.withLock { queue -> Bool in
      guard queue.count < Self.queueLimit else { return false }
      queue.append(Job(snapshotPath: snapshotPath, sessionID: sessionID, trace: trace, logger: logger))
      return true
    }
    if queued {
      logger.info("working set recorded", metadata: [
        "pages": "\(trace.pages.count)", "settled": "\(trace.settled)", "recording_ms": "\(trace.recordingMilliseconds)"])
    } else {
      logger.warning("working set trace dropped: \(Self.queueLimit) are waiting to be written")
    }
  }

  private func runWriter() {
    while true {
      let jobs = queue.withLock { queue in
        defer { queue.removeAll() }
        return queue
      }
      for job in jobs { write(job) }
      if jobs.isEmpty {
        if stopping.load(ordering: .acquiring) { return }
        usleep(20_000)
      }
    }
  }

  /// Writes a session's trace and merges it into the snapshot's working set.
  private func write(_ job: Job) {
    guard let directory = settings.recordDirectory else { return }
    let name = Self.fileName(of: job.snapshotPath)
    let tracePath = "\(directory)/\(name).\(job.sessionID).trace.wset"
    let mergedPath = workingSetPath(directory: directory, snapshotPath: job.snapshotPath)
    do {
      try job.trace.write(to: tracePath)
      var inputs = [job.trace]
      switch Result(catching: { () throws(WorkingSetError) -> WorkingSet in
        try WorkingSet.read(from: mergedPath, expecting: job.trace.snapshot)
      }) {
      case .success(let existing):
        guard existing.traces < settings.traces else {
          job.logger.info("working set has \(existing.traces) traces already: trace kept, not merged", metadata: ["trace": "\(tracePath)"])
          written.add(1, ordering: .releasing)
          return
        }
        inputs.insert(existing, at: 0)
      case .failure(.unreadable(_, ENOENT)):
        break
      case .failure(let error):
        job.logger.warning("replacing the working set (\(error))", metadata: ["working_set": "\(mergedPath)"])
      }
      let merged = try WorkingSet.merge(inputs)
      // The next session finds it decoded already (its handshake reads only the file's stat).
      try merged.write(to: mergedPath) { file in loaded.withLock { $0[mergedPath] = (file, .success(merged)) } }
      job.logger.info("working set written", metadata: [
        "working_set": "\(mergedPath)", "pages": "\(merged.pages.count)", "traces": "\(merged.traces)"])
    } catch {
      job.logger.error("working set not written: \(error)", metadata: ["working_set": "\(mergedPath)"])
    }
    written.add(1, ordering: .releasing)
  }
}

/// What a pager records and replays (``PagerConfiguration/workingSets``): see the folders and
/// files below, and the restoring-snapshots article.
public struct WorkingSetSettings: Sendable, Hashable {
  /// Where sessions' traces and the merged working sets are written (nil: nothing is recorded).
  public var recordDirectory: String?
  /// Where working sets are read from (nil: nothing is replayed).
  public var replayDirectory: String?
  /// How many sessions' traces a snapshot's working set gathers before recording stops (the
  /// union across clones).
  public var traces: Int
  /// When a recording stops.
  public var settle: SettleDetector

  /// Settings as given.
  public init(recordDirectory: String? = nil, replayDirectory: String? = nil, traces: Int = 3,
              settle: SettleDetector = SettleDetector()) {
    self.recordDirectory = recordDirectory
    self.replayDirectory = replayDirectory
    self.traces = traces
    self.settle = settle
  }

  /// The valid trace count.
  public static let tracesRange = 1...64

  /// Whether anything is recorded or replayed.
  public var isActive: Bool { recordDirectory != nil || replayDirectory != nil }
}
