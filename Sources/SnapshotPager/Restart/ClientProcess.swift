import CUserfaultfd
import Glibc
import Userfaultfd

/// What a pager learns about a client process from /proc, to find its userfaultfd again after a
/// restart and to see which of its pages are already present.
enum ClientProcess {
  /// The process's start time (`/proc/PID/stat` field 22, clock ticks since boot): with the pid it
  /// names one process for the machine's uptime, so a recycled pid is never mistaken for the client.
  static func startTime(of pid: Int32) -> UInt64? {
    guard let text = readSmallFile("/proc/\(pid)/stat"), let close = text.lastIndex(of: ")") else { return nil }
    // After "pid (comm)" come the fields from 3 (state) on: starttime, field 22, is the 20th.
    let fields = text[text.index(after: close)...].split(separator: " ")
    guard fields.count > 19 else { return nil }
    return UInt64(fields[19])
  }

  /// The number of the descriptor in process `pid` that refers to the same open file as `ours`
  /// (this process's copy of the client's userfaultfd), found among its userfaultfds. When kcmp is
  /// unavailable (no CONFIG_KCMP), the client's only userfaultfd. Nil when not found or when /proc
  /// of the client cannot be read.
  static func descriptor(in pid: Int32, sameFileAs ours: Int32) -> Int32? {
    guard let directory = opendir("/proc/\(pid)/fd") else { return nil }
    defer { closedir(directory) }
    var candidates: [Int32] = []
    while let entry = readdir(directory) {
      let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
        String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
      }
      guard let number = Int32(name), isUserfaultfd("/proc/\(pid)/fd/\(name)") else { continue }
      candidates.append(number)
    }
    var kcmpUnavailable = false
    for candidate in candidates {
      let same = cuffd_kcmp_same_file(getpid(), ours, pid, candidate)
      if same == 0 { return candidate }
      if same < 0 { kcmpUnavailable = true }
    }
    return kcmpUnavailable && candidates.count == 1 ? candidates[0] : nil
  }

  /// Whether the descriptor behind the /proc link `path` is a userfaultfd.
  static func isUserfaultfd(_ path: String) -> Bool {
    var buffer = [CChar](repeating: 0, count: 64)
    let length = readlink(path, &buffer, buffer.count - 1)
    guard length > 0 else { return false }
    return String(decoding: buffer[0..<length].map { UInt8(bitPattern: $0) }, as: UTF8.self) == "anon_inode:[userfaultfd]"
  }

  /// Which of `count` pages of `pageSize` bytes from `start` are present (or swapped out) in
  /// process `pid`, from `/proc/PID/pagemap` (reading it never faults a page in). Nil when it
  /// cannot be read (no ptrace access to the client).
  static func presentPages(in pid: Int32, start: UInt, count: Int, pageSize: Int) -> [Bool]? {
    let fd = open("/proc/\(pid)/pagemap", O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    let stride = max(1, pageSize / PageSize.base)  // 4 KiB entries per page
    var present = [Bool](repeating: false, count: count)
    let chunk = 8192
    var entries = [UInt64](repeating: 0, count: chunk)
    var page = 0
    while page < count {
      if stride == 1 {
        let wanted = min(chunk, count - page)
        let offset = off_t((start / UInt(PageSize.base) + UInt(page)) * 8)
        guard readFully(fd, &entries, count: wanted * 8, at: offset) else { return nil }
        for index in 0..<wanted { present[page + index] = entries[index] & (3 << 62) != 0 }
        page += wanted
      } else {
        // A huge page is present as a whole: its first 4 KiB entry says.
        let offset = off_t((start + UInt(page * pageSize)) / UInt(PageSize.base) * 8)
        guard readFully(fd, &entries, count: 8, at: offset) else { return nil }
        present[page] = entries[0] & (3 << 62) != 0
        page += 1
      }
    }
    return present
  }

  private static func readFully(_ fd: Int32, _ buffer: inout [UInt64], count: Int, at offset: off_t) -> Bool {
    buffer.withUnsafeMutableBytes { raw in
      guard let base = raw.baseAddress else { return false }
      var done = 0
      while done < count {
        let got = pread(fd, base + done, count - done, offset + off_t(done))
        if got < 0 && errno == EINTR { continue }
        guard got > 0 else { return false }
        done += got
      }
      return true
    }
  }

  static func readSmallFile(_ path: String) -> String? {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    var bytes = [UInt8](repeating: 0, count: 4096)
    let got = bytes.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
    guard got > 0 else { return nil }
    return String(decoding: bytes[0..<got], as: UTF8.self)
  }
}
