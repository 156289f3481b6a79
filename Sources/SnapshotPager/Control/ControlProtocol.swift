import FoundationEssentials
import Userfaultfd

/// The control socket's protocol: one JSON object per line each way (documented in the pager's
/// DocC catalog and the README). Every request has an `op`; every answer has `ok`, and `error`
/// when `ok` is false.
enum ControlProtocol {
  /// Why a request was refused: its text goes back as the answer's `error`.
  struct Refusal: Error {
    var reason: String
    init(_ reason: String) { self.reason = reason }
  }

  /// The longest request line (bytes): a create-session with a few overlay pages fits.
  static let maxLine = 1 << 20

  struct Request: Decodable {
    var op: String
    var snapshot: String?
    var overlay: [OverlayPage]?
  }

  /// One overlay page: its offset in the snapshot (a multiple of 4096) and its 4096 bytes, base64.
  struct OverlayPage: Decodable {
    var offset: Int
    var data: String
  }

  struct Response: Encodable {
    var ok: Bool
    var error: String?
    var status: String?
    var session: String?
    var socket: String?
    var sessions: [SessionEntry]?
    var total: Counters?
    var activeSessions: Int?
    var loops: Int?
    var snapshots: Int?

    static func failure(_ why: String) -> Response { Response(ok: false, error: why) }

    enum CodingKeys: String, CodingKey {
      case ok, error, status, session, socket, sessions, total, loops, snapshots
      case activeSessions = "active_sessions"
    }
  }

  struct SessionEntry: Encodable {
    var id: String
    var state: String
    var clientPID: Int32?
    var snapshot: String
    var socket: String?
    var ageMs: Int
    var counters: Counters?

    enum CodingKeys: String, CodingKey {
      case id, state, snapshot, socket, counters
      case clientPID = "client_pid"
      case ageMs = "age_ms"
    }
  }

  struct Counters: Encodable {
    var sessions: Int?
    var faults = 0
    var pagesByFault = 0
    var pagesByPrefetch = 0
    var pagesByReplay = 0
    var zeroPages = 0
    var overlayPages = 0
    var releasedPages = 0
    var failedFaults = 0
    var bytesServed = 0

    init(sessions: Int? = nil) { self.sessions = sessions }

    init(_ s: SnapshotServer.Statistics) {
      add(s)
    }

    mutating func add(_ s: SnapshotServer.Statistics) {
      faults += s.faults + s.wakes
      pagesByFault += s.pagesByFault
      pagesByPrefetch += s.pagesByPrefetch
      pagesByReplay += s.pagesByReplay
      zeroPages += s.zeroPages
      overlayPages += s.overlayPages
      releasedPages += s.releasedPages
      failedFaults += s.failedFaults
      bytesServed += s.bytesServed
    }

    enum CodingKeys: String, CodingKey {
      case sessions, faults
      case pagesByFault = "pages_by_fault"
      case pagesByPrefetch = "pages_by_prefetch"
      case pagesByReplay = "pages_by_replay"
      case zeroPages = "zero_pages"
      case overlayPages = "overlay_pages"
      case releasedPages = "released_pages"
      case failedFaults = "failed_faults"
      case bytesServed = "bytes_served"
    }
  }

  static func decode(_ line: [UInt8]) -> Result<Request, Refusal> {
    do {
      return .success(try JSONDecoder().decode(Request.self, from: Data(line)))
    } catch {
      return .failure(Refusal("not a request (one JSON object with \"op\" per line): \(error)"))
    }
  }

  static func encode(_ response: Response) -> [UInt8] {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.sortedKeys]
    let bytes = (try? encoder.encode(response)).map { Array($0) } ?? Array(#"{"error":"response could not be encoded","ok":false}"#.utf8)
    return bytes + [UInt8(ascii: "\n")]
  }

  /// The overlay pages of a request, decoded and checked.
  static func overlay(_ pages: [OverlayPage]?) -> Result<SessionOverlay?, Refusal> {
    guard let pages, !pages.isEmpty else { return .success(nil) }
    var decoded: [(offset: Int, bytes: [UInt8])] = []
    for page in pages {
      guard let data = Data(base64Encoded: page.data) else {
        return .failure(Refusal("overlay page at offset \(page.offset): data is not base64"))
      }
      decoded.append((page.offset, Array(data)))
    }
    do {
      return .success(try SessionOverlay(pages: decoded))
    } catch {
      return .failure(Refusal("overlay: \(error)"))
    }
  }
}
