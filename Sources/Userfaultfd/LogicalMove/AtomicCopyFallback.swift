import Glibc
import CUserfaultfd
import SystemPackage

extension PageMover.Run {
  /// Copies `pages` pages from `offset` to the destination and leaves the source empty, atomically
  /// with respect to writers (see ``PageMover``): holes are skipped or stop the move per policy,
  /// data runs are taken with mremap(DONTUNMAP) and copied with UFFDIO_COPY.
  ///
  /// Before anything is taken it checks what can fail: the handle is open, the source is mapped
  /// private anonymous memory (a shared mapping keeps its data after the take, so the page would be
  /// in two places) that can be read, the destination is mapped, and the scratch range exists. Runs are cut at
  /// mapping boundaries, since one mremap cannot span two.
  mutating func fallback(pages: Int) throws(UserfaultfdError) {
    let end = offset + pages * page
    while offset < end {
      let from = source + UInt(offset)
      let to = destination + UInt(offset)
      if mover.uffd.isClosed {
        try stop(.notAttempted, failure: nil, cause: .handleClosed,
                 "the userfaultfd handle was closed; every page from here is still in the source")
      }
      guard let origin = Mapping.containing(from) else {
        try stop(.notAttempted, failure: nil, cause: .sourceUnmapped(Address(rawValue: from)),
                 "source page at \(hex(from)) is not mapped: there is nothing to move there")
      }
      guard origin.isPrivateAnonymous else {
        try stop(.notAttempted, failure: nil, cause: .sourceNotPrivateAnonymous(Address(rawValue: from)),
                 "the source at \(hex(from)) is \(origin.isShared ? "shared" : "file-backed") memory: the"
                   + " copy fallback, like UFFDIO_MOVE, needs private anonymous memory (taking a shared"
                   + " page would leave its data in both places); nothing was taken")
      }
      guard origin.isReadable else {
        // The taken pages would keep this protection in scratch, where UFFDIO_COPY could not read
        // them (EFAULT) nor put them back: they would end unreadable in the caller's hands.
        try stop(.notAttempted, failure: nil, cause: .sourceNotReadable(Address(rawValue: from), origin.protection),
                 "the source at \(hex(from)) is not readable (\(origin.protection)): the copy fallback"
                   + " copies what it reads; make it readable (mprotect) first; nothing was taken")
      }
      guard let target = Mapping.containing(to) else {
        try stop(.notAttempted, failure: nil, cause: .destinationUnmapped(Address(rawValue: to)),
                 "destination page at \(hex(to)) is not mapped: map and register the destination first;"
                   + " nothing was taken")
      }
      let step = min(end - offset, Int(origin.end - from), Int(target.end - to))
      let count = step / page
      guard let map = PageMap(), let entries = map.entries(at: from, count: count) else {
        try copyTaken(pages: count)
        continue
      }
      var index = 0
      while index < count {
        let isHole = entries[index].isHole
        let runEnd = entries[index...].firstIndex { $0.isHole != isHole } ?? count
        if isHole {
          guard policy.holes == .skip else {
            try stop(.hole, failure: nil, cause: .sourceHole(Address(rawValue: source + UInt(offset))),
                     "source page at \(hex(source + UInt(offset))) is a hole (never touched, or already"
                       + " moved); pass a policy that skips holes to count them")
          }
          advance(.hole, bytes: (runEnd - index) * page)
        } else {
          try copyTaken(pages: runEnd - index)
        }
        index = runEnd
      }
    }
  }

