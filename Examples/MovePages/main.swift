// Moving pages with UFFDIO_MOVE, and what to do when the kernel stops part-way: the pattern a
// runtime (a compacting collector, an allocator returning memory) writes around MOVE.
//
//   swift run MovePagesExample
//
// 1. Opens a userfaultfd, saying what to do when this user may not (the usual case for a non-root
//    user on a stock distribution).
// 2. Moves 16 pages with the raw ioctl, resuming after partial progress and pending events.
// 3. Forks a child so most of the next pages are shared copy-on-write: a strict logical move stops
//    at the first one (.moveStopped, with the report and the reason), and the rest are moved by
//    resuming with the atomic copy fallback. Every byte is checked; the exit status says whether
//    everything arrived.
import Glibc
import Userfaultfd

let page = PageSize.base
let pages = 64

/// Opens a handle; on a machine where this user may not, says how to allow it.
func openHandle() throws -> Userfaultfd {
  do {
    return try Userfaultfd()
  } catch {
    guard case .openFailed = error else { throw error }
    // Typical for a non-root user with vm.unprivileged_userfaultfd=0 and no access to
    // /dev/userfaultfd. Faults from user mode only are enough for this example.
    print("could not open a userfaultfd for kernel faults: \(error)")
    print("trying user-mode faults only (.allowUserModeOnly)")
    return try Userfaultfd(options: .allowUserModeOnly)
  }
}

/// Moves `length` bytes with UFFDIO_MOVE, resuming where the kernel stopped: after partial progress
/// (EAGAIN with bytes done) and after events it wanted read first (EAGAIN with none). Anything else
/// is the caller's to decide, and is thrown with the bytes done so far.
func moveAll(_ uffd: Userfaultfd, from source: UnsafeMutableRawPointer, to destination: UnsafeMutableRawPointer,
             length: Int) throws(UserfaultfdError) {
  var done = 0
  var retries = 0
  while done < length {
    do {
      try uffd.move(from: source + done, to: destination + done, length: length - done)
      return
    } catch {
      guard case .operationFailed(let failure) = error else { throw error }
      switch failure.kind {
      case .partial:
        done += failure.bytesDone
      case .retryAfterEvents where retries < 1000:
        // This example reads no events; a real handler reads them here, then retries.
        retries += 1
        sched_yield()
      default:
        throw error
      }
    }
  }
}

func fill(_ memory: AnonymousMemory, from first: Int, to end: Int, tag: UInt8) {
  for index in first..<end {
    (memory.baseAddress + index * page).initializeMemory(as: UInt8.self, repeating: tag &+ UInt8(index & 0x3f), count: page)
  }
}

func holds(_ memory: AnonymousMemory, page index: Int, tag: UInt8) -> Bool {
  let bytes = UnsafeRawBufferPointer(start: memory.baseAddress + index * page, count: page)
  return bytes.allSatisfy { $0 == tag &+ UInt8(index & 0x3f) }
}

do {
  let uffd = try openHandle()
  let verdict = PageMover.moveVerdict
  print("UFFDIO_MOVE on this kernel: \(verdict)")
  let source = try AnonymousMemory(length: pages * page)
  let destination = try AnonymousMemory(length: pages * page)
  try uffd.register(destination.baseAddress, length: destination.length, mode: .missing)
  fill(source, from: 0, to: pages, tag: 0x40)

  var firstLogical = 0
  if verdict.isUsable {
    // The raw ioctl: the first 16 pages change address; the source becomes a hole there.
    try moveAll(uffd, from: source.baseAddress, to: destination.baseAddress, length: 16 * page)
    print("moved 16 pages with UFFDIO_MOVE")
    firstLogical = 16
  }

  // A forked child now shares every source page. The parent writes pages 16..<24 again, which gives
  // it private copies of those: they can move; pages 24..<64 stay shared and are busy for MOVE.
  let child = fork()
  if child == 0 {
    pause()  // holds the shared pages until the parent is done
    _exit(0)
  }
  guard child > 0 else { throw UserfaultfdError.systemCallFailed("fork", .init(rawValue: errno)) }
  defer {
    kill(child, SIGKILL)
    var status: Int32 = 0
    _ = waitpid(child, &status, 0)
  }
  fill(source, from: 16, to: 24, tag: 0x40)

  let mover = PageMover(uffd)
  let rest = (pages - firstLogical) * page
  var resumeAt = 0
  if mover.usesMove {
    do {
      _ = try mover.move(from: source.baseAddress + firstLogical * page, to: destination.baseAddress + firstLogical * page,
                         length: rest, policy: .strict)
    } catch {
      guard case .moveStopped(let report) = error else { throw error }
      // Every page before the stop moved; every page after it is still in the source.
      print("strict move stopped after \(report.bytesMoved / page) pages: \(report.stop?.message ?? "")")
      if case .busy(let reason)? = report.stop?.cause { print("  why: \(reason), remedy: \(reason.remedy)") }
      resumeAt = report.bytesDone
    }
  }
  // Resume where it stopped: busy pages are taken atomically and copied, the rest moved.
  let report = try mover.move(
    from: source.baseAddress + firstLogical * page + resumeAt, to: destination.baseAddress + firstLogical * page + resumeAt,
    length: rest - resumeAt, policy: .copyFallback)
  print("resumed: \(report.bytesMoved / page) pages moved, \(report.bytesCopied / page) copied by the atomic fallback"
    + " (\(report.moveIoctls) MOVE, \(report.copyIoctls) COPY ioctls)")

  let wrong = (0..<pages).filter { !holds(destination, page: $0, tag: 0x40) }
  guard wrong.isEmpty else {
    print("FAILED: \(wrong.count) destination pages do not hold their bytes (first: \(wrong[0]))")
    exit(1)
  }
  print("all \(pages) pages arrived; the source is empty: \(source.bytes.allSatisfy { $0 == 0 })")
} catch {
  print("error: \(error)")
  exit(1)
}
