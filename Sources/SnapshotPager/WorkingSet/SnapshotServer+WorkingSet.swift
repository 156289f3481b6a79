import Glibc
import Userfaultfd

extension SnapshotServer {
  /// Starts recording this session's first touches (call before it serves).
  package func startRecording(detector: SettleDetector) {
    state.withLock { serving in
      serving.trace = AccessTrace(detector: detector, expectedPages: serving.map.states.count / 8)
    }
  }

  /// Whether the session is recording still.
  package var isRecording: Bool { state.withLock { $0.trace.map { !$0.stopped } ?? false } }

  /// The recording, once it has settled at `now` (or unconditionally when `final`, as the session
  /// ends); it stops recording then. Nil while it has not settled, or when it is not recording.
  package func takeTrace(at now: ContinuousClock.Instant, identity: SnapshotIdentity, final: Bool) -> WorkingSet? {
    state.withLock { serving in
      guard var trace = serving.trace, !trace.stopped else { return nil }
      let settled = trace.detector.isSettled(at: now)
      guard settled || final else {
        serving.trace = trace
        return nil
      }
      let elapsed = trace.detector.elapsed(at: now)
      let pages = trace.finish()
      serving.trace = trace
      guard !pages.isEmpty else { return nil }
      let (seconds, attoseconds) = elapsed.components
      return WorkingSet(
        snapshot: identity, pages: pages, granule: trace.granule, traces: 1, settled: settled,
        recordingMilliseconds: UInt64(max(0, seconds * 1000 + attoseconds / 1_000_000_000_000_000)))
    }
  }

  /// Replays `workingSet` ahead of demand: ``prefetchOnce()`` copies its pages in recorded order,
  /// at most ``ReplayQueue/stepBytes`` per call, skipping pages already present or released.
  package func startReplay(_ workingSet: WorkingSet) {
    state.withLock { $0.replay = ReplayQueue(workingSet) }
  }

  /// Whether a working set is being replayed.
  package var isReplaying: Bool { state.withLock { $0.replay.map { !$0.isFinished } ?? false } }

  /// Replay's counters: pages copied, pages skipped (present or released), entries outside every
  /// region, and whether it has finished.
  package var replayProgress: (replayed: Int, skipped: Int, uncovered: Int, finished: Bool)? {
    state.withLock { serving in serving.replay.map { ($0.replayed, $0.skipped, $0.uncovered, $0.isFinished) } }
  }

