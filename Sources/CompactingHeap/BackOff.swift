import Glibc

/// Waiting for another thread's progress on a page (ART's `BackOff`): yield first, the usual wait
/// is a few microseconds; then sleep in doubling steps up to 50 µs (ART sleeps in 10 µs steps), so a long wait does not burn a
/// CPU another thread needs. Async-signal-safe (sched_yield and nanosleep only).
struct BackOff {
  /// Yields before the first sleep.
  private static var yields: Int { 64 }
  private(set) var attempts = 0

  /// Waits once.
  @inline(__always)
  mutating func pause() {
    attempts &+= 1
    if attempts <= Self.yields {
      sched_yield()
    } else {
      var step = timespec(tv_sec: 0, tv_nsec: Int(Swift.min(50_000, 1_000 &<< Swift.min(attempts &- Self.yields, 10))))
      nanosleep(&step, nil)
    }
  }

  /// Waits while `condition` holds.
  @inline(__always)
  static func wait(while condition: () -> Bool) {
    var backOff = BackOff()
    while condition() { backOff.pause() }
  }
}
