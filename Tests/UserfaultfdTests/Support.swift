import Foundation
import Synchronization
import Testing
import Userfaultfd

/// Whether this machine lets the tests open a userfaultfd at all. When it does not (no kernel
/// support, no permission), the tests that need one are skipped with the reason printed.
enum Kernel {
  static let openError: String? = {
    do {
      _ = try Userfaultfd()
      return nil
    } catch {
      let reason = "userfaultfd unavailable: \(error)"
      print("SKIP: \(reason)")
      return reason
    }
  }()

  static var hasUserfaultfd: Bool { openError == nil }

  static var hasMove: Bool {
    (try? Userfaultfd.probeSupportedFeatures().features.contains(.move)) ?? false
  }

  static var hasPoison: Bool {
    (try? Userfaultfd.probeSupportedFeatures().features.contains(.poison)) ?? false
  }

  static var hasMinorShmem: Bool {
    (try? Userfaultfd.probeSupportedFeatures().features.contains(.minorShmem)) ?? false
  }

  /// `UFFD_USER_MODE_ONLY` (Linux 5.11).
  static var hasUserModeOnly: Bool { (try? Userfaultfd(options: .userModeOnly)) != nil }

  /// `MADV_POPULATE_WRITE` (Linux 5.14).
  static var hasPopulateWrite: Bool {
    guard let memory = try? AnonymousMemory(length: PageSize.base) else { return false }
    return (try? memory.advise(.populateWrite)) != nil
  }

  static var hasSigbus: Bool {
    (try? Userfaultfd.probeSupportedFeatures().features.contains(.sigbus)) ?? false
  }
}

/// Every test that needs the kernel's userfaultfd, nested here so they run one at a time: a test
/// that forks shares every private page of the process with its child for a moment, and any
/// UFFDIO_MOVE running in parallel would then fail with EBUSY.
@Suite("Kernel", .serialized, .enabled(if: Kernel.hasUserfaultfd, "userfaultfd is unavailable here"))
struct KernelTests {}

extension Address {
  /// A pointer to memory the test mapped there (an `Address` is what crosses into test threads).
  var mapped: UnsafeMutableRawPointer {
    guard let pointer else { preconditionFailure("a test address is never 0") }
    return pointer
  }
}

/// A plain OS thread (never Swift's cooperative pool: it may block in a page fault).
final class TestThread: Sendable {
  private final class State: Sendable {
    let finished = Atomic<Bool>(false)
    let done = DispatchSemaphore(value: 0)
  }
  private let state = State()

  init(_ body: @escaping @Sendable () -> Void) {
    let state = self.state
    let thread = Thread {
      body()
      state.finished.store(true, ordering: .releasing)
      state.done.signal()
    }
    thread.start()
  }

  /// Whether the body has returned.
  var isFinished: Bool { state.finished.load(ordering: .acquiring) }

  /// Waits up to `seconds` for the body to return; true if it did.
  func join(seconds: Double = 10) -> Bool {
    if isFinished { return true }
    guard state.done.wait(timeout: .now() + seconds) == .success else { return false }
    state.done.signal()  // let later joins return at once
    return true
  }
}

/// Fills a page with a recognisable pattern derived from `seed`.
func fill(_ page: UnsafeMutableRawPointer, seed: UInt64, length: Int = PageSize.base) {
  let words = page.bindMemory(to: UInt64.self, capacity: length / 8)
  for index in 0..<(length / 8) { words[index] = seed &* 0x9E37_79B9_7F4A_7C15 &+ UInt64(index) }
}

/// Whether a page holds the pattern `fill(_:seed:)` wrote.
func holds(_ page: UnsafeRawPointer, seed: UInt64, length: Int = PageSize.base) -> Bool {
  let words = page.assumingMemoryBound(to: UInt64.self)
  for index in 0..<(length / 8) where words[index] != seed &* 0x9E37_79B9_7F4A_7C15 &+ UInt64(index) {
    return false
  }
  return true
}

/// Whether every byte of a range is zero.
func isZero(_ start: UnsafeRawPointer, length: Int = PageSize.base) -> Bool {
  UnsafeRawBufferPointer(start: start, count: length).allSatisfy { $0 == 0 }
}

/// The failure inside an `operationFailed` error, or nil.
func failure(_ error: UserfaultfdError) -> OperationFailure? {
  if case .operationFailed(let failure) = error { return failure }
  return nil
}

