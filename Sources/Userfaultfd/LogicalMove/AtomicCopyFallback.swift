#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import CUserfaultfd
import SystemPackage

extension PageMover.Run {
  /// Copies `pages` pages from `offset` to the destination and leaves the source empty, atomically
  /// with respect to writers (see ``PageMover``): holes are skipped or stop the move per policy,
  /// data runs are taken with mremap(DONTUNMAP) and copied with UFFDIO_COPY.
  mutating func fallback(pages: Int) throws(UserfaultfdError) {
    guard let map = PageMap(), let entries = map.entries(at: source + UInt(offset), count: pages)
    else {
      try copyTaken(pages: pages)
      return
    }
    var index = 0
    while index < pages {
      let isHole = entries[index].isHole
      let runEnd = entries[index...].firstIndex { $0.isHole != isHole } ?? pages
      let count = runEnd - index
      if isHole {
        guard policy.holes == .skip else {
          try stop(.hole, failure: nil, reason: nil,
                   "source page is a hole (pass a policy that skips holes to count them)")
        }
        advance(.hole, bytes: count * page)
      } else {
        try copyTaken(pages: count)
      }
      index = runEnd
    }
  }

  /// Takes `pages` pages at `offset` out of the source into scratch, copies the ones that were
  /// really there to the destination, and drops the scratch pages.
  private mutating func copyTaken(pages: Int) throws(UserfaultfdError) {
    let bytes = pages * page
    let scratch = try scratchMemory(bytes: bytes)
    guard let src = UnsafeMutableRawPointer(bitPattern: source + UInt(offset)),
          let dst = UnsafeMutableRawPointer(bitPattern: destination + UInt(offset))
    else { throw .invalidArgument(.move, "null address") }
    // 1. The atomic step: the source's page-table entries move to scratch; the source is a hole.
    let taken = cuffd_mremap(
      src, bytes, bytes, CUFFD_MREMAP_MAYMOVE | CUFFD_MREMAP_FIXED | CUFFD_MREMAP_DONTUNMAP,
      scratch.baseAddress)
    if taken == cuffd_map_failed() {
      let error = Errno.current
      try stop(.busy, failure: nil, reason: nil,
               "copy fallback could not take the source pages: mremap(MREMAP_DONTUNMAP) failed with"
                 + " \(ErrnoName.of(error)) (\(error)); the source is untouched")
    }
    defer { try? scratch.advise(.dontNeed, offset: 0, length: bytes) }
    // 2. What was taken: a page can leave the source between the caller's look and the take (a
    //    concurrent MOVE). Copying such a hole would plant a zero page, a second copy of data that
    //    lives elsewhere, so only pages present in scratch are copied; the rest count as holes.
    var present: [PageMap.Entry]?
    if let map = PageMap() { present = map.entries(at: UInt(bitPattern: scratch.baseAddress), count: pages) }
    var index = 0
    while index < pages {
      let isHole = present.map { $0[index].isHole } ?? false
      var end = index + 1
      while end < pages, (present.map { $0[end].isHole } ?? false) == isHole { end += 1 }
      if isHole {
        advance(.hole, bytes: (end - index) * page)
      } else {
        try copyRun(scratch.baseAddress + index * page, to: dst + index * page,
                    source: src + index * page, bytes: (end - index) * page)
      }
      index = end
    }
  }

  /// Copies one run of taken pages into the destination; on a refusal puts the rest back.
  private mutating func copyRun(
    _ scratch: UnsafeMutableRawPointer, to dst: UnsafeMutableRawPointer,
    source src: UnsafeMutableRawPointer, bytes: Int
  ) throws(UserfaultfdError) {
    var done = 0
    var attempts = 0
    let options: Userfaultfd.CopyOptions = policy.wake ? [] : .dontWake
    while done < bytes {
      do {
        try mover.uffd.copy(from: scratch + done, to: dst + done, length: bytes - done, options: options)
        report.copyIoctls += 1
        done = bytes
      } catch .operationFailed(let failure) {
        report.copyIoctls += 1
        if failure.bytesDone > 0 {
          done += failure.bytesDone
          continue
        }
        attempts += 1
        if failure.errno == .resourceTemporarilyUnavailable && attempts <= PageMover.maxRetries {
          sched_yield()
          continue
        }
        // Put the pages not copied back where they came from, then report.
        let restored = putBack(scratch + done, to: src + done, bytes: bytes - done)
        advance(.copied, bytes: done)
        try stop(failure.errno == .fileExists ? .alreadyPresent : .notAttempted, failure: failure,
                 reason: nil, "copy fallback: \(failure.explanation); " + (restored
                   ? "the uncopied pages are back in the source"
                   : "the source was repopulated meanwhile, so the \(bytes - done) uncopied bytes could not be put back and were dropped"))
      }
    }
    advance(.copied, bytes: bytes)
  }

  /// Returns taken pages to the source: by UFFDIO_MOVE when the source is registered with this
  /// userfaultfd (it refuses to overwrite a page a writer created meanwhile), else by mremap while
  /// the source is still a hole. False when neither was possible.
  private func putBack(_ scratch: UnsafeMutableRawPointer, to source: UnsafeMutableRawPointer, bytes: Int) -> Bool {
    if mover.usesMove || mover.uffd.supportedFeatures.contains(.move),
       (try? mover.uffd.move(from: scratch, to: source, length: bytes, options: .allowSourceHoles)) != nil {
      return true
    }
    guard let map = PageMap(), let entries = map.entries(at: UInt(bitPattern: source), count: bytes / page),
          entries.allSatisfy(\.isHole)
    else { return false }
    // DONTUNMAP keeps the scratch range mapped, so no other mapping can land in it before the
    // scratch memory is released.
    return cuffd_mremap(
      scratch, bytes, bytes, CUFFD_MREMAP_MAYMOVE | CUFFD_MREMAP_FIXED | CUFFD_MREMAP_DONTUNMAP, source)
      != cuffd_map_failed()
  }

  /// A scratch range of at least `bytes`, reused across fallbacks within one logical move.
  private mutating func scratchMemory(bytes: Int) throws(UserfaultfdError) -> AnonymousMemory {
    if let scratch, scratch.length >= bytes { return scratch }
    let memory = try AnonymousMemory(length: max(bytes, policy.maxPagesPerIoctl * page))
    scratch = memory
    return memory
  }
}
