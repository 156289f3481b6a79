import Glibc
import Userfaultfd

/// How a ``SnapshotPagerHost`` runs: where it listens, what it serves, how many at once.
public struct PagerConfiguration: Sendable {
  /// A socket path VMMs connect to and the snapshot file their sessions are served from.
  public struct Listen: Sendable, Hashable {
    /// The Unix socket's path.
    public var socketPath: String
    /// The snapshot (memory) file.
    public var snapshotPath: String

    /// A socket and its snapshot.
    public init(socketPath: String, snapshotPath: String) {
      self.socketPath = socketPath
      self.snapshotPath = snapshotPath
    }
  }

  /// Who may connect to the pager's sockets: a mode (`0o600` by default) and, when set, an owner
  /// (a jailer's VMM runs under its own uid and gid).
  public struct SocketAccess: Sendable, Hashable {
    /// The permission bits.
    public var mode: UInt32
    /// The owning user id, when it should change.
    public var owner: UInt32?
    /// The owning group id, when it should change.
    public var group: UInt32?

    /// Access as given.
    public init(mode: UInt32 = 0o600, owner: UInt32? = nil, group: UInt32? = nil) {
      self.mode = mode
      self.owner = owner
      self.group = group
    }
  }

  /// The snapshot sockets (any number; none when sessions come only through the control socket).
  public var listens: [Listen]
  /// The control socket's path (JSON lines), if any.
  public var controlPath: String?
  /// Where the control socket's `create-session` puts per-session sockets (default: the control
  /// socket's folder).
  public var sessionDirectory: String?
  /// The most sessions at once (handshakes and created sessions count); a client beyond it is
  /// refused: logged, its connection closed.
  public var maxSessions: Int
  /// How each session serves (fault-around, prefetch, the unservable-fault policy).
  public var server: SnapshotServer.Configuration
  /// Serving threads (each an event loop); default: one per CPU.
  public var loops: Int
  /// How long a client has, after connecting, to send its userfaultfd and regions.
  public var handshakeTimeout: Duration
  /// After a drain begins, how long live sessions may go on before they are ended.
  public var drainTimeout: Duration
  /// Map and populate each snapshot when it is configured (the first byte then never waits for it).
  public var populateSnapshots: Bool
  /// The sockets' mode and owner.
  public var socketAccess: SocketAccess
  /// The nice value of the serving loops' threads (-20 to 19; nil: the process's own). Default
  /// -10: a loop serves many clients, and one it has just woken must not preempt it (lowering it
  /// needs CAP_SYS_NICE; without it the loops keep the process's value).
  public var loopNiceness: Int32?
  /// Working sets: where sessions are recorded and replayed from (nothing by default).
  public var workingSets = WorkingSetSettings()
  /// Where the pager keeps each live session's client, regions and snapshot, so that a pager
  /// started after this one died re-adopts them (nil: sessions die with the pager).
  public var stateDirectory: String?
  /// The control socket of a running pager to take every listening socket and session from
  /// (an upgrade without a restart gap); nil: start afresh.
  public var takeoverControlPath: String?
  /// Chunked snapshots (a manifest's `s3://`, `http(s)://` or local `.json` address given as a
  /// snapshot): the host-wide chunk cache, fetch deadlines and retries, the failure policy.
  public var remote = RemoteSnapshotConfiguration()

  /// The valid session cap.
  public static let maxSessionsRange = 1...65_536
  /// The valid loop count.
  public static let loopsRange = 1...256

  /// A configuration with the usual defaults.
  public init(listens: [Listen] = [], controlPath: String? = nil, maxSessions: Int = 1024,
              server: SnapshotServer.Configuration = .init(), loops: Int? = nil) {
    self.listens = listens
    self.controlPath = controlPath
    self.maxSessions = maxSessions
    self.server = server
    self.loops = loops ?? Self.processors
    handshakeTimeout = .seconds(10)
    drainTimeout = .seconds(30)
    populateSnapshots = true
    socketAccess = SocketAccess()
    loopNiceness = -10
  }

  /// The CPUs this process may run on.
  public static var processors: Int { max(1, min(Int(sysconf(Int32(_SC_NPROCESSORS_ONLN))), loopsRange.upperBound)) }

  /// Checks every value before anything starts.
  func validate() throws(UserfaultfdError) {
    guard !listens.isEmpty || controlPath != nil else {
      throw .invalidArgument(.serve, .badConfiguration("nothing to serve: give at least one socket and snapshot, or a control socket"))
    }
    guard Self.maxSessionsRange.contains(maxSessions) else {
      throw .invalidArgument(.serve, .outOfRange(parameter: "maxSessions", value: maxSessions, valid: Self.maxSessionsRange))
    }
    guard Self.loopsRange.contains(loops) else {
      throw .invalidArgument(.serve, .outOfRange(parameter: "loops", value: loops, valid: Self.loopsRange))
    }
    guard SnapshotServer.Configuration.faultAroundRange.contains(server.faultAroundPages) else {
      throw .invalidArgument(.serve, .outOfRange(
        parameter: "faultAroundPages", value: server.faultAroundPages, valid: SnapshotServer.Configuration.faultAroundRange))
    }
    guard SnapshotServer.Configuration.prefetchRange.contains(server.prefetchPages) else {
      throw .invalidArgument(.serve, .outOfRange(
        parameter: "prefetchPages", value: server.prefetchPages, valid: SnapshotServer.Configuration.prefetchRange))
    }
    guard server.install != .readAndMove else {
      throw .notSupported(.move, "read+move installs serve this process's own memory only; a pager serves other processes")
    }
    guard socketAccess.mode <= 0o777 else {
      throw .invalidArgument(.socket, .outOfRange(parameter: "socket mode", value: Int(socketAccess.mode), valid: 0...0o777))
    }
    if let loopNiceness, !(-20...19).contains(loopNiceness) {
      throw .invalidArgument(.serve, .outOfRange(parameter: "loopNiceness", value: Int(loopNiceness), valid: -20...19))
    }
    guard WorkingSetSettings.tracesRange.contains(workingSets.traces) else {
      throw .invalidArgument(.serve, .outOfRange(parameter: "traces", value: workingSets.traces, valid: WorkingSetSettings.tracesRange))
    }
    do { try remote.validate() } catch { throw .invalidArgument(.serve, .badConfiguration("\(error)")) }
    let paths = listens.map(\.socketPath) + (controlPath.map { [$0] } ?? [])
    guard Set(paths).count == paths.count else {
      throw .invalidArgument(.socket, .badConfiguration("a socket path is given twice"))
    }
  }
}