/// Waits up to `seconds` for `condition` (the kernel releases a waiting thread as soon as an event
/// is read, a moment before the reader has handled it).
func eventually(seconds: Double = 5, _ condition: () -> Bool) -> Bool {
  let deadline = Date().addingTimeInterval(seconds)
  while !condition() {
    if Date() > deadline { return false }
    usleep(1000)
  }
  return true
}

/// Waits up to `seconds` for `condition`, calling nothing that allocates (the monotonic clock and
/// usleep): for a thread that waits while a fork holds malloc's locks.
func waitWithoutAllocating(seconds: Int, _ condition: () -> Bool) -> Bool {
  var now = timespec()
  clock_gettime(CLOCK_MONOTONIC, &now)
  let deadline = now.tv_sec + seconds
  while !condition() {
    clock_gettime(CLOCK_MONOTONIC, &now)
    if now.tv_sec >= deadline { return false }
    usleep(1000)
  }
  return true
}

/// Whether an event is waiting to be read on `uffd` (poll(2) with no wait).
func hasPendingEvent(_ uffd: Userfaultfd) -> Bool {
  var descriptor = pollfd(fd: uffd.fileDescriptor.rawValue, events: Int16(POLLIN), revents: 0)
  return poll(&descriptor, 1, 0) == 1
}

/// Bytes of the mapping containing `address` backed by transparent huge pages (smaps'
/// AnonHugePages), or nil when it cannot be read.
func anonHugePages(containing address: UInt) -> Int? {
  guard let data = FileHandle(forReadingAtPath: "/proc/self/smaps")?.readDataToEndOfFile(),
        let text = String(data: data, encoding: .utf8)
  else { return nil }
  var inside = false
  for line in text.split(separator: "\n") {
    let fields = line.split(separator: " ", omittingEmptySubsequences: true)
    guard let first = fields.first else { continue }
    if first.contains("-"), !first.hasSuffix(":") {
      let bounds = first.split(separator: "-").compactMap { UInt($0, radix: 16) }
      inside = bounds.count == 2 && bounds[0] <= address && address < bounds[1]
    } else if inside, first == "AnonHugePages:", fields.count > 1, let kib = Int(fields[1]) {
      return kib * 1024
    }
  }
  return nil
}

/// Whether the page at `address` is populated (present or swapped), per /proc/self/pagemap: a
/// check that never touches the page, so it is safe on a registered range nobody serves.
func isPopulated(_ address: UnsafeRawPointer) -> Bool {
  let fd = open("/proc/self/pagemap", O_RDONLY)
  guard fd >= 0 else { return false }
  defer { close(fd) }
  var entry: UInt64 = 0
  let offset = off_t(UInt(bitPattern: address) / UInt(PageSize.base)) * 8
  guard pread(fd, &entry, 8, offset) == 8 else { return false }
  return entry & (1 << 63 | 1 << 62) != 0
}

/// Waits up to `seconds` for events on a non-blocking `uffd` and reads them into `buffer`: a
/// bounded wait that turns into a failure instead of hanging the run. Allocates nothing before
/// the read (a thread inside fork() may hold malloc's locks until its fork event is read).
func awaitEvents(
  _ uffd: Userfaultfd, into buffer: EventBuffer, seconds: Int32 = 10,
  sourceLocation: SourceLocation = #_sourceLocation
) -> Int {
  var waited: Int32 = 0
  while waited < seconds * 1000 {
    var descriptor = pollfd(fd: uffd.fileDescriptor.rawValue, events: Int16(POLLIN), revents: 0)
    _ = poll(&descriptor, 1, 10)
    waited += 10
    if let count = try? uffd.readEvents(into: buffer), count > 0 { return count }
  }
  Issue.record("no event within \(seconds) s", sourceLocation: sourceLocation)
  return 0
}

/// `awaitEvents`, decoded.
func awaitEvents(
  _ uffd: Userfaultfd, seconds: Int32 = 10, sourceLocation: SourceLocation = #_sourceLocation
) throws -> [Event] {
  let buffer = try EventBuffer(capacity: 16)
  let count = awaitEvents(uffd, into: buffer, seconds: seconds, sourceLocation: sourceLocation)
  return (0..<count).map { buffer.event(at: $0, of: uffd) }
}

/// The report inside a `moveStopped` error; records an issue (and returns nil) for anything else.
func expectStopped(
  _ error: UserfaultfdError?, sourceLocation: SourceLocation = #_sourceLocation
) -> MoveReport? {
  if case .moveStopped(let report)? = error { return report }
  Issue.record("expected moveStopped, got \(String(describing: error))", sourceLocation: sourceLocation)
  return nil
}