  /// One replay step: the next working-set pages, at most ``ReplayQueue/stepBytes`` in all,
  /// copied in runs of adjacent pages (each run one UFFDIO_COPY from the shared mapping). False
  /// once nothing is left to replay (or no working set was given).
  func replayStep() -> Bool {
    state.withLock { serving in
      guard var queue = serving.replay, !queue.isFinished else { return false }
      // The first fault before any replay copy (or a short wait for one).
      if serving.statistics.faults == 0, let start = serving.start, ContinuousClock.now - start < ReplayQueue.startDelay {
        // The loop comes straight back while replay is due: leave the CPU to the client, whose
        // first fault is what the loop waits for (on a loaded 2-CPU host a spinning loop delays it).
        sched_yield()
        return true
      }
      serving.replay = nil  // the queue is this step's alone (its scratch array is not copied)
      defer { serving.replay = queue }
      // The step's pages: retried ones first, then the queue's next, up to the byte budget.
      queue.scratch.removeAll(keepingCapacity: true)
      var bytes = 0
      // The page map is read in place: a local copy would make each mark below copy its states
      // (copy-on-write), a byte per guest page per step.
      func take(_ page: Int) -> Bool {
        guard serving.map.states[page] == .untouched else {
          queue.skipped += 1
          return true
        }
        let size = serving.map.regions[Self.region(of: page, in: serving.map)].pageSize
        if bytes > 0 && bytes + size > ReplayQueue.stepBytes { return false }
        bytes += size
        queue.scratch.append(page)
        return true
      }
      while let page = queue.retry.last, take(page) { queue.retry.removeLast() }
      while queue.cursor < queue.source.pages.count && bytes < ReplayQueue.stepBytes {
        guard let page = queue.page(ofEntry: queue.cursor, in: serving.map) else {
          queue.uncovered += 1
          queue.cursor += 1
          continue
        }
        if page == queue.lastPage {  // another 4 KiB entry of the same huge page
          queue.cursor += 1
          continue
        }
        guard take(page) else { break }
        queue.lastPage = page
        queue.cursor += 1
      }
      if queue.scratch.isEmpty {
        if queue.cursor >= queue.source.pages.count && queue.retry.isEmpty { queue.finishedAt = .now }
        return !queue.isFinished
      }
      queue.scratch.sort()
      let replayedBefore = queue.replayed
      if snapshot.chunked != nil { prefetchStalled.store(false, ordering: .relaxed) }
      var index = 0
      let clock = ContinuousClock()
      while index < queue.scratch.count {
        let first = queue.scratch[index]
        let region = Self.region(of: first, in: serving.map)
        let pageSize = serving.map.regions[region].pageSize
        let regionEnd = serving.map.regions[region].firstPage + serving.map.regions[region].pageCount
        var count = 1
        while index + count < queue.scratch.count, queue.scratch[index + count] == first + count, first + count < regionEnd {
          count += 1
        }
        let fileOffset = serving.map.fileOffset(ofPage: first, in: region)
        var (source, ownPage) = (UInt(0), false)
        (source, count, ownPage) = copySource(at: fileOffset, pages: count, pageSize: pageSize)
        // A chunked snapshot's pages come from the chunk cache; the run ends where its chunk does.
        var keep: ChunkBuffer?
        if let chunked = snapshot.chunked, !ownPage {
          switch chunked.content(at: fileOffset, maxBytes: count * pageSize, minBytes: pageSize) {
          case .ready(let address, let bytes, let buffer):
            source = address
            count = min(count, bytes / pageSize)
            keep = buffer
          case .pending:
            // Its chunk is on its way (asked for in recorded order when replay began): this and
            // the step's later pages are tried again, the loop polling meanwhile, not spinning.
            queue.retry.append(contentsOf: queue.scratch[index...].reversed())
            if queue.replayed == replayedBefore { prefetchStalled.store(true, ordering: .relaxed) }
            index = queue.scratch.count
            continue
          case .failed:
            // Left to a demand fault, which applies the snapshot's failure policy.
            serving.statistics.prefetchErrors += 1
            index += count
            continue
          }
        }
        let answer = withExtendedLifetime(keep) {
          RangeIoctl.copy(uffd.coreDescriptor, serving.map.address(ofPage: first, in: region), from: source, length: count * pageSize)
        }
        let done = answer.bytesDone / pageSize
        if done > 0 {
          serving.map.mark(first..<(first + done), .served)
          serving.statistics.pagesByReplay += done
          serving.statistics.bytesServed += done * pageSize
          queue.replayed += done
        }
        switch answer.outcome {
        case .done:
          index += count
        case .partial where done > 0:
          index += done
        case .alreadyPresent:
          // Present already (the client wrote it, or a racing fill): never overwritten.
          serving.map.mark((first + done)..<(first + done + 1), .served)
          queue.skipped += 1
          index += done + 1
        case .retryAfterEvents, .partial:
          // A REMOVE is pending: the loop reads it first; these pages are tried again after it.
          queue.retry.append(contentsOf: queue.scratch[(index + done)...].reversed())
          index = queue.scratch.count
        case .processGone:
          queue.finishedAt = .now
          return false
        case .sourceMissing, .busy, .failed:
          // Left to a demand fault, which fails visibly if it must (or an unregistered range).
          serving.statistics.prefetchErrors += 1
          index += max(done, 1)
        }
      }
      serving.noteResidency(clock: clock)
      return true
    }
  }

  /// The region holding global page `page` (regions are sorted and numbered in order).
  static func region(of page: Int, in map: RestorePageMap) -> Int {
    var low = 0, high = map.regions.count
    while low < high {
      let middle = (low + high) / 2
      if map.regions[middle].firstPage + map.regions[middle].pageCount <= page { low = middle + 1 } else { high = middle }
    }
    return min(low, map.regions.count - 1)
  }
}

extension SnapshotServer {
  /// Marks the pages of the region at `regionBase` that `present` says are present as served
  /// (a re-adopted session: its client has them already); how many were marked.
  package func markPresent(regionBase: UInt, pageSize: Int, present: [Bool]) -> Int {
    state.withLock { serving in
      guard let region = serving.map.region(containing: regionBase), serving.map.regions[region].pageSize == pageSize else { return 0 }
      let first = serving.map.page(of: regionBase, in: region)
      var marked = 0
      for (index, isPresent) in present.enumerated() where isPresent && index < serving.map.regions[region].pageCount {
        serving.map.mark((first + index)..<(first + index + 1), .served)
        marked += 1
      }
      return marked
    }
  }
}
