import Userfaultfd

/// Mapping compacted pages into to-space (ART: `MapMovingSpacePages`, `CopyIoctl`): through the
/// package's allocation-free ioctl core, which also decides what each kernel answer means.
/// Async-signal-safe; every outcome is counted in ``CycleCounters``.
extension CompactionContext {
  /// Maps `count` to-space pages from `index` on with the pages at `source` (contiguous):
  /// UFFDIO_MOVE when `move`, else UFFDIO_COPY. Resumes after partial progress. A page already
  /// present cannot have been mapped by the compaction (only a page's claimer maps it): something
  /// touched the heap in the pause; the content is written over it in place (present, so the
  /// write does not fault) and counted. Unless the answer was a MOVE's and the source page is
  /// gone: then the kernel moved the page and still answered EEXIST (see
  /// ``CompactionResult/movesAnsweredExisting``), and the page is mapped. A page MOVE refuses as busy is copied instead. A page that
  /// cannot be mapped at all gets a zero page so no thread waits forever, and counts as a failure
  /// (the cycle then reports it).
  func mapPages(at index: Int, count: Int, from source: UnsafeMutablePointer<UInt64>, move: Bool) {
    let page = layout.pageSize
    let ioctl: CycleCounters.Ioctl = move ? .move : .copy
    var done = 0
    var backOff = BackOff()
    while done < count {
      let destination = toSpaceAddress(index &+ done)
      let from = UInt(bitPattern: source + done &* layout.wordsPerPage)
      let length = (count &- done) &* page
      let answer = move
        ? RangeIoctl.move(uffd, destination, from: from, length: length)
        : RangeIoctl.copy(uffd, destination, from: from, length: length)
      let mapped = answer.bytesDone / page
      counters.called(ioctl, pages: mapped)
      done &+= mapped
      guard let errno = answer.errno else { return }
      if move && answer.outcome == .alreadyPresent
        && !ProcessMemory.isResident(source + done &* layout.wordsPerPage)
      {
        // MOVE answered EEXIST for a page it had moved: the source page, written just before
        // the call and touched by nobody else, is gone, and the destination holds it. Linux
        // 6.18 does this now and then when the source lies in a transparent huge page it
        // splits. Copying "over the intruder" here would copy the emptied source: a page of
        // zeros over the compacted one. Counted apart; the page is mapped.
        counters.add(.movesAnsweredExisting)
        counters.called(ioctl, pages: 1)
        done &+= 1
        continue
      }
      counters.failed(ioctl, errno: errno.rawValue)
      switch answer.outcome {
      case .done:
        return
      case .partial:
        counters.add(.eagainRetries)  // Resume to learn the real state of the rest.
      case .retryAfterEvents:
        // An event is pending (this cycle asks for none): back off, boundedly.
        counters.add(.eagainRetries)
        if backOff.attempts >= Self.maxRetries {
          fail(at: index &+ done)
          done &+= 1
        } else {
          backOff.pause()
        }
      case .alreadyPresent:
        counters.add(.intrudedPages)
        UnsafeMutableRawPointer(bitPattern: destination)?
          .copyMemory(from: source + done &* layout.wordsPerPage, byteCount: page)
        done &+= 1
      case .busy:
        // Not exclusively mapped (a fork, KSM, a pin): the content is still at the source.
        counters.add(.busyFallbacks)
        mapPages(at: index &+ done, count: 1, from: source + done &* layout.wordsPerPage, move: false)
        done &+= 1
      case .sourceMissing, .processGone, .failed:
        fail(at: index &+ done)
        done &+= 1
      }
    }
  }

  /// Retries of a page whose ioctl keeps answering "retry after events" before it counts as failed.
  static var maxRetries: Int { 10_000 }

  /// Maps a zero page at `address` (already present: someone else mapped it).
  func zeroPage(at address: UInt) {
    let answer = RangeIoctl.zeroPage(uffd, address, length: layout.pageSize)
    counters.called(.zeroPage, pages: answer.bytesDone / layout.pageSize)
    if let errno = answer.errno { counters.failed(.zeroPage, errno: errno.rawValue) }
  }

  /// A page that could not be mapped: count it, and release its waiters with zeros.
  private func fail(at index: Int) {
    counters.add(.failures)
    zeroPage(at: toSpaceAddress(index))
  }
}
