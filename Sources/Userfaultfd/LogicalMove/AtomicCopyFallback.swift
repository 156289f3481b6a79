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

  /// Takes `pages` pages at `offset` out of the source into scratch, copies them to the
  /// destination, and drops the scratch pages.
  private mutating func copyTaken(pages: Int) throws(UserfaultfdError) {
    let bytes = pages * page
    let scratch = try scratchMemory(bytes: bytes)
    guard let src = UnsafeMutableRawPointer(bitPattern: source + UInt(offset)),
          let dst = UnsafeMutableRawPointer(bitPattern: destination + UInt(offset))
    else { throw .invalidArgument(.move, "null address") }
    // 1. The atomic step: the source's page-table entries move to scratch; the source is a hole.
    let taken = cuffd_mremap(
      src, bytes, bytes, CUFFD_MREMAP_MAYMOVE | CUFFD_MREMAP_FIXED | CUFFD_MREMAP_DONTUNMAP, scratch.baseAddress)
    if taken == cuffd_map_failed() {
      let error = Errno.current
      try stop(.busy, failure: nil, reason: nil,
               "copy fallback could not take the source pages: mremap(MREMAP_DONTUNMAP) failed with"
                 + " \(ErrnoName.of(error)) (\(error)); the source is untouched")
    }
    defer { try? scratch.advise(.dontNeed, offset: 0, length: bytes) }
    // 2. Copy into the destination; the scratch pages are private to this thread.
    var done = 0
    var attempts = 0
    let options: Userfaultfd.CopyOptions = policy.wake ? [] : .dontWake
    while done < bytes {
      do {
        try mover.uffd.copy(from: scratch.baseAddress + done, to: dst + done, length: bytes - done,
                            options: options)
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
        putBack(scratch.baseAddress + done, to: src + done, bytes: bytes - done)
        advance(.copied, bytes: done)
        try stop(failure.errno == .fileExists ? .alreadyPresent : .notAttempted, failure: failure,
                 reason: nil, "copy fallback: \(failure.explanation); the uncopied pages are back in the source")
      }
    }
    advance(.copied, bytes: bytes)
  }

  /// Returns taken pages to the source: by UFFDIO_MOVE when the source is registered with this
  /// userfaultfd (fails rather than overwrite a page a writer created meanwhile), else by mremap.
  private func putBack(_ scratch: UnsafeMutableRawPointer, to source: UnsafeMutableRawPointer, bytes: Int) {
    if mover.usesMove,
       (try? mover.uffd.move(from: scratch, to: source, length: bytes, options: .allowSourceHoles)) != nil {
      return
    }
    // DONTUNMAP keeps the scratch range mapped, so no other mapping can land in it before the
    // scratch memory is released. The source range becomes an unregistered copy of its mapping.
    _ = cuffd_mremap(
      scratch, bytes, bytes, CUFFD_MREMAP_MAYMOVE | CUFFD_MREMAP_FIXED | CUFFD_MREMAP_DONTUNMAP, source)
  }

  /// A scratch range of at least `bytes`, reused across fallbacks within one logical move.
  private mutating func scratchMemory(bytes: Int) throws(UserfaultfdError) -> AnonymousMemory {
    if let scratch, scratch.length >= bytes { return scratch }
    let memory = try AnonymousMemory(length: max(bytes, policy.maxPagesPerIoctl * page))
    scratch = memory
    return memory
  }
}