  /// Takes `pages` pages at `offset` out of the source into scratch, copies the ones that were
  /// really there to the destination, and drops the scratch pages. On a refusal the pages not
  /// copied go back to the source page by page; a page that cannot go back safely is returned to
  /// the caller in the report. No taken byte is dropped.
  private mutating func copyTaken(pages: Int) throws(UserfaultfdError) {
    let bytes = pages * page
    let scratch: AnonymousMemory
    do {
      scratch = try scratchMemory(bytes: bytes)
    } catch {
      try stop(.notAttempted, failure: nil, cause: .noScratchMemory,
               "copy fallback could not map \(bytes) bytes of scratch memory (\(error)); nothing was"
                 + " taken: every page from here is still in the source")
    }
    guard let src = UnsafeMutableRawPointer(bitPattern: source + UInt(offset)),
          let dst = UnsafeMutableRawPointer(bitPattern: destination + UInt(offset))
    else { throw .invalidArgument(.move, .nullAddress(role: .range)) }
    // 1. The atomic step: the source's page-table entries move to scratch; the source is a hole.
    let taken = cuffd_mremap(
      src, bytes, bytes, CUFFD_MREMAP_MAYMOVE | CUFFD_MREMAP_FIXED | CUFFD_MREMAP_DONTUNMAP,
      scratch.baseAddress)
    if taken == cuffd_map_failed() {
      let error = Errno.current
      try stop(.notAttempted, failure: nil, cause: .takeFailed(error),
               "copy fallback could not take the source pages: mremap(MREMAP_DONTUNMAP) failed with"
                 + " \(ErrnoName.of(error)) (\(error)); the source is untouched")
    }
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
        try copyRun(scratch, at: index * page, to: dst + index * page,
                    source: src + index * page, bytes: (end - index) * page, runPages: pages - index)
      }
      index = end
    }
    try? scratch.advise(.dontNeed, offset: 0, length: bytes)
  }

  /// Copies one run of taken pages (at `scratchOffset` in scratch) into the destination; on a
  /// refusal puts the rest of the taken pages (`runPages` from here) back and stops.
  private mutating func copyRun(
    _ scratch: AnonymousMemory, at scratchOffset: Int, to dst: UnsafeMutableRawPointer,
    source src: UnsafeMutableRawPointer, bytes: Int, runPages: Int
  ) throws(UserfaultfdError) {
    var done = 0
    var attempts = 0
    let options: Userfaultfd.CopyOptions = policy.wake ? [] : .dontWake
    let from = scratch.baseAddress + scratchOffset
    while done < bytes {
      let answer = mover.uffd.copyCore(
        UInt(bitPattern: dst + done), from: UInt(bitPattern: from + done), length: bytes - done,
        mode: options.rawValue)
      report.copyIoctls += 1
      done += answer.errno == nil ? bytes - done : answer.bytesDone
      if answer.errno == nil || answer.bytesDone > 0 { continue }
      attempts += 1
      if answer.outcome == .retryAfterEvents && attempts <= PageMover.maxRetries {
        sched_yield()
        continue
      }
      advance(.copied, bytes: done)
      // Everything taken and not copied, from here to the end of the taken range, goes back.
      let remaining = runPages * page - done
      let placed = putBack(scratch, at: scratchOffset + done, to: src + done, bytes: remaining)
      let failure = OperationFailure(
        operation: .copy, errno: answer.errno ?? .ioError, destination: Address(dst + done),
        source: Address(from + done), length: bytes - done)
      let first: PageOutcome = answer.outcome == .alreadyPresent ? .alreadyPresent : .notAttempted
      var outcomes = placed.outcomes
      if !outcomes.isEmpty, outcomes[0].0 == .notAttempted {
        // The page the copy stopped at is back in the source: say why it stopped there.
        outcomes[0].1 -= 1
        outcomes.insert((first, 1), at: 0)
      }
      if !placed.returned.isEmpty {
        report.returnedPages = ReturnedPages(
          memory: scratch,
          pages: placed.returned.map { (page: offset / page + ($0 - scratchOffset - done) / page, offset: $0) })
        self.scratch = nil  // now the caller's: never reused or released by this move
      }
      let why = answer.errno == .badFileDescriptor
        ? "the userfaultfd handle was closed during the copy fallback" : "copy fallback: \(failure.explanation)"
      let whereabouts = placed.returned.isEmpty
        ? "every taken page not copied is back in the source"
        : "\(placed.returned.count) taken page(s) could not go back (the source was repopulated, or is"
          + " registered with another userfaultfd) and are returned to you in report.returnedPages"
      let cause: StopCause = answer.errno == .badFileDescriptor
        ? .handleClosed : answer.outcome == .alreadyPresent ? .destinationPopulated(Address(dst + done)) : .refused
      try stop(outcomes: outcomes.filter { $0.1 > 0 }, failure: failure, cause: cause, "\(why); \(whereabouts)")
    }
    advance(.copied, bytes: bytes)
  }

  /// Returns taken pages to the source, page by page, never overwriting a page a writer created
  /// there meanwhile: by UFFDIO_MOVE or UFFDIO_COPY through a userfaultfd the source is registered
  /// with (this mover's, or a private one registered just for this), which refuse a populated
  /// page with EEXIST. A page that cannot go back is left in scratch and listed in `returned`
  /// (scratch offsets). `outcomes` are runs from the first page: back in the source
  /// (`notAttempted`) or `returnedToCaller`.
  private func putBack(
    _ scratch: AnonymousMemory, at scratchOffset: Int, to source: UnsafeMutableRawPointer, bytes: Int
  ) -> (outcomes: [(PageOutcome, Int)], returned: [Int]) {
    var outcomes: [(PageOutcome, Int)] = []
    var returned: [Int] = []
    func note(_ outcome: PageOutcome, _ scratchAt: Int) {
      if outcome == .returnedToCaller { returned.append(scratchAt) }
      if let last = outcomes.last, last.0 == outcome {
        outcomes[outcomes.count - 1].1 += 1
      } else {
        outcomes.append((outcome, 1))
      }
    }
    let pages = bytes / page
    // A scratch page that is a hole was never taken (the source was a hole there): nothing to do.
    var taken: [PageMap.Entry]?
    if let map = PageMap() {
      taken = map.entries(at: UInt(bitPattern: scratch.baseAddress + scratchOffset), count: pages)
    }
    var placer = PutBackHandle(mover: mover, source: source, length: bytes)
    for index in 0..<pages {
      let from = scratch.baseAddress + scratchOffset + index * page
      let to = source + index * page
      if let taken, taken[index].isHole {
        note(.notAttempted, scratchOffset + index * page)
        continue
      }
      switch placer.place(from, to) {
      case .placed: note(.notAttempted, scratchOffset + index * page)
      case .occupied, .impossible: note(.returnedToCaller, scratchOffset + index * page)
      }
    }
    placer.finish()
    return (outcomes, returned)
  }

  /// A scratch range of at least `bytes`, reused across fallbacks within one logical move.
  private mutating func scratchMemory(bytes: Int) throws(UserfaultfdError) -> AnonymousMemory {
    if let scratch, scratch.length >= bytes { return scratch }
    let memory = try AnonymousMemory(length: max(bytes, min(policy.maxPagesPerIoctl, 512) * page))
    scratch = memory
    return memory
  }
}

