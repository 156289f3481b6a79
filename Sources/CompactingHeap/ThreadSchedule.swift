import Glibc

/// The calling thread's own CPU time (`CLOCK_THREAD_CPUTIME_ID`, nanoseconds: getrusage's CPU
/// times are counted in scheduler ticks, 4 ms here, useless for one fault) and its context
/// switches (getrusage with RUSAGE_THREAD): two system calls, no allocation, async-signal-safe
/// (clock_gettime is on POSIX's list; getrusage is a plain system call). Read at a fault's start and end, it says whether the fault's stall was spent running
/// or off the CPU, and whether the scheduler took the CPU away mid-fault (preemption) rather than
/// the thread giving it up (a wait).
struct ThreadSchedule {
  /// CPU time, nanoseconds.
  var cpuNanoseconds: Int
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
    var clock = timespec()
    guard getrusage(__rusage_who_t(rusageThread), &usage) == 0, clock_gettime(CLOCK_THREAD_CPUTIME_ID, &clock) == 0 else {
      return ThreadSchedule(cpuNanoseconds: 0, involuntarySwitches: 0, voluntarySwitches: 0)
    }
    return ThreadSchedule(cpuNanoseconds: Int(clock.tv_sec) &* 1_000_000_000 &+ Int(clock.tv_nsec), involuntarySwitches: Int(usage.ru_nivcsw), voluntarySwitches: Int(usage.ru_nvcsw))
  }
}
