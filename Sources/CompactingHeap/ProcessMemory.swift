import Glibc
import Userfaultfd

/// This process's resident memory, from /proc/self/status, with a resettable peak.
enum ProcessMemory {
  /// Resets the peak (VmHWM) to the current RSS (`echo 5 > /proc/self/clear_refs`).
  static func resetPeak() {
    let fd = open("/proc/self/clear_refs", O_WRONLY | O_CLOEXEC)
    guard fd >= 0 else { return }
    _ = write(fd, "5", 1)
    _ = close(fd)
  }

  /// Whether the page holding `address` is in this process's page tables (`mincore`; an
  /// anonymous page moved away or never touched is not). One system call, no allocation:
  /// async-signal-safe. True when the kernel cannot say, so a caller never takes a page it
  /// cannot see for gone.
  @inline(__always)
  static func isResident(_ address: UnsafeMutablePointer<UInt64>) -> Bool {
    var vector: UInt8 = 0
    let page = UnsafeMutableRawPointer(bitPattern: UInt(bitPattern: address) & ~UInt(PageSize.base &- 1))
    guard mincore(page, PageSize.base, &vector) == 0 else { return true }
    return vector & 1 != 0
  }

  /// Current resident set, bytes (VmRSS).
  static var resident: Int { field("VmRSS:") }
  /// Peak resident set since the last reset, bytes (VmHWM).
  static var peak: Int { field("VmHWM:") }

  private static func field(_ name: String) -> Int {
    let fd = open("/proc/self/status", O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return 0 }
    defer { _ = close(fd) }
    var bytes = [UInt8](repeating: 0, count: 8192)
    let count = bytes.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
    guard count > 0 else { return 0 }
    let text = String(decoding: bytes[0..<count], as: UTF8.self)
    for line in text.split(separator: "\n") where line.hasPrefix(name) {
      let number = line.dropFirst(name.count).split(whereSeparator: { $0 == " " || $0 == "\t" }).first
        .flatMap { Int($0) } ?? 0
      return number * 1024
    }
    return 0
  }
}

/// Monotonic and per-thread CPU clocks in nanoseconds.
enum CycleClock {
  static func now() -> Int64 { read(CLOCK_MONOTONIC) }
  static func threadCPU() -> Int64 { read(CLOCK_THREAD_CPUTIME_ID) }
  private static func read(_ clock: clockid_t) -> Int64 {
    var ts = timespec()
    clock_gettime(clock, &ts)
    return Int64(ts.tv_sec) * 1_000_000_000 + Int64(ts.tv_nsec)
  }
}
