import Foundation
import Glibc
import Userfaultfd

/// `uffd dirty watch`: the write rate of a range another process offers (``MemoryOffer``), one
/// sample per interval: pages written, bytes per second, and where in the range (a heat line).
package struct DirtyWatchJob {
  package let target: OfferTarget
  package let intervalMilliseconds: Int
  package let count: Int

  package init(target: OfferTarget, intervalMilliseconds: Int, count: Int) {
    self.target = target
    self.intervalMilliseconds = intervalMilliseconds
    self.count = count
  }

  /// One interval.
  package struct Sample: Encodable, Sendable {
    package var index: Int
    package var seconds: Double
    package var backend: String
    package var pagesWritten: Int
    package var bytesPerSecond: Double
    /// Written pages per sixty-fourth of the range.
    package var buckets: [Int]
    /// Pages in one bucket (the range's pages over the bucket count, rounded up).
    package var pagesPerBucket: Int
  }

  /// Buckets a sample's heat line has.
  package static let bucketCount = 64

  /// Connects, starts tracking, and calls `emit` with each sample; stops early when the process
  /// hangs up.
  package func run(emit: (Sample) -> Void) throws {
    let (offered, region) = try target.connect()
    let tracker = try DirtyTracker(adopting: offered.uffd, region: region, processID: offered.processID)
    // From now on every write is seen: the process may start (or go on) writing.
    try offered.tell("watching")
    defer {
      tracker.stop()
      try? offered.tell("done")
    }
    let length = region.upperBound - region.lowerBound
    var previous = monotonicNow()
    let started = previous
    for index in 0..<count {
      if try offered.socket.peerHasHungUp(timeout: .milliseconds(intervalMilliseconds)) { return }
      let written = try tracker.collect()
      let now = monotonicNow()
      var buckets = [Int](repeating: 0, count: Self.bucketCount)
      for run in written.ranges {
        var page = run.lowerBound
        while page < run.upperBound {
          let bucket = min(Self.bucketCount - 1, (page - region.lowerBound) * Self.bucketCount / length)
          buckets[bucket] += 1
          page = page + written.pageSize
        }
      }
      emit(Sample(index: index, seconds: now - started, backend: tracker.backend.rawValue, pagesWritten: written.pageCount,
                  bytesPerSecond: Double(written.byteCount) / max(now - previous, 1e-6), buckets: buckets,
                  pagesPerBucket: max(1, (length / PageSize.base + Self.bucketCount - 1) / Self.bucketCount)))
      previous = now
    }
  }

  /// A sample as one line: time, pages, rate, and the heat line (one character per bucket).
  package static func line(_ sample: Sample) -> String {
    let pagesPerBucket = sample.pagesPerBucket
    let shades = Array(" .:-=+*#%@")
    let heat = sample.buckets.map { count -> Character in
      guard count > 0 else { return shades[0] }
      let level = 1 + (count * (shades.count - 2)) / max(pagesPerBucket, 1)
      return shades[min(shades.count - 1, level)]
    }
    return String(format: "%7.2f s  %8d pages  %9.1f MiB/s  |", sample.seconds, sample.pagesWritten,
                  sample.bytesPerSecond / 1_048_576) + String(heat) + "|"
  }
}

private func monotonicNow() -> Double {
  var now = timespec()
  clock_gettime(CLOCK_MONOTONIC, &now)
  return Double(now.tv_sec) + Double(now.tv_nsec) / 1e9
}