/// Puts taken pages back into the source without ever overwriting a page created there since the
/// take: through a userfaultfd the source is registered with, whose COPY and MOVE refuse a
/// populated destination (EEXIST). First the mover's own handle; when the source is not
/// registered with it (or it was closed), a private handle registered for the source range just
/// for this, and unregistered afterwards. When the source is registered with some other handle
/// neither works, and the page is handed back to the caller instead.
struct PutBackHandle {
  enum Placement { case placed, occupied, impossible }

  let mover: PageMover
  let source: UnsafeMutableRawPointer
  let length: Int
  private var useOwn = true
  private var privateHandle: Userfaultfd?
  private var privateTried = false

  init(mover: PageMover, source: UnsafeMutableRawPointer, length: Int) {
    self.mover = mover
    self.source = source
    self.length = length
  }

  mutating func place(_ from: UnsafeMutableRawPointer, _ to: UnsafeMutableRawPointer) -> Placement {
    if useOwn {
      switch Self.place(from, to, with: mover.uffd) {
      case .placed: return .placed
      case .occupied: return .occupied
      case .impossible: useOwn = false
      }
    }
    if !privateTried {
      privateTried = true
      if let handle = try? Userfaultfd(), (try? handle.register(source, length: length, mode: .missing)) != nil {
        privateHandle = handle
      }
    }
    guard let privateHandle else { return .impossible }
    return Self.place(from, to, with: privateHandle)
  }

  mutating func finish() {
    if let privateHandle { try? privateHandle.unregister(source, length: length) }
    privateHandle = nil
  }

  private static func place(
    _ from: UnsafeMutableRawPointer, _ to: UnsafeMutableRawPointer, with uffd: Userfaultfd
  ) -> Placement {
    let page = PageSize.base
    let (source, target) = (UInt(bitPattern: from), UInt(bitPattern: to))
    let canMove = uffd.supportedFeatures.contains(.move)
    var answer = KernelAnswer(.copy, failed: .invalidArgument, length: page)
    for _ in 0..<PageMover.maxRetries {
      if canMove { answer = uffd.moveCore(target, from: source, length: page, mode: 0) }
      if !canMove || answer.outcome == .busy {
        // No MOVE here, or the taken page is shared with a forked child: a copy goes back instead.
        answer = uffd.copyCore(target, from: source, length: page, mode: 0)
      }
      guard answer.outcome == .retryAfterEvents else { break }
      sched_yield()
    }
    switch answer.outcome {
    case .done: return .placed
    case .alreadyPresent: return .occupied
    default: return .impossible
    }
  }
}
