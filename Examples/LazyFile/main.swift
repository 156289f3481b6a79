// Lazy loading: a region whose pages are filled from a file on first touch, the way VM snapshot
// restore (Firecracker) and CRIU's lazy pages use userfaultfd. Only the pages a program touches
// are ever read from the file.
//
//   swift run LazyFileExample [pages]
import Foundation
import Synchronization
import SystemPackage
import Userfaultfd

let page = PageSize.base
let pages = CommandLine.arguments.dropFirst().first.flatMap(Int.init) ?? 256

do {
  // 1. A "snapshot" file: page i holds the text "page i" repeated.
  let path = FilePath(NSTemporaryDirectory() + "uffd-lazy-\(getpid()).img")
  let file = try FileDescriptor.open(path, .readWrite, options: [.create, .truncate], permissions: .ownerReadWrite)
  defer {
    try? file.close()
    try? FileManager.default.removeItem(atPath: path.string)
  }
  for index in 0..<pages {
    var content = [UInt8](repeating: 0, count: page)
    let text = Array("page \(index) ".utf8)
    for offset in 0..<page { content[offset] = text[offset % text.count] }
    _ = try content.withUnsafeBytes { try file.writeAll(toAbsoluteOffset: Int64(index * page), $0) }
  }

  // 2. An empty region the size of the file, served by a fault server that reads each missing
  //    page from the file into a staging page and copies it in.
  let uffd = try Userfaultfd(options: .nonBlocking)
  let region = try AnonymousMemory(length: pages * page)
  let staging = try AnonymousMemory(length: page, populate: true)
  let regionStart = Address(region.baseAddress)
  let stagingPage = Address(staging.baseAddress)
  let server = try FaultServer(uffd: uffd) { fault in
    let offset = fault.pageAddress - regionStart
    // Runs on the server thread, one fault at a time, so one staging page suffices.
    let read = (try? file.read(fromAbsoluteOffset: Int64(offset), into: staging.bytes)) ?? 0
    guard read == page else { return .zeroPage }
    return .copy(from: stagingPage)
  }
  defer { server.stop() }
  try server.register(region.baseAddress, length: region.length)

  // 3. Touch every third page, from two threads: only those are loaded.
  let touched = stride(from: 0, to: pages, by: 3).map { $0 }
  let base = Address(region.baseAddress)
  let wrong = Atomic<Int>(0)
  let threads = (0..<2).map { half in
    let thread = Thread {
      for index in touched where index % 2 == half {
        guard let pointer = (base + index * page).pointer else { continue }
        let text = String(decoding: UnsafeRawBufferPointer(start: pointer, count: 12), as: UTF8.self)
        if !text.hasPrefix("page \(index) ") { wrong.wrappingAdd(1, ordering: .relaxed) }
      }
    }
    thread.start()
    return thread
  }
  while threads.contains(where: { !$0.isFinished }) { usleep(1000) }

  server.stop()  // Joins the server thread: its counters are final.
  let loaded = Int(server.statistics.resolved)
  print("region of \(pages) pages backed by \(path.string)")
  print("touched \(touched.count) pages; \(loaded) loaded from the file on first touch; \(pages - loaded) never read")
  print("server: \(server.statistics)")
  guard loaded == touched.count, wrong.load(ordering: .relaxed) == 0 else {
    print("error: expected \(touched.count) loads with the right content")
    exit(1)
  }
} catch {
  print("error: \(error)")
  exit(1)
}
