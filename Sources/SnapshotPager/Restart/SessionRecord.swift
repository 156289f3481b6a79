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

  /// The record as JSON, written by hand: it is written on the handshake path before the
  /// session's first fault, where Foundation's encoder and file writing cost several hundred
  /// microseconds (measured: 0.4-0.9 ms in all, against about 0.1 ms for this and the /proc reads).
  /// Read back with `JSONDecoder` (the restart path is not in a hurry).
  func json() -> [UInt8] {
    var out = #"{"version":\#(version),"session":\#(session),"pid":\#(pid),"startTime":\#(startTime),"#
    out += #""uffdDescriptor":\#(uffdDescriptor),"snapshot":"#
    out += Self.quoted(snapshot)
    out += #","regions":["#
    for (index, region) in regions.enumerated() {
      if index > 0 { out += "," }
      out += #"{"base_host_virt_addr":\#(region.baseHostVirtAddr),"size":\#(region.size),"offset":\#(region.offset)"#
      if let pageSize = region.pageSize { out += #","page_size":\#(pageSize)"# }
      if let kib = region.pageSizeKib { out += #","page_size_kib":\#(kib)"# }
      out += "}"
    }
    out += "]}\n"
    return Array(out.utf8)
  }

  /// `text` as a JSON string.
  static func quoted(_ text: String) -> String {
    var out = "\""
    for scalar in text.unicodeScalars {
      switch scalar {
      case "\"": out += "\\\""
      case "\\": out += "\\\\"
      case _ where scalar.value < 0x20: out += String(format: "\\u%04x", scalar.value)
      default: out.unicodeScalars.append(scalar)
      }
    }
    return out + "\""
  }

  func write(directory: String) throws(WorkingSetError) {
    let path = Self.path(directory: directory, session: session)
    let temporary = path + ".tmp"
    // No fsync: the file must outlive the pager's process, not the machine (its clients die with it).
    let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
    guard fd >= 0 else { throw .unreadable(path: temporary, errno: errno) }
    let bytes = json()
    let wrote = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
    let error = errno
    close(fd)
    guard wrote == bytes.count, rename(temporary, path) == 0 else {
      let failure = wrote == bytes.count ? errno : error
      unlink(temporary)
      throw .unreadable(path: path, errno: failure)
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
