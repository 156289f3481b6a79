/// What mapping one page cost in a cycle under one strategy, as the automatic choice weighs it.
public struct StrategyCost: Sendable, Hashable {
  /// The GC thread's CPU time over the concurrent phase per to-space page, in nanoseconds (CPU,
  /// not wall: on a shared machine the wall time is mostly how long the thread waited for a CPU;
  /// a MOVE's wait for the other CPUs to flush their TLBs is CPU time).
  public var gcNanosecondsPerPage: Double
  /// The mutators' fault-stall 99th percentile, in nanoseconds; nil when no mutator faulted
  /// (idle mutators), so there is nothing to weigh.
  public var stallP99Nanoseconds: Double?

  /// Creates a cost.
  public init(gcNanosecondsPerPage: Double, stallP99Nanoseconds: Double?) {
    self.gcNanosecondsPerPage = gcNanosecondsPerPage
    self.stallP99Nanoseconds = stallP99Nanoseconds
  }
}

/// The start-up calibration: one run of pages mapped with UFFDIO_MOVE and with UFFDIO_COPY, a few
/// times each, interleaved, on the GC thread of the first cycle while its mutators run (each
/// MOVE's TLB flush interrupts every other CPU running the process: what makes MOVE slow in a VM).
public struct StrategyCalibration: Sendable, Hashable {
  /// UFFDIO_MOVE, nanoseconds per page (median of the repetitions, one run per ioctl).
  public var moveNanosecondsPerPage: Double
  /// UFFDIO_COPY into fresh pages, nanoseconds per page (the same way).
  public var copyNanosecondsPerPage: Double
  /// Pages per ioctl (the GC's run length).
  public var runPages: Int
  /// Mutator threads running beside the calibrating one.
  public var busyThreads: Int
  /// What the calibration itself took, wall time in nanoseconds.
  public var nanoseconds: Int64

  /// Creates a calibration record.
  public init(moveNanosecondsPerPage: Double, copyNanosecondsPerPage: Double, runPages: Int, busyThreads: Int,
              nanoseconds: Int64) {
    self.moveNanosecondsPerPage = moveNanosecondsPerPage
    self.copyNanosecondsPerPage = copyNanosecondsPerPage
    self.runPages = runPages
    self.busyThreads = busyThreads
    self.nanoseconds = nanoseconds
  }
}

/// One cycle's automatic choice (``MappingStrategy/automatic``): which strategy, why, and the
/// evidence it was weighed on.
public struct StrategyChoice: Sendable, Hashable {
  /// ``MappingStrategy/move`` or ``MappingStrategy/copy``.
  public var strategy: MappingStrategy
  /// Why, in one sentence with the numbers.
  public var reason: String
  /// Whether this cycle runs what the evidence says (or COPY where MOVE is unusable); false for
  /// the first cycle (the calibration's guess) and for cycles that measure the other strategy.
  public var isDecided: Bool
  /// The start-up calibration (nil where MOVE is unusable: nothing to compare).
  public var calibration: StrategyCalibration?
  /// The MOVE strategy's measured cost so far (the least of the last cycles that used it);
  /// nil until a cycle used it.
  public var measuredMove: StrategyCost?
  /// The COPY strategy's, the same way.
  public var measuredCopy: StrategyCost?
}

/// The automatic choice's decision rule, pure (no kernel, no clock): unit-tested with synthetic
/// costs. ``StrategySelector`` wraps it for concurrent use.
///
/// - Where MOVE is unusable (kernel, seccomp: `MoveVerdict`) the answer is COPY, always.
/// - Cycle 1: the cheaper strategy by the start-up calibration (mapping cost per page).
/// - Cycles 2-4: the other, the first, the other (``explorationSamples`` cycles of each), so both
///   have measured GC time and stalls, twice.
/// - Then: each strategy's score is its GC CPU time per page over the better of the two times a
///   stall factor: 1, or, when its recent stall p99s all lie above the other's, its least over the
///   other's greatest, capped at ``stallRatioCap`` (1 is the best possible score; a product, so
///   the margin applies to the GC time itself: a sum with the stall term's 1 halved it, and a
///   COPY 19% cheaper on GC time was kept out); the incumbent is
///   kept unless the other scores at least ``margin`` lower, and is never switched again within
///   ``dwell`` cycles of a switch (hysteresis: noise between cycles does not flap it).
/// - Evidence is the least of the last ``window`` cycles that used each strategy: interference
///   (other processes, a preemption landing in a fault) only ever adds time, so one cycle whose
///   p99 caught a preemption does not decide once there is a cleaner one, and a lasting change
///   counts once it has lasted ``window`` cycles. The other strategy is explored again when its
///   evidence is ``refreshAfter`` cycles old.
struct AutomaticChoice: Sendable {
  /// How much lower (as a fraction) the other strategy's score must be to switch.
  var margin = 0.10
  /// Cycles after a switch before the next one may happen.
  var dwell = 2
  /// Cycles after which the strategy not in use is explored again.
  var refreshAfter = 16
  /// The most a stall p99 ratio adds to a score: a stall disaster weighs heavily, but one noisy
  /// p99 (a preemption lands in a fault) cannot outweigh everything else.
  var stallRatioCap = 4.0
  /// Cycles of each strategy measured before the first decision (their least cost is what counts,
  /// so one noisy cycle cannot decide).
  var explorationSamples = 2
  /// Cycles per strategy whose least cost is its evidence.
  var window = 3

