// Lazy loading: a region whose pages are filled from a file on first touch, the way VM snapshot
// restore (Firecracker) and CRIU's lazy pages use userfaultfd. Only the pages a program touches
// (and their neighbours, when it reads sequentially) are ever read from the file. The serving is
// the library's SnapshotServer, the same one `uffd serve` runs for another process.
//
//   swift run LazyFileExample [pages]
import Foundation
import Synchronization
import SystemPackage
import SnapshotPager
import Userfaultfd

let page = PageSize.base
let pages = max(3, min(CommandLine.arguments.dropFirst().first.flatMap(Int.init) ?? 256, 1 << 20))

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

  // 2. An empty region the size of the file, registered with a userfaultfd, and a snapshot server
  //    for it on its own thread (never a thread that may fault on the region).
  let uffd = try Userfaultfd(features: [.eventRemove], options: .nonBlocking)
  let region = try AnonymousMemory(length: pages * page)
  try uffd.register(region.baseAddress, length: region.length, mode: .missing)
  let server = try SnapshotServer(
    uffd: uffd, regions: [GuestRegion(base: Address(region.baseAddress), size: region.length, offset: 0)],
    snapshot: SnapshotFile(path: path.string), configuration: .init(faultAroundPages: 1))
  let summary = Mutex<SnapshotServer.Statistics?>(nil)
  let serving = try DedicatedThread { summary.withLock { $0 = server.run() } }

  // 3. Touch every third page, from two threads: only those are loaded.
  let touched = stride(from: 0, to: pages, by: 3).map { $0 }
  let base = Address(region.baseAddress)
  let wrong = Atomic<Int>(0)
  let threads = try (0..<2).map { half in
    try DedicatedThread {
      for index in touched where index % 2 == half {
        guard let pointer = (base + index * page).pointer else { continue }
        let text = String(decoding: UnsafeRawBufferPointer(start: pointer, count: 12), as: UTF8.self)
        if !text.hasPrefix("page \(index) ") { wrong.wrappingAdd(1, ordering: .relaxed) }
      }
    }
  }
  threads.forEach { $0.join() }
  server.stop()
  serving.join()

  guard let statistics = summary.withLock({ $0 }) else { throw CocoaError(.featureUnsupported) }
  print("region of \(pages) pages backed by \(path.string)")
  print("touched \(touched.count) pages; \(statistics.pagesByFault) loaded from the file on first touch;"
    + " \(statistics.untouchedPages) never read")
  let (seconds, attoseconds) = statistics.faultLatencyP50.components
  let microseconds = Double(seconds) * 1e6 + Double(attoseconds) / 1e12
  print("server: \(statistics.faults) faults, median service \(String(format: "%.1f", microseconds)) µs")
  guard statistics.pagesByFault == touched.count, wrong.load(ordering: .relaxed) == 0 else {
    print("error: expected \(touched.count) loads with the right content")
    exit(1)
  }
} catch {
  print("error: \(error)")
  exit(1)
}
