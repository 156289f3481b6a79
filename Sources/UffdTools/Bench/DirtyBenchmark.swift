import CUserfaultfdReference
import Foundation
import Glibc
import Histogram
import SystemPackage
import Userfaultfd

/// `uffd bench dirty`: a writer runs over a range while a dirty-page collection or a live
/// snapshot runs, for every method this kernel offers, against the same writer with no tracking.
package struct DirtyBenchmark {
  /// One row: a method, a mode and a writer, medians over the runs.
  package struct Row: Encodable, Sendable {
    /// `wp-async`, `uffd-wp`, `soft-dirty`, `uffd-wp-sigbus`, `fork-cow` or `none`.
    package var method: String
    /// `dirty` (collections while writing) or `live-snapshot`.
    package var mode: String
    /// `saturating` or `paced`.
    package var writer: String
    package var gib: Double
    package var dirtyFraction: Double
    /// Writes over the window from the cut (or tracking start), over the same with no tracking.
    package var writerThroughputRatio: Double
    package var writesPerSecond: Double
    package var stallP50Us: Double
    package var stallP99Us: Double
    package var stallP999Us: Double
    /// Mean time of a write that faults (the first write to a protected page).
    package var faultCostUs: Double
    /// The median faulting write: the mean above includes writes the scheduler preempted (on a
    /// shared 2-vCPU machine, a few long ones move the mean far more than the median).
    package var faultCostP50Us: Double
    /// The C reference's median faulting write (0 where it did not run).
    package var cFaultCostP50Us: Double
    /// The same probe against the package's fault path written in plain C, measured in the same
    /// run right after (live-snapshot uffd-wp rows; 0 elsewhere): the reference the targets name.
    package var cFaultCostUs: Double
    /// Write-protecting the range (`fork()` for fork-cow): the pause writers need for a cut.
    package var cutPauseMs: Double
    /// Dirty: one collection of the range with the working set written once (report and
    /// re-protect). Live snapshot: from the cut until every page is in the file.
    package var collectMs: Double
    /// Resident memory added by the method (fork-cow: the child's private pages at the end).
    package var extraMemoryBytes: Int
    /// Written pages no collection reported (dirty), pages not copied (live snapshot).
    package var missedPages: Int
    /// Pages reported that nobody wrote (dirty), snapshot pages not as they were at the cut.
    package var wrongPages: Int
    package var runs: Int
  }

  /// A writer kind and its pacing.
  package enum WriterKind: String, CaseIterable, Sendable {
    case saturating, paced
  }

  let mib: Int
  let runs: Int
  let dirtyFraction: Double
  let seconds: Double
  let pacedIntervalMicroseconds: Int
  let writers: [WriterKind]
  let directory: String
  /// Live snapshots: how long the background copy waits after the cut (0: it starts at once). A
  /// diagnostic: with the copier held back past the fault probe, no other thread of the process
  /// runs while the probe's faults un-protect pages, so their TLB flushes interrupt no other CPU.
  package var holdCopyMilliseconds = 0

  /// A benchmark over `mib` MiB, `runs` runs per row (medians reported), writers measured for
  /// `seconds` from the cut.
  package init(mib: Int, runs: Int, dirtyFraction: Double, seconds: Double, pacedIntervalMicroseconds: Int,
               writers: [WriterKind], directory: String) {
    self.mib = mib
    self.runs = runs
    self.dirtyFraction = dirtyFraction
    self.seconds = seconds
    self.pacedIntervalMicroseconds = pacedIntervalMicroseconds
    self.writers = writers
    self.directory = directory
  }

  /// The methods this kernel offers for each mode, and those it lacks with the reason.
  package static func methods() -> (dirty: [String], live: [String], missing: [String]) {
    var dirty = DirtyTrackingBackend.available(for: .anonymous).map(\.rawValue)
    dirty.append("none")
    var live: [String] = []
    var missing: [String] = []
    if !dirty.contains(DirtyTrackingBackend.softDirty.rawValue) {
      missing.append("soft-dirty: needs \(DirtyTrackingBackend.softDirty.requirement(for: .anonymous)); this kernel lacks it")
    }
    if DirtyTrackingBackend.writeProtectFaults.isAvailable(
      for: .anonymous, supported: (try? Userfaultfd.probeSupportedFeatures().features) ?? [])
    {
      live += ["uffd-wp", "uffd-wp-sigbus"]
    } else {
      missing.append("uffd-wp / uffd-wp-sigbus: needs \(DirtyTrackingBackend.writeProtectFaults.requirement(for: .anonymous))")
    }
    live += ["fork-cow", "none"]
    return (dirty, live, missing)
  }

  package func run(filter: String?, progress: (String) -> Void) throws -> [Row] {
    let (dirty, live, missing) = Self.methods()
    for line in missing { progress("not measured: \(line)") }
    var jobs: [(mode: String, method: String, writer: WriterKind)] = []
    for writer in writers {
      for method in dirty { jobs.append(("dirty", method, writer)) }
      for method in live { jobs.append(("live-snapshot", method, writer)) }
    }
    // A selected row keeps its untracked baseline (the throughput ratio's denominator).
    let selected = jobs.filter { filter == nil || "\($0.mode)/\($0.method)/\($0.writer.rawValue)".contains(filter ?? "") }
    jobs = jobs.filter { job in
      selected.contains { $0 == job } || (job.method == "none" && selected.contains { $0.mode == job.mode && $0.writer == job.writer })
    }
    var samples: [String: [Sample]] = [:]
    // Runs interleaved (every job once per round): drift on a shared machine spreads over all.
    for round in 0..<runs {
      for (index, job) in jobs.enumerated() {
        progress("run \(round + 1)/\(runs) [\(index + 1)/\(jobs.count)] \(job.mode) \(job.method) \(job.writer.rawValue)")
        var sample = job.mode == "dirty"
          ? try measureDirty(job.method, job.writer) : try measureLive(job.method, job.writer)
        if job.mode == "live-snapshot", job.method.hasPrefix("uffd-wp") {
          (sample.cFaultCost, sample.cFaultP50) = try referenceFaultCost(inThread: job.method == "uffd-wp-sigbus")
        }
        samples["\(job.mode)|\(job.method)|\(job.writer.rawValue)", default: []].append(sample)
      }
    }
    var rows: [Row] = []
    for job in jobs {
      let list = samples["\(job.mode)|\(job.method)|\(job.writer.rawValue)"] ?? []
      let baseline = samples["\(job.mode)|none|\(job.writer.rawValue)"] ?? []
      let rate = median(list.map(\.writesPerSecond))
      let baseRate = median(baseline.map(\.writesPerSecond))
      rows.append(Row(
        method: job.method, mode: job.mode, writer: job.writer.rawValue, gib: Double(mib) / 1024,
        dirtyFraction: dirtyFraction, writerThroughputRatio: baseRate > 0 ? rate / baseRate : 0,
        writesPerSecond: rate, stallP50Us: median(list.map(\.p50)), stallP99Us: median(list.map(\.p99)),
        stallP999Us: median(list.map(\.p999)), faultCostUs: median(list.map(\.faultCost)),
        faultCostP50Us: median(list.map(\.faultP50)), cFaultCostP50Us: median(list.map(\.cFaultP50)),
        cFaultCostUs: median(list.map(\.cFaultCost)),
        cutPauseMs: median(list.map(\.cutMs)), collectMs: median(list.map(\.collectMs)),
        extraMemoryBytes: Int(median(list.map { Double($0.extraBytes) })),
        missedPages: list.map(\.missed).max() ?? 0, wrongPages: list.map(\.wrong).max() ?? 0, runs: list.count))
    }
    return rows
  }

  /// The rows as the tool prints them.
  package static func table(_ rows: [Row], runs: Int) -> String {
    "Dirty tracking and live snapshots under a writer (medians of \(runs) runs; ratio = writes over the"
      + " window vs the same writer untracked)\n"
      + formatTable(
        ["mode", "method", "writer", "GiB", "thru ratio", "stall p50 µs", "p99", "p99.9", "fault µs", "C fault µs",
         "fault p50", "C p50", "cut ms",
         "collect ms", "extra MiB", "missed", "wrong"],
        rows.map {
          [$0.mode, $0.method, $0.writer, String(format: "%.2f", $0.gib), String(format: "%.2f", $0.writerThroughputRatio),
           String(format: "%.2f", $0.stallP50Us), String(format: "%.1f", $0.stallP99Us),
           String(format: "%.1f", $0.stallP999Us), String(format: "%.2f", $0.faultCostUs),
           $0.cFaultCostUs > 0 ? String(format: "%.2f", $0.cFaultCostUs) : "-",
           String(format: "%.2f", $0.faultCostP50Us),
           $0.cFaultCostP50Us > 0 ? String(format: "%.2f", $0.cFaultCostP50Us) : "-",
           String(format: "%.2f", $0.cutPauseMs), String(format: "%.2f", $0.collectMs),
           String(format: "%.1f", Double($0.extraMemoryBytes) / 1_048_576), "\($0.missedPages)", "\($0.wrongPages)"]
        })
  }

  struct Sample {
    var writesPerSecond = 0.0, p50 = 0.0, p99 = 0.0, p999 = 0.0, faultCost = 0.0, cFaultCost = 0.0, cutMs = 0.0
    var collectMs = 0.0, faultP50 = 0.0, cFaultP50 = 0.0
    var extraBytes = 0, missed = 0, wrong = 0
  }

  private var length: Int { mib << 20 }

  /// The range under test: base pages only (huge pages refused before anything is allocated: on a
  /// kernel with THP "always", populating first would map huge pages, which soft-dirty reports
  /// whole and the write-protect backends split on the first write), every page allocated.
  private func populatedBasePages() throws -> AnonymousMemory {
    let memory = try AnonymousMemory(length: length)
    try memory.advise(.noHugePage)
    for offset in stride(from: 0, to: length, by: memory.pageSize) {
      (memory.baseAddress + offset).storeBytes(of: 0, as: UInt8.self)
    }
    return memory
  }

  /// Faulting writes timed per run (the fault cost): pages of the working set from its end down.
  static let probePages = 2000

  private func writer(for memory: AnonymousMemory, _ kind: WriterKind) throws -> DirtyBenchWriter {
    try DirtyBenchWriter(
      memory: memory, dirtyFraction: dirtyFraction,
      pacedIntervalNanos: kind == .paced ? Int64(pacedIntervalMicroseconds) * 1000 : nil, probePages: Self.probePages)
  }

  private func fillStats(_ sample: inout Sample, _ writer: DirtyBenchWriter, elapsed: Double) {
    let h = writer.histogram
    sample.writesPerSecond = Double(writer.writes.load(ordering: .relaxed)) / max(elapsed, 1e-9)
    sample.p50 = Double(h.valueAtPercentile(50)) / 1000
    sample.p99 = Double(h.valueAtPercentile(99)) / 1000
    sample.p999 = Double(h.valueAtPercentile(99.9)) / 1000
  }

  // MARK: Dirty tracking

  private func measureDirty(_ method: String, _ kind: WriterKind) throws -> Sample {
    var sample = Sample()
    let memory = try populatedBasePages()
    let pages = memory.length / memory.pageSize
    let mirror = try AnonymousMemory(length: length, populate: true)
    mirror.baseAddress.copyMemory(from: memory.baseAddress, byteCount: length)
    let rssBefore = residentBytes()
    var tracker: DirtyTracker?
    let began = cuffd_ref_now_ns()
    if let backend = DirtyTrackingBackend(rawValue: method) {
      tracker = try DirtyTracker(memory: memory, backend: backend)
    }
    sample.cutMs = Double(cuffd_ref_now_ns() - began) / 1e6
    defer { tracker?.stop() }
    let writer = try self.writer(for: memory, kind)
    var finished = false
    defer {
      // A writer stuck in a fault is released by stopping the tracker; only then joined.
      if !finished && !writer.finish() {
        tracker?.stop()
        writer.join()
      }
    }
    sample.faultCost = writer.probeFaults() ?? -1
    sample.faultP50 = writer.faultMedianMicroseconds
    let inWorkingSet = Set(writer.workingSet)
    var wrong = 0
    func collectIntoMirror() throws {
      guard let tracker else { return }
      // Soft-dirty is exact only with the writer paused around the collection (its read and
      // clear are two steps): paused here, as its users must; the pause shows in the writer's
      // stall and throughput.
      let pausing = !tracker.backend.isExactUnderConcurrentWrites && !writer.isPaused
        && !writer.exited.load(ordering: .acquiring)
      if pausing && !writer.pause() { throw ToolError("\(method): the writer did not pause within 10 s") }
      let written = try tracker.collect()
      if pausing { writer.resume() }
      for range in written.ranges {
        let offset = range.lowerBound - Address(memory.baseAddress)
        let count = range.upperBound - range.lowerBound
        (mirror.baseAddress + offset).copyMemory(from: memory.baseAddress + offset, byteCount: count)
        for page in stride(from: offset / memory.pageSize, to: (offset + count) / memory.pageSize, by: 1)
        where !inWorkingSet.contains(page) { wrong += 1 }
      }
    }
    try collectIntoMirror()
    writer.startWindow()
    let windowStart = cuffd_ref_now_ns()
    // A collection every 100 ms while the writer runs, as an incremental snapshotter would.
    while Double(cuffd_ref_now_ns() - windowStart) / 1e9 < seconds {
      usleep(100_000)
      try collectIntoMirror()
    }
    _ = writer.pause()
    fillStats(&sample, writer, elapsed: Double(cuffd_ref_now_ns() - windowStart) / 1e9)
    sample.extraBytes = max(0, residentBytes() - rssBefore)
    finished = true
    guard writer.finish() else {
      tracker?.stop()
      writer.join()
      throw ToolError("\(method): the writer was stuck in a write fault for 20 s")
    }
    try collectIntoMirror()
    if tracker != nil {
      // What no collection reported: pages where the mirror differs from memory.
      for page in 0..<pages where memcmp(mirror.baseAddress + page * memory.pageSize,
                                         memory.baseAddress + page * memory.pageSize, memory.pageSize) != 0 {
        sample.missed += 1
      }
      // The collection the target is about: the working set written once, then collected.
      for page in writer.workingSet {
        (memory.baseAddress + page * memory.pageSize).storeBytes(of: 1, as: UInt64.self)
      }
      let collectBegan = cuffd_ref_now_ns()
      let written = try tracker?.collect()
      sample.collectMs = Double(cuffd_ref_now_ns() - collectBegan) / 1e6
      if let written, written.pageCount != writer.workingSet.count {
        sample.missed += max(0, writer.workingSet.count - written.pageCount)
        wrong += max(0, written.pageCount - writer.workingSet.count)
      }
    }
    sample.wrong = wrong
    return sample
  }

  // MARK: Live snapshots

  private func measureLive(_ method: String, _ kind: WriterKind) throws -> Sample {
    var sample = Sample()
    let memory = try populatedBasePages()
    let pages = memory.length / memory.pageSize
    let path = "\(directory)/uffd-bench-dirty-\(getpid()).snapshot"
    let file = try FileDescriptor.open(FilePath(path), .readWrite, options: [.create, .truncate], permissions: [.ownerReadWrite])
    defer {
      try? file.close()
      _ = unlink(path)
    }
    let writer = try self.writer(for: memory, kind)
    var finished = false
    var snapshot: LiveSnapshot?
    defer {
      // A writer stuck in a fault is released by cancelling the snapshot; only then joined.
      if !finished && !writer.finish() {
        snapshot?.cancel()
        writer.join()
      }
    }
    usleep(20_000)
    let rssBefore = residentBytes()
    switch method {
    case "uffd-wp": snapshot = try LiveSnapshot(memory: memory, file: file, resolver: .handlerThread)
    case "uffd-wp-sigbus": snapshot = try LiveSnapshot(memory: memory, file: file, resolver: .faultingThread)
    default: break
    }
    defer { snapshot?.cancel() }
    guard writer.pause() else { throw ToolError("the writer did not pause within 10 s") }
    let expected = writer.lastWritten
    var child: (pid: Int32, done: Int32, release: Int32)?
    defer {
      // Never leave the fork child behind, whatever failed.
      if let child {
        _ = close(child.release)
        _ = close(child.done)
        _ = kill(child.pid, SIGKILL)
        var status: Int32 = 0
        _ = waitpid(child.pid, &status, 0)
      }
    }
    let cutBegan = cuffd_ref_now_ns()
    switch method {
    case "fork-cow":
      var done: Int32 = -1, release: Int32 = -1
      let pid = cuffd_ref_fork_snapshot(memory.baseAddress, length, file.rawValue, &done, &release)
      guard pid > 0 else { throw ToolError("fork: \(Errno(rawValue: -pid))") }
      child = (pid, done, release)
    case "none": break
    default: try snapshot?.cut(holdingBackgroundCopyFor: Double(holdCopyMilliseconds) / 1000)
    }
    let cutEnded = cuffd_ref_now_ns()
    sample.cutMs = Double(cutEnded - cutBegan) / 1e6
    writer.resume()
    sample.faultCost = method == "none" ? 0 : (writer.probeFaults() ?? -1)
    sample.faultP50 = method == "none" ? 0 : writer.faultMedianMicroseconds
    writer.startWindow()
    let windowStart = cuffd_ref_now_ns()
    // Wait for the copy to finish (bounded), measuring extra memory at its end.
    switch method {
    case "fork-cow":
      if let running = child {
        var poller = pollfd(fd: running.done, events: Int16(POLLIN), revents: 0)
        guard poll(&poller, 1, 120_000) == 1 else { throw ToolError("the fork child did not finish in 120 s") }
        sample.collectMs = Double(cuffd_ref_now_ns() - cutEnded) / 1e6
        sample.extraBytes = privateBytes(of: running.pid)
        // Reaped here: the cleanup must not signal a pid that may be reused.
        child = nil
        _ = close(running.release)
        _ = close(running.done)
        var status: Int32 = 0
        _ = waitpid(running.pid, &status, 0)
        guard status == 0 else { throw ToolError("fork-cow: the child could not write the snapshot (status \(status))") }
      }
    case "none": break
    default:
      if let snapshot {
        while !snapshot.isCopied && Double(cuffd_ref_now_ns() - cutEnded) < 120e9 { usleep(200) }
        sample.collectMs = Double(cuffd_ref_now_ns() - cutEnded) / 1e6
        sample.extraBytes = max(0, residentBytes() - rssBefore)
      }
    }
    while Double(cuffd_ref_now_ns() - windowStart) / 1e9 < seconds { usleep(10_000) }
    _ = writer.pause()
    fillStats(&sample, writer, elapsed: Double(cuffd_ref_now_ns() - windowStart) / 1e9)
    finished = true
    guard writer.finish() else {
      snapshot?.cancel()
      writer.join()
      throw ToolError("\(method): the writer was stuck in a write fault for 20 s")
    }
    if let snapshot {
      let report = try snapshot.finish(timeoutSeconds: 120)
      sample.missed = pages - report.copiedBeforeWrites - report.copiedInBackground
    }
    if method != "none" { sample.wrong = try wrongPages(file, expected: expected, pageSize: memory.pageSize) }
    return sample
  }

  /// The C reference's mean and median faulting write (µs) on a fresh populated range of the same
  /// size, with the probe pages the Swift writer uses.
  private func referenceFaultCost(inThread: Bool) throws -> (mean: Double, median: Double) {
    let memory = try populatedBasePages()
    let path = "\(directory)/uffd-bench-dirty-reference-\(getpid()).snapshot"
    let file = try FileDescriptor.open(FilePath(path), .readWrite, options: [.create, .truncate], permissions: [.ownerReadWrite])
    defer {
      try? file.close()
      _ = unlink(path)
    }
    let pages = memory.length / memory.pageSize
    let count = max(1, min(pages, Int((Double(pages) * dirtyFraction).rounded())))
    let workingSet = (0..<count).map { $0 * pages / count }
    let probe = workingSet.suffix(min(Self.probePages, count)).reversed().map { $0 }
    var times = [Int64](repeating: 0, count: probe.count)
    let nanos = probe.withUnsafeBufferPointer { buffer in
      times.withUnsafeMutableBufferPointer { out in
        cuffd_ref_wp_fault_cost(memory.baseAddress.assumingMemoryBound(to: CChar.self), length, file.rawValue,
                                inThread ? 1 : 0, buffer.baseAddress, buffer.count, out.baseAddress)
      }
    }
    guard nanos >= 0 else { throw ToolError("the C fault-cost reference failed: \(Errno(rawValue: Int32(-nanos)))") }
    return (nanos / 1000, median(times.map { Double($0) / 1000 }))
  }

  /// Snapshot pages whose first and last words are not the writer's record at the cut.
  private func wrongPages(_ file: FileDescriptor, expected: [UInt64], pageSize: Int) throws -> Int {
    let chunkPages = 256
    let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: chunkPages * pageSize, alignment: 8)
    defer { buffer.deallocate() }
    var wrong = 0
    var page = 0
    while page < expected.count {
      let count = min(chunkPages, expected.count - page)
      let want = count * pageSize
      let read = try file.read(fromAbsoluteOffset: Int64(page * pageSize), into: UnsafeMutableRawBufferPointer(rebasing: buffer[0..<want]))
      for index in 0..<count {
        guard (index + 1) * pageSize <= read else {
          wrong += 1
          continue
        }
        let first = buffer.load(fromByteOffset: index * pageSize, as: UInt64.self)
        let last = buffer.load(fromByteOffset: (index + 1) * pageSize - 8, as: UInt64.self)
        let value = expected[page + index]
        if first != value || last != value { wrong += 1 }
      }
      page += count
    }
    return wrong
  }
}

/// This process's resident memory (VmRSS), in bytes.
func residentBytes() -> Int {
  statusField("/proc/self/status", "VmRSS:") * 1024
}

/// A process's private memory (smaps_rollup Private_Clean + Private_Dirty), in bytes.
func privateBytes(of pid: Int32) -> Int {
  (statusField("/proc/\(pid)/smaps_rollup", "Private_Clean:") + statusField("/proc/\(pid)/smaps_rollup", "Private_Dirty:")) * 1024
}

/// The number after `key` in a /proc text file (kB fields), 0 when absent.
private func statusField(_ path: String, _ key: String) -> Int {
  guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { return 0 }
  for line in text.split(separator: "\n") where line.hasPrefix(key) {
    return Int(line.dropFirst(key.count).split(separator: " ").first ?? "") ?? 0
  }
  return 0
}
