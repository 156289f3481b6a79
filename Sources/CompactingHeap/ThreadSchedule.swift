import Glibc

/// The calling thread's own CPU time and involuntary context switches (getrusage with
/// RUSAGE_THREAD: one system call, no allocation, async-signal-safe in practice: a plain system
/// call). Read at a fault's start and end, it says whether the fault's stall was spent running
/// or off the CPU, and whether the scheduler took the CPU away mid-fault (preemption) rather than
/// the thread giving it up (a wait).
struct ThreadSchedule {
  /// User plus system CPU time, microseconds.
  var cpuMicroseconds: Int
  /// Times the scheduler took the CPU from the thread (`ru_nivcsw`).
  var involuntarySwitches: Int
  /// Times the thread gave it up itself: a sleep, a blocking system call (`ru_nvcsw`).
  var voluntarySwitches: Int

  /// RUSAGE_THREAD (Linux 2.6.26): this thread only.
  private static var rusageThread: Int32 { 1 }

  /// Now, for the calling thread; zeros if the call fails (it cannot for RUSAGE_THREAD).
  @inline(__always)
  static func now() -> ThreadSchedule {
    var usage = rusage()
    guard getrusage(__rusage_who_t(rusageThread), &usage) == 0 else {
      return ThreadSchedule(cpuMicroseconds: 0, involuntarySwitches: 0, voluntarySwitches: 0)
    }
    let cpu = (Int(usage.ru_utime.tv_sec) &+ Int(usage.ru_stime.tv_sec)) &* 1_000_000
      &+ Int(usage.ru_utime.tv_usec) &+ Int(usage.ru_stime.tv_usec)
    return ThreadSchedule(cpuMicroseconds: cpu, involuntarySwitches: Int(usage.ru_nivcsw), voluntarySwitches: Int(usage.ru_nvcsw))
  }
}
