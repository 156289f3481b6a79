import ArgumentParser
import Logging
import SnapshotPager
import SnapshotPagerDaemon
import UffdTools
import Userfaultfd

/// `uffd serve`: the snapshot pager daemon (``PagerDaemon``), or with `--once` one client served
/// and a report (``ServeJob``). This only parses and calls.
struct ServeCommand: AsyncParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "serve",
    abstract: "Serve snapshots to restoring VMs over Unix sockets (Firecracker's handshake): one daemon for every VM.",
    discussion: """
      Listens at each --listen SOCKET=SNAPSHOT (or --socket with --snapshot) and at --control, and \
      serves every client that connects (a VMM resuming a snapshot, or any process that sends the \
      JSON array of its guest memory regions with its userfaultfd attached) until SIGTERM or \
      SIGINT, which drain it: no new sessions, the live ones served until they end or \
      --drain-timeout passes, then exit 0. Released pages (a balloon's MADV_DONTNEED) are served \
      as zeros afterwards. --fault-around and --prefetch-pages count pages of each region's page \
      size (16 means 64 KiB on 4 KiB pages, 32 MiB on 2 MiB hugetlbfs pages). Logs go to standard \
      error. With --once: serve one client, print a summary (or JSON) on standard output, and \
      exit 0 when the session ended with the client (1 when it failed or faults could not be served).

      Exit status: 0 after a drain (signal or control request) or a good --once session; 1 when \
      the session of --once failed; 64 for bad options; 1 when the pager cannot start (a socket \
      something listens on, a snapshot that cannot be mapped, a port in use).
      """)

  @Option(help: "Path of a Unix socket to listen at, serving --snapshot (the one-pair spelling of --listen).")
  var socket: String?
  @Option(help: "The snapshot file served at --socket.")
  var snapshot: String?
  @Option(help: ArgumentHelp("A socket path and the snapshot file it serves, SOCKET=SNAPSHOT; repeatable.", valueName: "socket=snapshot"))
  var listen: [String] = []
  @Option(help: "Path of the control socket (JSON lines: create-session, list, stats, health, drain).")
  var control: String?
  @Option(help: "Folder for the per-session sockets create-session makes (default: the control socket's folder).")
  var sessionDir: String?
  @Option(parsing: .unconditional, help: "The most sessions at once (1-65536); the next client is refused and its connection closed.")
  var maxSessions = 1024
  @Flag(help: "Serve one client, print its summary, and exit (non-zero when the session failed).")
  var once = false
  @Option(parsing: .unconditional, help: "Seconds live sessions may go on after a drain begins (0.1-86400).")
  var drainTimeout: Double = 30
  @Option(parsing: .unconditional, help: "Seconds a client has to send its userfaultfd and regions after connecting (0.1-3600).")
  var handshakeTimeout: Double = 10
  @Option(help: ArgumentHelp("Serve Prometheus metrics over HTTP at HOST:PORT (keep it on loopback).", valueName: "host:port"))
  var metrics: String?
  @Option(parsing: .unconditional, help: "Serving threads (event loops), 1-256 (default: one per CPU).")
  var loops: Int?
  @Option(parsing: .unconditional, help: "Nice value of the serving threads, -20 to 19 (default -10: a client a loop has just woken must not preempt it; kept as the process's when it may not be lowered).")
  var loopNice = -10
  @Option(help: ArgumentHelp("The sockets' permission bits, octal (default 600).", valueName: "mode"))
  var socketMode = "600"
  @Option(help: ArgumentHelp("The sockets' owner, UID or UID:GID (the jailer's VMM user).", valueName: "uid[:gid]"))
  var socketOwner: String?
  @Option(help: ArgumentHelp("What a fault that cannot be served gets: poison (the guest's access raises SIGBUS; zeros on kernels before 6.6) or zeros.", valueName: "poison|zeros"))
  var onUnservable = "poison"
  @Flag(help: "Do not populate each snapshot's mapping at start (the first faults then map it lazily).")
  var noPopulate = false
  @Option(parsing: .unconditional, help: "The most pages one fault brings in, in pages of the region's page size (1-4096; 1: demand faults only); the window grows on sequential faults.")
  var faultAround = 16
  @Flag(help: "Stream every untouched page in the background while faults keep priority.")
  var prefetch = false
  @Option(parsing: .unconditional, help: "Pages per prefetch copy, in pages of the region's page size (1-4096; at most 2 MiB a copy).")
  var prefetchPages = 512
  @Option(parsing: .unconditional, help: "With --once: seconds to wait for the client (default: as long as it takes).")
  var acceptTimeout: Double?
  @Option(help: ArgumentHelp("Record sessions' working sets into this folder (<snapshot name>.wset, merged across the first --record-traces sessions).", valueName: "dir"))
  var record: String?
  @Option(help: ArgumentHelp("Replay working sets from this folder ahead of demand (stale or corrupt ones are refused and logged).", valueName: "dir"))
  var replay: String?
  @Option(help: ArgumentHelp("Keep each live session's client, regions and snapshot here, and re-adopt the sessions found here at start (a pager restarted after a crash or upgrade; needs Linux 5.6 pidfd_getfd and ptrace access to the clients).", valueName: "dir"))
  var stateDir: String?
  @Option(help: ArgumentHelp("Take every listening socket and live session from the running pager whose control socket this is (an upgrade: the old one hands them over and exits).", valueName: "control-socket"))
  var takeover: String?
  @Option(parsing: .unconditional, help: "Sessions' traces a snapshot's working set gathers before recording stops (1-64).")
  var recordTraces = 3
  @Option(parsing: .unconditional, help: "Seconds of the settle window: a recording stops when a window adds at most 16 pages or 1% (0.1-600).")
  var settleSeconds: Double = 2
  @OptionGroup(title: "Chunked and remote snapshots") var remote: RemoteSnapshotOptions
  @OptionGroup var output: OutputOptions

  func validate() throws {
    try remote.check(once: once, snapshots: try pairs().map(\.snapshotPath))
    try check(faultAround, in: SnapshotServer.Configuration.faultAroundRange, "--fault-around")
    try check(prefetchPages, in: SnapshotServer.Configuration.prefetchRange, "--prefetch-pages")
    try check(maxSessions, in: PagerConfiguration.maxSessionsRange, "--max-sessions")
    if let loops { try check(loops, in: PagerConfiguration.loopsRange, "--loops") }
    try check(loopNice, in: -20...19, "--loop-nice")
    if let acceptTimeout, !(acceptTimeout.isFinite && acceptTimeout > 0 && acceptTimeout <= 86_400) {
      throw ValidationError("--accept-timeout must be more than 0 and at most 86400 seconds, got \(acceptTimeout)")
    }
    guard drainTimeout.isFinite, drainTimeout >= 0.1, drainTimeout <= 86_400 else {
      throw ValidationError("--drain-timeout must be 0.1 to 86400 seconds, got \(drainTimeout)")
    }
    guard handshakeTimeout.isFinite, handshakeTimeout >= 0.1, handshakeTimeout <= 3600 else {
      throw ValidationError("--handshake-timeout must be 0.1 to 3600 seconds, got \(handshakeTimeout)")
    }
    try check(recordTraces, in: WorkingSetSettings.tracesRange, "--record-traces")
    guard settleSeconds.isFinite, settleSeconds >= 0.1, settleSeconds <= 600 else {
      throw ValidationError("--settle-seconds must be 0.1 to 600, got \(settleSeconds)")
    }
    if once, record != nil || replay != nil || stateDir != nil || takeover != nil {
      throw ValidationError("--record, --replay, --state-dir and --takeover go with the daemon, not --once")
    }
    guard (socket == nil) == (snapshot == nil) else { throw ValidationError("--socket and --snapshot go together") }
    _ = try pairs()
    _ = try access()
    _ = try metricsAddress()
    _ = try unservable()
    if once {
      guard try pairs().count == 1, control == nil, metrics == nil else {
        throw ValidationError("--once serves one client of one socket: give one --listen (or --socket/--snapshot), no --control or --metrics")
      }
    } else {
      guard !(try pairs()).isEmpty || control != nil else {
        throw ValidationError("nothing to serve: give --listen SOCKET=SNAPSHOT (or --socket and --snapshot), or --control")
      }
      if acceptTimeout != nil { throw ValidationError("--accept-timeout goes with --once") }
    }
  }

  private func pairs() throws -> [PagerConfiguration.Listen] {
    var result: [PagerConfiguration.Listen] = []
    if let socket, let snapshot { result.append(.init(socketPath: socket, snapshotPath: snapshot)) }
    for pair in listen {
      guard let equals = pair.firstIndex(of: "="), equals != pair.startIndex, pair.index(after: equals) != pair.endIndex else {
        throw ValidationError("--listen takes SOCKET=SNAPSHOT, got \"\(pair)\"")
      }
      result.append(.init(socketPath: String(pair[..<equals]), snapshotPath: String(pair[pair.index(after: equals)...])))
    }
    return result
  }

  private func access() throws -> PagerConfiguration.SocketAccess {
    guard let mode = UInt32(socketMode, radix: 8), mode <= 0o777 else {
      throw ValidationError("--socket-mode takes octal permission bits (000-777), got \(socketMode)")
    }
    var access = PagerConfiguration.SocketAccess(mode: mode)
    if let socketOwner {
      let parts = socketOwner.split(separator: ":", omittingEmptySubsequences: false)
      guard (1...2).contains(parts.count), let uid = UInt32(parts[0]), uid != UInt32.max,
            parts.count == 1 || (UInt32(parts[1]).map { $0 != UInt32.max } ?? false)
      else { throw ValidationError("--socket-owner takes UID or UID:GID (numbers), got \(socketOwner)") }
      access.owner = uid
      access.group = parts.count == 2 ? UInt32(parts[1]) : nil
    }
    return access
  }

  private func metricsAddress() throws -> (host: String, port: Int)? {
    guard let metrics else { return nil }
    guard let colon = metrics.lastIndex(of: ":"), let port = Int(metrics[metrics.index(after: colon)...]),
          (0...65_535).contains(port), colon != metrics.startIndex
    else { throw ValidationError("--metrics takes HOST:PORT (port 0-65535), got \(metrics)") }
    return (String(metrics[..<colon]), port)
  }

  private func unservable() throws -> UnresolvableFaultAction {
    switch onUnservable {
    case "poison": return .poison
    case "zeros": return .zeroPage
    default: throw ValidationError("--on-unservable takes poison or zeros, got \(onUnservable)")
    }
  }

  private func serverConfiguration() throws -> SnapshotServer.Configuration {
    .init(faultAroundPages: faultAround, prefetch: prefetch, prefetchPages: prefetchPages, onUnresolvable: try unservable())
  }

  func run() async throws {
    if once { return try runOnce() }
    var configuration = PagerConfiguration(
      listens: try pairs(), controlPath: control, maxSessions: maxSessions, server: try serverConfiguration(), loops: loops)
    configuration.sessionDirectory = sessionDir
    configuration.drainTimeout = .milliseconds(Int64(drainTimeout * 1000))
    configuration.handshakeTimeout = .milliseconds(Int64(handshakeTimeout * 1000))
    configuration.populateSnapshots = !noPopulate
    configuration.socketAccess = try access()
    configuration.loopNiceness = Int32(loopNice)
    configuration.stateDirectory = stateDir
    configuration.takeoverControlPath = takeover
    configuration.workingSets = WorkingSetSettings(
      recordDirectory: record, replayDirectory: replay, traces: recordTraces,
      settle: SettleDetector(window: .milliseconds(Int64(settleSeconds * 1000))))
    configuration.remote = remote.configuration
    LoggingSystem.bootstrap { StreamLogHandler.standardError(label: $0) }
    do {
      try await PagerDaemon(configuration: configuration, metrics: try metricsAddress()).run(logger: Logger(label: "uffd.serve"))
    } catch let error as UserfaultfdError {
      throw ToolError("uffd serve: \(error)")
    }
  }

  private func runOnce() throws {
    guard let pair = try pairs().first else { throw ValidationError("--once needs one socket and snapshot") }
    var job = ServeJob(socketPath: pair.socketPath, snapshotPath: pair.snapshotPath)
    job.configuration = try serverConfiguration()
    job.acceptTimeout = acceptTimeout.map { .milliseconds(Int64($0 * 1000)) }
    let report = try job.run(progress: Progress("serve"))
    print(output.json ? try JSONOutput.string(report) : report.table)
    if !report.succeeded { throw ExitCode(1) }
  }
}
