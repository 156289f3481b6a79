/// What one verified cycle did and measured.
public struct CompactionResult: Sendable {
  /// The strategy that mapped the pages (under ``MappingStrategy/automatic``: the one chosen).
  public var strategy: MappingStrategy
  /// Under ``MappingStrategy/automatic``: the choice, its reason and the costs it was weighed on.
  public var choice: StrategyChoice?
  /// How mutator faults were served.
  public var faultMode: FaultMode
  /// Live bytes compacted.
  public var liveBytes: Int
  /// Live objects.
  public var liveObjects: Int
  /// Heap bytes in use before.
  public var usedBytesBefore: Int
  /// Stop-the-world marking and address computation.
  public var markNanoseconds: Int64
  /// The pause: roots, register, mremap.
  public var pauseNanoseconds: Int64
  /// The compaction (GC) thread's wall time over the concurrent phase.
  public var compactionWallNanoseconds: Int64
  /// The compaction thread's CPU time over the concurrent phase.
  public var compactionCPUNanoseconds: Int64
  /// Pages compacted by the GC thread.
  public var pagesByGC: Int
  /// Pages compacted by faulting mutators (or the fault-server thread for them).
  public var pagesByMutators: Int
  /// Mutator faults served.
  public var mutatorFaults: Int
  /// Dead from-space pages compacted into and moved (MOVE strategy).
  public var recycledPages: Int
  /// Pages the GC compacted into its buffer and copied (all of them under COPY; early ones under MOVE).
  public var bufferPages: Int
  /// UFFDIO_MOVE calls.
  public var moveIoctls: Int
  /// Pages UFFDIO_MOVE moved.
  public var pagesMoved: Int
  /// UFFDIO_COPY calls.
  public var copyIoctls: Int
  /// Pages UFFDIO_COPY copied.
  public var pagesCopied: Int
  /// UFFDIO_ZEROPAGE calls (faults past the compacted data).
  public var zeroPageIoctls: Int
  /// Pages MOVE refused with EBUSY that were copied instead.
  public var busyFallbacks: Int
  /// Map ioctl failures by ioctl and errno, e.g. `"MOVE EAGAIN": 2` (all handled).
  public var errnoCounts: [String: Int]
  /// Mutator writes made during compaction, all verified present.
  public var mutatorWrites: Int
  /// This process's resident memory just before the pause, bytes.
  public var residentBefore: Int
  /// This process's peak resident memory during the cycle (VmHWM, reset before the pause), bytes.
  public var peakResident: Int
  /// The cycle verified (a failure throws instead).
  public var verified: Bool
  /// How long mutator faults stalled the mutators (each fault's service time): the median,
  /// 99th and 99.9th percentiles and the longest, in nanoseconds.
  public var mutatorStall = MutatorStall()
  /// From-space pages given back (MADV_DONTNEED) during the concurrent phase: under COPY every
  /// page once nothing reads it; under MOVE the dead pages beyond what the GC recycles.
  public var releasedPages: Int = 0
  /// To-space pages found already present when their claimer mapped them: only the claimer maps
  /// a page, so something outside the compaction touched the heap between the mremap and the
  /// registration (I/O into it, another process). The compacted content was written over each in
  /// place (nothing of the heap lost; what the intruder wrote there is gone). 0 in every normal cycle.
  public var intrudedPages: Int = 0
  /// Pages a MOVE mapped although the kernel answered EEXIST (the source page was gone and the
  /// destination held it: seen on Linux 6.18 when the source lay in a transparent huge page the
  /// MOVE split). Counted as moved, not in ``errnoCounts``; 0 on most cycles.
  public var movesAnsweredExisting: Int = 0
  /// The part of ``mutatorStall`` spent waiting for a page someone else held: per fault that
  /// waited, from its first wait to its return (so it includes mapping the page once free).
  /// ``MutatorStall/count`` is the faults that waited.
  public var mutatorWait = MutatorStall()
  /// The stalls of the faults whose service overlapped a map ioctl of the GC thread (a MOVE's
  /// TLB-flush interrupt or its page-table locks can land in these); ``MutatorStall/count`` is
  /// how many.
  public var mutatorStallOverlappingGCMapping = MutatorStall()
  /// Faults that waited for a page the GC was compacting (one page's compaction at most).
  public var waitsOnProcessing: Int = 0
  /// Faults that waited for a page being mapped (one ioctl at most), by the GC or another mutator.
  public var waitsOnMapping: Int = 0
  /// Each fault's CPU time (the faulting thread's, `CLOCK_THREAD_CPUTIME_ID`):
  /// what serving it cost while it ran. A stall far above it was spent off the CPU.
  public var mutatorFaultCPU = MutatorStall()
  /// The stalls of the faults whose thread kept the CPU throughout (no involuntary and no
  /// voluntary context switch): the stalls the compaction itself causes.
  public var mutatorStallOnCPU = MutatorStall()
  /// Faults during which the scheduler preempted the faulting thread at least once.
  public var preemptedFaults: Int = 0
  /// Involuntary context switches during faults, added up.
  public var involuntarySwitchesInFaults: Int = 0
  /// Faults during which the thread gave up the CPU itself (a back-off sleep, blocking in the kernel).
  public var blockedFaults: Int = 0
  /// When the pages were mapped over the concurrent phase, by the GC thread and by mutators.
  public var timeline = MappingTimeline()

  /// Live bytes per nanosecond of the compaction thread's CPU time (= GB/s): the routine's own
  /// speed, whatever share of a CPU the thread got.
  public var compactionCPUGBps: Double {
    Double(liveBytes) / Swift.max(1, Double(compactionCPUNanoseconds))
  }

  /// Live bytes per nanosecond of the compaction thread's wall time (= GB/s).
  public var compactionGBps: Double {
    Double(liveBytes) / Swift.max(1, Double(compactionWallNanoseconds))
  }
}

/// Mutator fault stalls of one cycle (``CompactionResult/mutatorStall``), in nanoseconds.
public struct MutatorStall: Sendable, Hashable {
  /// The median fault's stall.
  public var p50: Int64 = 0
  /// The 99th percentile.
  public var p99: Int64 = 0
  /// The 99.9th percentile.
  public var p999: Int64 = 0
  /// The longest.
  public var max: Int64 = 0
  /// All stalls added up.
  public var total: Int64 = 0
  /// Faults measured.
  public var count: Int = 0
  /// Faults by stall, in powers of two of microseconds: element `k` counts the stalls from
  /// 2^k up to 2^(k+1) µs (element 0 also those under 1 µs; the last also everything longer).
  public var countsByPowerOfTwoMicroseconds: [Int] = []

  /// Creates an empty record.
  public init() {}
}
