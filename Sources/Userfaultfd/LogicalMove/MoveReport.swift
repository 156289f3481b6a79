import SystemPackage

/// What happened to one page of a logical move.
public enum PageOutcome: String, Sendable, Hashable, CaseIterable {
  /// Moved zero-copy by UFFDIO_MOVE.
  case moved
  /// Copied by the atomic fallback and removed from the source.
  case copied
  /// A source hole, skipped: the destination page stays missing.
  case hole
  /// Refused with EBUSY and not copied (strict policy): still in the source.
  case busy
  /// The destination was already populated: the page is still in the source.
  case alreadyPresent
  /// Not reached because the move stopped earlier (or taken and put back): still in the source.
  case notAttempted
  /// Taken out of the source by the copy fallback, then neither copied nor put back (the source
  /// page was repopulated meanwhile, or no handle could put it back safely): its bytes are in
  /// ``MoveReport/returnedPages``, owned by the caller.
  case returnedToCaller
}

/// Pages a logical move took out of the source and could place neither in the destination nor
/// back in the source: their bytes, handed to the caller rather than dropped.
public struct ReturnedPages: Sendable, Equatable {
  /// The memory holding the bytes (the copy fallback's scratch range, now the caller's).
  public let memory: AnonymousMemory
  /// Each returned page: its index from the start of the move, and where its bytes are.
  public let pages: [(page: Int, offset: Int)]

  /// The bytes of the move's page `page`, or nil when it was not returned.
  public func contents(ofPage page: Int) -> UnsafeRawBufferPointer? {
    guard let entry = pages.first(where: { $0.page == page }) else { return nil }
    return UnsafeRawBufferPointer(start: memory.baseAddress + entry.offset, count: PageSize.base)
  }

  public static func == (lhs: ReturnedPages, rhs: ReturnedPages) -> Bool {
    lhs.memory === rhs.memory && lhs.pages.elementsEqual(rhs.pages) { $0 == $1 }
  }
}

/// A run of consecutive pages with the same outcome.
public struct PageRun: Sendable, Hashable {
  /// The outcome.
  public let outcome: PageOutcome
  /// Index of the first page, counted from the start of the move.
  public let firstPage: Int
  /// Number of pages.
  public let count: Int
}

/// A run of source pages the kernel refused with EBUSY, and why.
public struct BusyRun: Sendable, Hashable {
  /// Byte offset of the first page from the start of the move.
  public let offset: Int
  /// Number of pages.
  public let pages: Int
  /// Why they were busy.
  public let reason: BusyReason
}

/// Where and why a logical move stopped before the end.
public struct MoveStop: Sendable, Equatable {
  /// Byte offset of the page it stopped at.
  public let offset: Int
  /// The outcome of that page: ``PageOutcome/busy``, ``PageOutcome/hole`` (strict policy),
  /// ``PageOutcome/alreadyPresent``, or ``PageOutcome/notAttempted`` for other refusals.
  public let outcome: PageOutcome
  /// The kernel's refusal.
  public let failure: OperationFailure?
  /// Why it stopped: match on this, never on ``message``.
  public let cause: StopCause
  /// Why the page was busy, for EBUSY.
  public var busyReason: BusyReason? {
    if case .busy(let reason) = cause { reason } else { nil }
  }
  /// A plain-words account, with what to do.
  public let message: String
}

/// Why a logical move stopped (``MoveStop/cause``). Every page not accounted for before the stop
/// is in the source (or, for a copy fallback that could not put a page back, in
/// ``MoveReport/returnedPages``).
public enum StopCause: Sendable, Equatable {
  /// The userfaultfd handle was closed.
  case handleClosed
  /// The source page at this address is not mapped.
  case sourceUnmapped(Address)
  /// The destination page at this address is not mapped.
  case destinationUnmapped(Address)
  /// The source at this address is shared or file-backed memory, which neither MOVE nor the copy
  /// fallback can take.
  case sourceNotPrivateAnonymous(Address)
  /// The source's and destination's protections are not what UFFDIO_MOVE takes (equal, and
  /// writable); ``MoveStop/message`` names both.
  case protectionsDiffer
  /// The source at this address cannot be read (its protection is given): the copy fallback copies
  /// what it reads, so it refuses before taking anything. Make the source readable, or use MOVE
  /// between mappings of equal protection.
  case sourceNotReadable(Address, AnonymousMemory.Protection)
  /// The source page at this address is a hole and the policy does not skip holes.
  case sourceHole(Address)
  /// The source page is not exclusively mapped and the policy does not copy busy pages.
  case busy(BusyReason)
  /// The destination page at this address was populated meanwhile.
  case destinationPopulated(Address)
  /// The kernel kept answering "retry after events" (EAGAIN); read the pending events.
  case retriesExhausted
  /// The copy fallback could not map its scratch memory; nothing was taken.
  case noScratchMemory
  /// The copy fallback could not take the source pages (mremap failed with this errno).
  case takeFailed(Errno)
  /// The kernel refused the operation; ``MoveStop/failure`` says how.
  case refused
}

