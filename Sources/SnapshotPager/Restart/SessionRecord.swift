import Foundation
import Glibc
import Userfaultfd

/// What the state directory keeps of one live session, so that a pager started after this one
/// died finds its client again: the client's pid and start time, the number of its userfaultfd
/// descriptor in the client, the snapshot and the regions. One JSON file per session
/// (`session-<n>.json`), written when the session starts (atomically: a temporary file renamed),
/// removed when it ends with its client. Sessions ended by a stop (a drain timeout, SIGKILL)
/// keep theirs: their clients still wait for pages.
struct SessionRecord: Codable, Equatable {
  var version = 1
  var session: UInt64
  var pid: Int32
  var startTime: UInt64
  var uffdDescriptor: Int32
  var snapshot: String
  var regions: [GuestRegion]

  static func path(directory: String, session: UInt64) -> String { "\(directory)/session-\(session).json" }

  func write(directory: String) throws {
    let path = Self.path(directory: directory, session: session)
    let temporary = path + ".tmp"
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.sortedKeys]
    // No fsync: the file must outlive the pager's process, not the machine (its clients die with it).
    try encoder.encode(self).write(to: URL(fileURLWithPath: temporary))
    guard rename(temporary, path) == 0 else {
      unlink(temporary)
      throw CocoaError(.fileWriteUnknown)
    }
  }

  static func remove(directory: String, session: UInt64) { unlink(path(directory: directory, session: session)) }

  /// Every record in `directory`, with the files that could not be read (to be removed).
  static func all(in directory: String) -> (records: [SessionRecord], unreadable: [String]) {
    guard let names = try? FileManager.default.contentsOfDirectory(atPath: directory) else { return ([], []) }
    var records: [SessionRecord] = []
    var unreadable: [String] = []
    for name in names.sorted() where name.hasPrefix("session-") && name.hasSuffix(".json") {
      let path = "\(directory)/\(name)"
      guard let data = FileManager.default.contents(atPath: path), data.count <= 1 << 20,
            let record = try? JSONDecoder().decode(SessionRecord.self, from: data), record.version == 1
      else {
        unreadable.append(path)
        continue
      }
      records.append(record)
    }
    return (records, unreadable)
  }
}