  /// Whether MOVE may be used at all, and if not, why (`MoveVerdict` text).
  var moveUnusableBecause: String?
  private(set) var calibration: StrategyCalibration?
  /// Per strategy, the least of ``samples``.
  private(set) var measured: [MappingStrategy: StrategyCost] = [:]
  /// Per strategy, its last ``window`` cycles' costs.
  private var samples: [MappingStrategy: [StrategyCost]] = [:]
  /// The cycle each strategy was last measured in.
  private var measuredAt: [MappingStrategy: Int] = [:]
  /// The strategy decisions hold on to (an exploring cycle does not change it).
  private(set) var incumbent: MappingStrategy?
  private var lastSwitch = 0
  /// Cycles decided so far.
  private(set) var cycle = 0

  init(moveUnusableBecause: String?) { self.moveUnusableBecause = moveUnusableBecause }

  /// Cycles before the first decision: ``explorationSamples`` of each strategy (the first cycle
  /// counts as one of its strategy's).
  var warmUpCycles: Int { 2 * explorationSamples }

  /// Whether a calibration is wanted before the next ``next()`` (MOVE usable, none yet).
  var needsCalibration: Bool { moveUnusableBecause == nil && calibration == nil }

  mutating func calibrated(_ calibration: StrategyCalibration) { self.calibration = calibration }

  /// Records what a cycle under `strategy` cost.
  mutating func record(_ strategy: MappingStrategy, cost: StrategyCost) {
    measuredAt[strategy] = cycle
    var recent = samples[strategy, default: []]
    recent.append(cost)
    if recent.count > window { recent.removeFirst(recent.count - window) }
    samples[strategy] = recent
    let stalls = recent.compactMap(\.stallP99Nanoseconds)
    // The least of the last few: interference (another process's threads, a preemption landing
    // in a fault) only ever adds time, so the least is the strategy's own cost.
    measured[strategy] = StrategyCost(
      gcNanosecondsPerPage: recent.map(\.gcNanosecondsPerPage).min() ?? 0,
      stallP99Nanoseconds: stalls.min())
  }

  /// The next cycle's strategy and why.
  mutating func next() -> StrategyChoice {
    cycle += 1
    let (strategy, reason) = decide()
    let measuring = reason.contains(", measuring:") || reason.contains(", exploring:")
    return StrategyChoice(
      strategy: strategy, reason: reason, isDecided: moveUnusableBecause != nil || (cycle > 1 && !measuring),
      calibration: calibration, measuredMove: measured[.move],
      measuredCopy: measured[.copy])
  }

