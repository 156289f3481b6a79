import CUserfaultfdReference
import Glibc
import Histogram
import Synchronization
import Userfaultfd

/// The writer `uffd bench dirty` runs beside each method: one thread storing an increasing
/// sequence number into the first and last word of random pages of a working set (the dirty
/// fraction of the range, spread evenly over it), remembering the last number each page got.
/// Saturating (back to back) or paced (one write every `interval` ns; a write's stall is its
/// completion minus its scheduled time, so time lost to a fault delays the writes behind it too).
final class DirtyBenchWriter: @unchecked Sendable {
  // @unchecked: `lastWritten`, `histogram` and `faultNanos` are written by the writer thread only
  // while unpaused, and read by the bench only while it is paused or after it finished (the
  // atomics order the accesses).
  let pauseRequested = Atomic<Bool>(false)
  let paused = Atomic<Bool>(false)
  let stop = Atomic<Bool>(false)
  /// Set by the bench: the writer first writes `probePages` pages of the working set once each,
  /// from its end down (the background copier starts at the range's beginning), timing each: the
  /// cost of a faulting write.
  let probeRequested = Atomic<Bool>(false)
  /// Writes done since the counter was last reset.
  let writes = Atomic<Int>(0)
  /// Whether per-write times go into the histogram.
  let recording = Atomic<Bool>(false)

  private(set) var lastWritten: [UInt64]
  private(set) var histogram = Histogram<UInt64>(highestTrackableValue: 60_000_000_000, numberOfSignificantValueDigits: .three)
  private(set) var faultNanos: [Int64] = []
  let workingSet: [Int]
  let probePages: Int
  private let base: UInt
  private let pageSize: Int
  private let interval: Int64
  private var thread: DedicatedThread?

  init(memory: AnonymousMemory, dirtyFraction: Double, pacedIntervalNanos: Int64?, probePages: Int) throws {
    base = UInt(bitPattern: memory.baseAddress)
    pageSize = memory.pageSize
    let pages = memory.length / memory.pageSize
    let count = max(1, min(pages, Int((Double(pages) * dirtyFraction).rounded())))
    workingSet = (0..<count).map { $0 * pages / count }
    self.probePages = min(probePages, count)
    lastWritten = [UInt64](repeating: 0, count: pages)
    interval = pacedIntervalNanos ?? 0
    thread = try DedicatedThread { [unowned self] in self.run() }
  }

  /// Set when the writer thread's loop has returned.
  let exited = Atomic<Bool>(false)

  private func run() {
    defer { exited.store(true, ordering: .releasing) }
    var state: UInt64 = 0x2545_F491_4F6C_DD1D
    var sequence: UInt64 = 0
    var next = cuffd_ref_now_ns()
    while !stop.load(ordering: .relaxed) {
      if pauseRequested.load(ordering: .acquiring) {
        paused.store(true, ordering: .releasing)
        while pauseRequested.load(ordering: .acquiring) && !stop.load(ordering: .relaxed) { sched_yield() }
        paused.store(false, ordering: .releasing)
        next = cuffd_ref_now_ns()
        continue
      }
      if probeRequested.load(ordering: .acquiring) {
        var times: [Int64] = []
        times.reserveCapacity(probePages)
        for slot in stride(from: workingSet.count - 1, through: workingSet.count - probePages, by: -1) {
          sequence += 1
          let began = cuffd_ref_now_ns()
          write(page: workingSet[slot], sequence)
          times.append(cuffd_ref_now_ns() - began)
        }
        faultNanos = times
        probeRequested.store(false, ordering: .releasing)
        next = cuffd_ref_now_ns()
        continue
      }
      state ^= state << 13; state ^= state >> 7; state ^= state << 17
      let page = workingSet[Int(state % UInt64(workingSet.count))]
      sequence += 1
      let scheduled: Int64
      if interval > 0 {
        next += interval
        while cuffd_ref_now_ns() < next {}
        scheduled = next
      } else {
        scheduled = cuffd_ref_now_ns()
      }
      write(page: page, sequence)
      if recording.load(ordering: .relaxed) {
        histogram.record(UInt64(max(0, cuffd_ref_now_ns() - scheduled)))
      }
      writes.wrappingAdd(1, ordering: .relaxed)
    }
  }

  @inline(__always)
  private func write(page: Int, _ sequence: UInt64) {
    let address = base + UInt(page * pageSize)
    UnsafeMutableRawPointer(bitPattern: address)?.storeBytes(of: sequence, as: UInt64.self)
    UnsafeMutableRawPointer(bitPattern: address + UInt(pageSize) - 8)?.storeBytes(of: sequence, as: UInt64.self)
    lastWritten[page] = sequence
  }

  /// Pauses the writer; false when it did not within `seconds`.
  func pause(seconds: Double = 10) -> Bool {
    pauseRequested.store(true, ordering: .releasing)
    let deadline = cuffd_ref_now_ns() + Int64(seconds * 1e9)
    while !paused.load(ordering: .acquiring) {
      if cuffd_ref_now_ns() > deadline { return false }
      sched_yield()
    }
    return true
  }

  func resume() { pauseRequested.store(false, ordering: .releasing) }

  /// Whether a pause is requested (the bench pausing it already).
  var isPaused: Bool { pauseRequested.load(ordering: .acquiring) }

  /// Runs the fault probe and waits for it (at most `seconds`); the mean faulting write in µs.
  func probeFaults(seconds: Double = 60) -> Double? {
    probeRequested.store(true, ordering: .releasing)
    let deadline = cuffd_ref_now_ns() + Int64(seconds * 1e9)
    while probeRequested.load(ordering: .acquiring) {
      if cuffd_ref_now_ns() > deadline { return nil }
      usleep(100)
    }
    guard !faultNanos.isEmpty else { return 0 }
    return Double(faultNanos.reduce(0, +)) / Double(faultNanos.count) / 1000
  }

  /// The median of the last fault probe's writes, in µs (0 before any probe).
  var faultMedianMicroseconds: Double { median(faultNanos.map { Double($0) / 1000 }) }

  /// Starts a measuring window: resets the write counter and the stall histogram.
  func startWindow() {
    _ = pause()
    histogram.reset()
    writes.store(0, ordering: .relaxed)
    recording.store(true, ordering: .relaxed)
    resume()
  }

  /// Stops the writer and waits at most `seconds` for its thread. False when it is still inside a
  /// write (a fault nobody resolves): release the range, then ``join()``.
  func finish(seconds: Double = 20) -> Bool {
    stop.store(true, ordering: .relaxed)
    resume()
    let deadline = cuffd_ref_now_ns() + Int64(seconds * 1e9)
    while !exited.load(ordering: .acquiring) {
      if cuffd_ref_now_ns() > deadline { return false }
      usleep(200)
    }
    thread?.join()
    return true
  }

  /// Waits for the writer thread, however long (after its range was released).
  func join() { thread?.join() }
}
