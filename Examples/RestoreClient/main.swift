// The other side of `uffd serve`: a process that restores its memory from a snapshot lazily, the
// way a VMM resuming a Firecracker snapshot does. It maps empty "guest memory", registers it with
// a userfaultfd (MISSING, with REMOVE events), sends the fd and the JSON array of its regions to
// the page server in one message, then reads its memory (in user mode, and through write(2): a
// fault the kernel takes on its behalf), checks every byte against the snapshot, releases a few
// pages like a balloon and checks they read zero.
//
//   swift run RestoreClientExample SOCKET SNAPSHOT [--die-after PAGES]
import Foundation
import SystemPackage
import SnapshotPager
import Userfaultfd

let arguments = Array(CommandLine.arguments.dropFirst())
guard arguments.count >= 2 else {
  print("usage: RestoreClientExample SOCKET SNAPSHOT [--die-after PAGES]")
  exit(2)
}
let (socketPath, snapshotPath) = (arguments[0], arguments[1])
let dieAfter = arguments.firstIndex(of: "--die-after").flatMap { arguments.indices.contains($0 + 1) ? Int(arguments[$0 + 1]) : nil }

func fail(_ message: String) -> Never {
  print("restore-client: \(message)")
  exit(1)
}

do {
  let page = PageSize.base
  let snapshot = try SnapshotFile(path: snapshotPath)
  let pages = snapshot.length / page
  guard pages >= 8 else { fail("the snapshot must hold at least 8 pages") }
  let guest = try AnonymousMemory(length: pages * page)
  // A descriptor that serves kernel-mode faults too (write(2) from guest memory below).
  let uffd = try Userfaultfd(features: [.eventRemove], options: .nonBlocking)
  try uffd.register(guest.baseAddress, length: guest.length, mode: .missing)
  // The server may still be starting: try for up to ten seconds.
  var connected: UnixSocket?
  for _ in 0..<1000 where connected == nil {
    connected = try? UnixSocket.connect(to: socketPath)
    if connected == nil { usleep(10_000) }
  }
  guard let socket = connected else { fail("no server is listening at \(socketPath)") }
  let region = GuestRegion(base: Address(guest.baseAddress), size: guest.length, offset: 0)
  let json = try JSONEncoder().encode([region])
  try socket.send(Array(json), descriptor: uffd.fileDescriptor)

  // Read it back: the first half in user mode, the second half through a pipe.
  let expected = snapshot.bytes
  var pipeEnds: [Int32] = [-1, -1]
  guard pipe(&pipeEnds) == 0 else { fail("pipe: \(String(cString: strerror(errno)))") }
  var back = [UInt8](repeating: 0, count: page)
  for index in 0..<pages {
    if let dieAfter, index == dieAfter { kill(getpid(), SIGKILL) }
    let at = guest.baseAddress + index * page
    guard let want = UnsafeRawBufferPointer(rebasing: expected[(index * page)..<((index + 1) * page)]).baseAddress else {
      fail("the snapshot mapping is empty")
    }
    if index < pages / 2 {
      guard memcmp(at, want, page) == 0 else { fail("page \(index) differs (user-mode read)") }
    } else {
      guard write(pipeEnds[1], at, page) == page else { fail("write(2) from page \(index): \(String(cString: strerror(errno)))") }
      guard read(pipeEnds[0], &back, page) == page, back.withUnsafeBytes({ $0.baseAddress.map { memcmp($0, want, page) } ?? -1 }) == 0
      else { fail("page \(index) differs (kernel-mode read)") }
    }
  }
  // A balloon: release four pages; the server must serve them as zeros afterwards.
  let released = guest.baseAddress + (pages / 2) * page
  guard madvise(released, 4 * page, MADV_DONTNEED) == 0 else { fail("madvise: \(String(cString: strerror(errno)))") }
  guard UnsafeRawBufferPointer(start: released, count: 4 * page).allSatisfy({ $0 == 0 }) else {
    fail("released pages came back with snapshot data instead of zeros")
  }
  print("restore-client: \(pages) pages restored and checked (\(pages / 2) through write(2)); 4 released pages read zero")
} catch {
  fail("\(error)")
}
