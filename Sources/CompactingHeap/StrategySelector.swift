import Synchronization
import Userfaultfd

/// Chooses MOVE or batched COPY for each cycle of ``MappingStrategy/automatic``, from what they
/// cost on this host with these mutators: a start-up calibration, then each cycle's measured GC
/// time per page and mutator stall p99, with hysteresis (the rule: the package's compaction
/// article, "Choosing MOVE or COPY"). Where UFFDIO_MOVE is unusable (kernel, seccomp) it chooses
/// COPY and never tries MOVE.
///
/// One selector learns across cycles: give the same one to every ``Compactor`` of a heap (a
/// compactor made without one makes its own, which learns across that compactor's cycles).
public final class StrategySelector: Sendable {
  private let state: Mutex<AutomaticChoice>

  /// Cycles a new selector takes before its choices follow the evidence: the first (the
  /// calibration's guess) and those measuring each strategy before the first decision. A heap
  /// that runs for a while pays them once; a benchmark that wants the settled choice runs them
  /// first (`uffd compact --auto-warm-up`).
  public static var warmUpCycles: Int { AutomaticChoice(moveUnusableBecause: nil).warmUpCycles }

  /// A selector that knows nothing yet: its first cycle calibrates.
  public init() { state = Mutex(AutomaticChoice(moveUnusableBecause: nil)) }

  /// A selector deciding with `rule` (tests give it synthetic evidence).
  init(rule: AutomaticChoice) { state = Mutex(rule) }

  /// The strategy for the next cycle, asked once its mutators (`runningThreads`) run. Calibrates
  /// first when MOVE is usable and it has not yet (the first cycle: its cost counts in that
  /// cycle's GC time); a calibration that fails makes it COPY, with the error as the reason.
  /// `moveUnusableBecause` (nil: usable) is the compactor's capability verdict.
  func choose(moveUnusableBecause: String?, runningThreads: Int, runPages: Int) -> StrategyChoice {
    let needsCalibration = state.withLock { rule in
      if rule.moveUnusableBecause == nil, let why = moveUnusableBecause { rule.moveUnusableBecause = why }
      return rule.needsCalibration
    }
    if needsCalibration {
      let result: Result<StrategyCalibration, HeapError>
      do throws(HeapError) {
        result = .success(try MappingCalibration.measure(runningThreads: runningThreads, runPages: runPages))
      } catch {
        result = .failure(error)
      }
      state.withLock { rule in
        switch result {
        case .success(let calibration): rule.calibrated(calibration)
        case .failure(let error): rule.moveUnusableBecause = "the start-up calibration failed: \(error)"
        }
      }
    }
    return state.withLock { $0.next() }
  }

  /// Records what a cycle under `strategy` cost.
  func record(_ strategy: MappingStrategy, cost: StrategyCost) {
    state.withLock { $0.record(strategy, cost: cost) }
  }
}

/// The start-up calibration (``StrategyCalibration``): on scratch memory registered with its own
/// userfaultfd, one run of pages mapped by UFFDIO_MOVE and by UFFDIO_COPY (into fresh pages, as
/// the COPY strategy maps), interleaved. It runs on the GC thread in the first cycle, once the
/// mutators run and before the GC starts: each MOVE's TLB flush must then interrupt the CPUs
/// they run on, as it will all cycle (what makes MOVE slow in a VM). No thread of its own.
enum MappingCalibration {
  /// Timed ioctls per strategy; the median counts.
  static var repetitions: Int { 3 }

  static func measure(runningThreads: Int, runPages: Int) throws(HeapError) -> StrategyCalibration {
    let start = CycleClock.now()
    let length = runPages * PageSize.base
    var moves: [Double] = [], copies: [Double] = []
    do throws(UserfaultfdError) {
      let uffd = try Userfaultfd(options: .nonBlocking)
      let source = try AnonymousMemory(length: length)
      let target = try AnonymousMemory(length: length)
      _ = try uffd.register(target.baseAddress, length: length, mode: .missing)
      defer { try? uffd.unregister(target.baseAddress, length: length) }
      let fd = uffd.coreDescriptor
      let destination = UInt(bitPattern: target.baseAddress), from = UInt(bitPattern: source.baseAddress)
      for _ in 0..<Self.repetitions {
        for move in [true, false] {
          source.bytes.initializeMemory(as: UInt8.self, repeating: 0x5A)  // Present (MOVE emptied it).
          let before = CycleClock.now()
          let answer = move
            ? RangeIoctl.move(fd, destination, from: from, length: length)
            : RangeIoctl.copy(fd, destination, from: from, length: length)
          let nanoseconds = Double(CycleClock.now() - before) / Double(runPages)
          if let errno = answer.errno {
            throw UserfaultfdError.systemCallFailed(move ? "UFFDIO_MOVE (calibration)" : "UFFDIO_COPY (calibration)", errno)
          }
          if move { moves.append(nanoseconds) } else { copies.append(nanoseconds) }
          try target.advise(.dontNeed)  // A hole again for the next ioctl.
        }
      }
    } catch {
      throw .system(error)
    }
    return StrategyCalibration(
      moveNanosecondsPerPage: moves.sorted()[moves.count / 2], copyNanosecondsPerPage: copies.sorted()[copies.count / 2],
      runPages: runPages, busyThreads: runningThreads, nanoseconds: CycleClock.now() - start)
  }
}