  private mutating func decide() -> (MappingStrategy, String) {
    if let why = moveUnusableBecause {
      incumbent = .copy
      return (.copy, "COPY: UFFDIO_MOVE is not usable here (\(why))")
    }
    guard let incumbent else {
      let first = calibrated(.move) < calibrated(.copy) ? MappingStrategy.move : .copy
      self.incumbent = first
      lastSwitch = cycle
      return (first, "\(first.label): cheaper in the start-up calibration (\(calibrationText))")
    }
    let other = incumbent.other
    let mineCount = samples[incumbent]?.count ?? 0, theirCount = samples[other]?.count ?? 0
    if Swift.min(mineCount, theirCount) < explorationSamples {
      // Warming up: the one with fewer cycles, the incumbent on a tie.
      guard theirCount < mineCount else {
        return (incumbent, "\(incumbent.label), measuring: \(explorationSamples) cycles of each before deciding")
      }
      return (other, "\(other.label), exploring: \(theirCount) of \(explorationSamples) cycles measured before deciding"
        + " (\(incumbent.label) stays the choice)")
    }
    if cycle - (measuredAt[other] ?? 0) > refreshAfter {
      return (other, "\(other.label), exploring: its GC time and stalls were last measured"
        + " \(cycle - (measuredAt[other] ?? 0)) cycles ago (\(incumbent.label) stays the choice)")
    }
    let mine = score(incumbent), theirs = score(other)
    let evidence = "scores \(incumbent.label) \(format(mine)) vs \(other.label) \(format(theirs)) (GC CPU per page over the"
      + " better, times stall p99 over the other's when they do not overlap; \(costText))"
    if theirs < mine * (1 - margin) {
      guard cycle - lastSwitch >= dwell else {
        return (incumbent, "\(incumbent.label), held: the last switch was \(cycle - lastSwitch) cycle(s) ago, fewer than \(dwell); \(evidence)")
      }
      self.incumbent = other
      lastSwitch = cycle
      return (other, "\(other.label), switched: more than \(Int(margin * 100))% better; \(evidence)")
    }
    return (incumbent, "\(incumbent.label), kept: \(other.label) is not \(Int(margin * 100))% better; \(evidence)")
  }

  /// The GC time per page a strategy is expected to take: measured; else the other's measured time
  /// with the calibration's difference in mapping cost; else the calibration's mapping cost alone
  /// (comparable: the compaction work is the same under both).
  func expectedGC(_ strategy: MappingStrategy) -> Double {
    if let cost = measured[strategy] { return cost.gcNanosecondsPerPage }
    if let other = measured[strategy.other] {
      return Swift.max(calibrated(strategy), other.gcNanosecondsPerPage - calibrated(strategy.other) + calibrated(strategy))
    }
    return calibrated(strategy)
  }

  /// GC per page over the better of the two, times the stall factor: 1, or, when every recent cycle
  /// of this strategy had a higher stall p99 than every recent cycle of the other (the two sets
  /// do not overlap), its least p99 over the other's greatest, capped at ``stallRatioCap``.
  /// Stall p99s swing by milliseconds from cycle to cycle on a busy machine (a preemption landing
  /// in a fault); a difference smaller than that swing does not count.
  func score(_ strategy: MappingStrategy) -> Double {
    let gc = expectedGC(strategy), best = Swift.min(expectedGC(.move), expectedGC(.copy))
    let mine = (samples[strategy] ?? []).compactMap(\.stallP99Nanoseconds)
    let theirs = (samples[strategy.other] ?? []).compactMap(\.stallP99Nanoseconds)
    var stall = 1.0
    if let least = mine.min(), let greatest = theirs.max(), greatest > 0, least > greatest {
      stall = Swift.min(least / greatest, stallRatioCap)
    }
    return (best > 0 ? gc / best : 1) * stall
  }

  private func calibrated(_ strategy: MappingStrategy) -> Double {
    guard let calibration else { return 0 }
    return strategy == .move ? calibration.moveNanosecondsPerPage : calibration.copyNanosecondsPerPage
  }

  private var calibrationText: String {
    guard let calibration else { return "no calibration" }
    return "MOVE \(format(calibration.moveNanosecondsPerPage / 1000)) µs/page, COPY \(format(calibration.copyNanosecondsPerPage / 1000))"
      + " µs/page in \(calibration.runPages)-page ioctls with \(calibration.busyThreads) mutator(s) running"
  }

  private var costText: String {
    [MappingStrategy.move, .copy].map { strategy in
      let stall = measured[strategy]?.stallP99Nanoseconds.map { "stall p99 \(format($0 / 1000)) µs" } ?? "stall p99 unmeasured"
      return "\(strategy.label) GC CPU \(format(expectedGC(strategy) / 1000)) µs/page, \(stall)"
    }.joined(separator: "; ")
  }

  private func format(_ value: Double) -> String {
    let hundredths = Int((value * 100).rounded())
    let fraction = abs(hundredths % 100)
    return "\(hundredths / 100).\(fraction < 10 ? "0" : "")\(fraction)"
  }
}

extension MappingStrategy {
  /// MOVE's alternative and COPY's (the automatic choice weighs only these two).
  var other: MappingStrategy { self == .move ? .copy : .move }
  /// As the reasons name it.
  var label: String { self == .move ? "MOVE" : "COPY" }
}
