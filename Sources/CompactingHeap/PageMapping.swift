#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif
import CUserfaultfd

/// The map ioctls of the compaction, called directly through the C shim: async-signal-safe (no
/// allocation, no Swift errors), every outcome counted in ``CycleCounters``.
extension CompactionContext {
  /// Maps `count` to-space pages from `index` on with the pages at `source` (contiguous):
  /// UFFDIO_MOVE when `move`, else UFFDIO_COPY. Resumes after partial progress. A page already
  /// present (EEXIST) was mapped by someone else; a page MOVE refuses with EBUSY is copied instead.
  /// A page that cannot be mapped at all gets a zero page so no thread waits forever, and counts as
  /// a failure (the cycle then reports it).
  func mapPages(at index: Int, count: Int, from source: UnsafeMutablePointer<UInt64>, move: Bool) {
    let page = layout.pageSize
    var done = 0
    var retries = 0
    while done < count {
      let destination = toSpaceAddress(index &+ done)
      let sourceAddress = UInt(bitPattern: source + done &* layout.wordsPerPage)
      let length = (count &- done) &* page
      let result: Int32
      let progress: Int64
      if move {
        var argument = cuffd_move(dst: UInt64(destination), src: UInt64(sourceAddress), len: UInt64(length), mode: 0, move: 0)
        result = cuffd_ioctl_move(uffd, &argument)
        progress = argument.move
      } else {
        var argument = cuffd_copy(dst: UInt64(destination), src: UInt64(sourceAddress), len: UInt64(length), mode: 0, copy: 0)
        result = cuffd_ioctl_copy(uffd, &argument)
        progress = argument.copy
      }
      let ioctl: CycleCounters.Ioctl = move ? .move : .copy
      if result == 0 {
        counters.called(ioctl, pages: count &- done)
        return
      }
      let error = errno
      // Never read a negative progress field as a count (it is -errno).
      let mapped = progress > 0 ? Int(progress) / page : 0
      counters.called(ioctl, pages: mapped)
      counters.failed(ioctl, errno: error)
      done &+= mapped
      switch error {
      case EAGAIN:
        // Partial progress: resume to learn the real reason. None: an event is pending (this
        // cycle asks for none); back off briefly.
        counters.add(.eagainRetries)
        if mapped == 0 {
          retries &+= 1
          if retries > 10_000 { fail(at: index &+ done); done &+= 1 } else { sched_yield() }
        }
      case EEXIST:
        done &+= 1  // Already present: someone else mapped it.
      case EBUSY where move:
        // Not exclusively mapped (a fork, KSM, a pin): the content is still at the source.
        counters.add(.busyFallbacks)
        mapPages(at: index &+ done, count: 1, from: source + done &* layout.wordsPerPage, move: false)
        done &+= 1
      default:
        fail(at: index &+ done)
        done &+= 1
      }
    }
  }

  /// Maps a zero page at `address` (EEXIST: already present).
  func zeroPage(at address: UInt) {
    var argument = cuffd_zeropage(range: cuffd_range(start: UInt64(address), len: UInt64(layout.pageSize)), mode: 0, zeropage: 0)
    if cuffd_ioctl_zeropage(uffd, &argument) == 0 {
      counters.called(.zeroPage, pages: 1)
    } else {
      counters.called(.zeroPage, pages: 0)
      counters.failed(.zeroPage, errno: errno)
    }
  }

  /// A page that could not be mapped: count it, and release its waiters with zeros.
  private func fail(at index: Int) {
    counters.add(.failures)
    zeroPage(at: toSpaceAddress(index))
  }
}