/// The account of a logical move: how each byte got to the destination.
public struct MoveReport: Sendable, Equatable, CustomStringConvertible {
  /// Bytes requested.
  public let length: Int
  /// Bytes moved zero-copy.
  public internal(set) var bytesMoved = 0
  /// Bytes copied by the fallback (EBUSY pages, or every page when MOVE is unavailable).
  public internal(set) var bytesCopied = 0
  /// Bytes of source holes skipped.
  public internal(set) var holeBytes = 0
  /// 2 MiB steps in which a whole transparent huge page moved as one PMD (counted when the source
  /// could be seen to be a THP: /proc/kpageflags needs CAP_SYS_ADMIN).
  public internal(set) var hugePageMoves = 0
  /// Pages counted in ``bytesMoved`` that the kernel answered EEXIST for: the source page was
  /// gone and the destination, empty before, held it (Linux 6.18 does this now and then when the
  /// source lies in a transparent huge page that other threads are splitting). 0 almost always.
  public internal(set) var movesAnsweredExisting = 0
  /// UFFDIO_MOVE ioctls issued, including refused ones.
  public internal(set) var moveIoctls = 0
  /// UFFDIO_COPY ioctls issued by the fallback.
  public internal(set) var copyIoctls = 0
  /// Busy pages seen, and why (one entry per contiguous run).
  public internal(set) var busy: [BusyRun] = []
  /// Per-page outcomes, run-length encoded, when the policy asked for them.
  public internal(set) var runs: [PageRun] = []
  /// Set when the move stopped early.
  public internal(set) var stop: MoveStop?
  /// Pages taken from the source that could be put neither in the destination nor back (see
  /// ``PageOutcome/returnedToCaller``); nil when there are none, which is the usual case.
  public internal(set) var returnedPages: ReturnedPages?

  init(length: Int) {
    self.length = length
    // Room for the usual handful of runs up front: a move stopping under memory pressure must
    // still be able to say what it did.
    busy.reserveCapacity(8)
    runs.reserveCapacity(16)
  }

  /// All ioctls issued.
  public var ioctls: Int { moveIoctls + copyIoctls }
  /// Whether every page was moved, copied or skipped as a hole.
  public var isComplete: Bool { stop == nil }
  /// Bytes handled (moved, copied or skipped).
  public var bytesDone: Int { bytesMoved + bytesCopied + holeBytes }

  /// Appends `pages` pages of `outcome` to the run-length list.
  mutating func record(_ outcome: PageOutcome, firstPage: Int, pages: Int, keep: Bool) {
    guard keep, pages > 0 else { return }
    if let last = runs.last, last.outcome == outcome, last.firstPage + last.count == firstPage {
      runs[runs.count - 1] = PageRun(outcome: outcome, firstPage: last.firstPage, count: last.count + pages)
    } else {
      runs.append(PageRun(outcome: outcome, firstPage: firstPage, count: pages))
    }
  }

  public var description: String {
    var text = "moved \(bytesMoved) bytes zero-copy, copied \(bytesCopied), skipped \(holeBytes) in holes"
      + " of \(length) (\(moveIoctls) MOVE + \(copyIoctls) COPY ioctls, \(hugePageMoves) huge-page moves)"
    if let stop { text += "; stopped at offset \(stop.offset): \(stop.message)" }
    if let returnedPages {
      text += "; \(returnedPages.pages.count) taken page(s) returned to the caller in returnedPages"
    }
    return text
  }
}
