import CUserfaultfdReference
import Foundation
import Userfaultfd

/// `uffd bench moves`: the per-page cost of moving N pages, each row measured by the Swift library
/// and by a C reference loop issuing the same system calls, interleaved in one run.
package struct MovesBenchmark {
  /// One benchmark row.
  package struct Row: Encodable, Sendable {
    package var name: String
    package var pagesPerIoctl: Int
    package var swiftNsPerPage: Double
    package var cNsPerPage: Double
    package var ratio: Double
  }

  /// What a row does.
  enum Kind {
    case move, copyDontNeed, logical, fillCopy, fillMove
  }

  struct Spec {
    var name: String
    var kind: Kind
    var pagesPerIoctl: Int
    var hugePages: Bool
  }

  let uffd: Userfaultfd
  let reps: Int
  /// Whether UFFDIO_MOVE may be used here; without it only the COPY rows run.
  var moveUsable = true
  let page = PageSize.base
  /// Bytes per repetition: 16 MiB of 4 KiB pages, 128 MiB for huge pages.
  let smallBytes = 16 << 20
  let hugeBytes = 128 << 20

  /// A benchmark of `reps` repetitions per row on `uffd`; `moveUsable` false runs the COPY rows only.
  package init(uffd: Userfaultfd, reps: Int, moveUsable: Bool) {
    self.uffd = uffd
    self.reps = reps
    self.moveUsable = moveUsable
  }

  /// The rows as the tool prints them.
  package static func table(_ rows: [Row], reps: Int) -> String {
    "UFFDIO_MOVE vs COPY+MADV_DONTNEED, ns per 4 KiB page, median of \(reps) (Swift library vs C reference)\n"
      + formatTable(
        ["row", "pages/ioctl", "swift ns/page", "c ns/page", "swift/c"],
        rows.map {
          [$0.name, "\($0.pagesPerIoctl)", String(format: "%.1f", $0.swiftNsPerPage),
           String(format: "%.1f", $0.cNsPerPage), String(format: "%.3f", $0.ratio)]
        })
  }

  static var specs: [Spec] {
    var specs: [Spec] = []
    for batch in [1, 16, 64, 512] {
      specs.append(Spec(name: "move/\(batch)", kind: .move, pagesPerIoctl: batch, hugePages: false))
      specs.append(Spec(name: "copy+dontneed/\(batch)", kind: .copyDontNeed, pagesPerIoctl: batch, hugePages: false))
      specs.append(Spec(name: "logical/\(batch)", kind: .logical, pagesPerIoctl: batch, hugePages: false))
    }
    let huge = PageSize.huge / PageSize.base
    specs.append(Spec(name: "move/2MiB-thp", kind: .move, pagesPerIoctl: huge, hugePages: true))
    specs.append(Spec(name: "copy+dontneed/2MiB-thp", kind: .copyDontNeed, pagesPerIoctl: huge, hugePages: true))
    specs.append(Spec(name: "logical/2MiB-thp", kind: .logical, pagesPerIoctl: huge, hugePages: true))
    // The kernel commit's case where COPY wins: the data's pages must be allocated first. COPY fills
    // a reused buffer and the kernel allocates the destination; MOVE must first fault in a fresh
    // source page to fill.
    specs.append(Spec(name: "copy-fresh/copy-1", kind: .fillCopy, pagesPerIoctl: 1, hugePages: false))
    specs.append(Spec(name: "copy-fresh/move-1", kind: .fillMove, pagesPerIoctl: 1, hugePages: false))
    return specs
  }

  /// Runs every row whose name contains `filter` (all when nil); `progress` hears about each.
  package func run(filter: String? = nil, progress: (String) -> Void) throws -> [Row] {
    let specs = Self.specs.filter {
      (filter == nil || $0.name.contains(filter ?? "")) && (moveUsable || [.copyDontNeed, .fillCopy].contains($0.kind))
    }
    var rows: [Row] = []
    for (index, spec) in specs.enumerated() {
      progress("[\(index + 1)/\(specs.count)] \(spec.name)")
      var swift: [Double] = []
      var c: [Double] = []
      for rep in 0..<reps {
        // Alternate which side goes first, so drift on a shared machine hits both alike.
        if rep % 2 == 0 {
          swift.append(try measure(spec, inC: false))
          c.append(try measure(spec, inC: true))
        } else {
          c.append(try measure(spec, inC: true))
          swift.append(try measure(spec, inC: false))
        }
      }
      let swiftMedian = median(swift), cMedian = median(c)
      rows.append(Row(name: spec.name, pagesPerIoctl: spec.pagesPerIoctl,
                      swiftNsPerPage: swiftMedian, cNsPerPage: cMedian,
                      ratio: cMedian > 0 ? swiftMedian / cMedian : 0))
    }
    return rows
  }

  /// Passes per repetition, so each timed repetition lasts tens of milliseconds: a huge-page pass
  /// over 128 MiB takes well under a millisecond, too short to time on a shared machine.
  func passes(_ spec: Spec) -> Int {
    switch spec.kind {
    case .fillCopy, .fillMove: return 1  // Each needs fresh memory.
    case .move, .logical: return spec.hugePages ? 32 : 4
    case .copyDontNeed: return 2
    }
  }

  /// One repetition: fresh memory, then the timed passes, alternating direction between the two
  /// registered areas. Returns ns per page.
  func measure(_ spec: Spec, inC: Bool) throws -> Double {
    let bytes = spec.hugePages ? hugeBytes : smallBytes
    let first = try AnonymousMemory(length: bytes, alignment: PageSize.huge)
    let second = try AnonymousMemory(length: bytes, alignment: PageSize.huge)
    for area in [first, second] { try area.advise(spec.hugePages ? .hugePage : .noHugePage) }
    if spec.kind != .fillMove && spec.kind != .fillCopy { try first.advise(.populateWrite) }
    let buffer = try AnonymousMemory(length: page, populate: true)
    let count = passes(spec)
    // Register the first area only when a pass moves data back into it: the fresh-page rows write
    // to it, and a write to a registered missing page would wait for a handler forever.
    let registered = count > 1 ? [first, second] : [second]
    for area in registered { try uffd.register(area.baseAddress, length: bytes, mode: .missing) }
    defer { for area in registered { try? uffd.unregister(area.baseAddress, length: bytes) } }

    var nanoseconds: Int64 = 0
    for pass in 0..<count {
      let (source, destination) = pass % 2 == 0 ? (first, second) : (second, first)
      nanoseconds += try inC
        ? runC(spec, source: source, destination: destination, buffer: buffer, bytes: bytes)
        : runSwift(spec, source: source, destination: destination, buffer: buffer, bytes: bytes)
    }
    return Double(nanoseconds) / Double(count * bytes / page)
  }

  /// One pass by the C reference loop.
  func runC(
    _ spec: Spec, source: AnonymousMemory, destination: AnonymousMemory, buffer: AnonymousMemory,
    bytes: Int
  ) throws -> Int64 {
    let fd = uffd.fileDescriptor.rawValue
    let batch = spec.pagesPerIoctl * page
    let src = source.baseAddress.assumingMemoryBound(to: CChar.self)
    let dst = destination.baseAddress.assumingMemoryBound(to: CChar.self)
    let nanoseconds: Int64
    switch spec.kind {
    case .move: nanoseconds = cuffd_ref_move(fd, src, dst, bytes, batch)
    case .copyDontNeed: nanoseconds = cuffd_ref_copy_dontneed(fd, src, dst, bytes, batch)
    case .logical: nanoseconds = cuffd_ref_logical(fd, src, dst, bytes, batch)
    case .fillCopy:
      nanoseconds = cuffd_ref_fill_copy(fd, buffer.baseAddress.assumingMemoryBound(to: CChar.self), dst, bytes)
    case .fillMove: nanoseconds = cuffd_ref_fill_move(fd, src, dst, bytes)
    }
    guard nanoseconds >= 0 else {
      throw ToolError("C reference for \(spec.name) failed: errno \(-nanoseconds)")
    }
    return nanoseconds
  }

  /// One pass by the Swift library, timed with the same clock.
  func runSwift(
    _ spec: Spec, source: AnonymousMemory, destination: AnonymousMemory, buffer: AnonymousMemory,
    bytes: Int
  ) throws -> Int64 {
    let batch = spec.pagesPerIoctl * page
    let start = cuffd_ref_now_ns()
    switch spec.kind {
    case .move:
      var offset = 0
      while offset < bytes {
        let n = min(batch, bytes - offset)
        try uffd.move(from: source.baseAddress + offset, to: destination.baseAddress + offset, length: n)
        offset += n
      }
    case .copyDontNeed:
      var offset = 0
      while offset < bytes {
        let n = min(batch, bytes - offset)
        try uffd.copy(from: source.baseAddress + offset, to: destination.baseAddress + offset, length: n)
        try source.advise(.dontNeed, offset: offset, length: n)
        offset += n
      }
    case .logical:
      let policy = MovePolicy(maxPagesPerIoctl: spec.pagesPerIoctl)
      _ = try PageMover(uffd).move(from: source.baseAddress, to: destination.baseAddress, length: bytes,
                                   policy: policy)
    case .fillCopy:
      var offset = 0
      while offset < bytes {
        fillPage(buffer.baseAddress, seed: UInt64(offset))
        try uffd.copy(from: buffer.baseAddress, to: destination.baseAddress + offset, length: page)
        offset += page
      }
    case .fillMove:
      var offset = 0
      while offset < bytes {
        fillPage(source.baseAddress + offset, seed: UInt64(offset))
        try uffd.move(from: source.baseAddress + offset, to: destination.baseAddress + offset, length: page)
        offset += page
      }
    }
    return cuffd_ref_now_ns() - start
  }

  /// The same page fill the C reference uses: one 64-bit store per word.
  @inline(__always)
  func fillPage(_ page: UnsafeMutableRawPointer, seed: UInt64) {
    let words = page.assumingMemoryBound(to: UInt64.self)
    for index in 0..<(self.page / 8) { words[index] = seed &+ UInt64(index) }
  }
}
