/// Decides when a recording has settled: the restore has touched its working set and the pages
/// still arriving are a trickle (a guest's idle loop, a timer) rather than its start-up.
///
/// Time is cut into windows of ``window`` from the first recorded page on. When a whole window
/// adds at most `max(minimumNewPages, fraction × pages so far)` new pages, the recording has
/// settled. Defaults: windows of 2 s, settled when a window adds at most 16 pages or 1% of the
/// pages so far. A recording that never settles stops after ``maximumDuration`` (5 minutes), and a
/// session that ends first ends its recording. superserve records "until the fault rate settles"
/// the same way; the window is longer than a boot's pauses for I/O and short enough that the
/// working set is on disk before the next clone starts.
public struct SettleDetector: Sendable, Hashable {
  /// The length of one window.
  public var window: Duration
  /// New pages a window may add and still count as settled, at least.
  public var minimumNewPages: Int
  /// New pages a window may add and still count as settled, as a fraction of the pages so far.
  public var fraction: Double
  /// The longest a recording runs.
  public var maximumDuration: Duration

  private var firstPage: ContinuousClock.Instant?
  private var windowStart: ContinuousClock.Instant?
  private var newInWindow = 0
  /// Pages observed so far.
  public private(set) var total = 0

  /// A detector with the given window and thresholds.
  public init(window: Duration = .seconds(2), minimumNewPages: Int = 16, fraction: Double = 0.01,
              maximumDuration: Duration = .seconds(300)) {
    self.window = window
    self.minimumNewPages = minimumNewPages
    self.fraction = fraction
    self.maximumDuration = maximumDuration
  }

  /// The pages a window may add while counting as settled, with `total` pages recorded.
  public func threshold(total: Int) -> Int { max(minimumNewPages, Int(fraction * Double(total))) }

  /// Notes `newPages` first touched at `now`.
  public mutating func observe(newPages: Int, at now: ContinuousClock.Instant) {
    guard newPages > 0 else { return }
    if firstPage == nil {
      firstPage = now
      windowStart = now
    }
    roll(to: now)
    newInWindow += newPages
    total += newPages
  }

  /// Whether the recording has settled at `now` (a window that ended at or before `now` added few
  /// pages, or the maximum duration has passed). Rolls the windows forward.
  public mutating func isSettled(at now: ContinuousClock.Instant) -> Bool {
    guard let firstPage, let windowStart else { return false }
    if now - firstPage >= maximumDuration { return true }
    guard now - windowStart >= window else { return false }
    // A whole window without a single new page has passed since.
    if now - windowStart >= window * 2 { return true }
    // The window [windowStart, windowStart + window) is complete.
    if newInWindow <= threshold(total: total) { return true }
    roll(to: now)
    return false
  }

  /// How long since the first page (zero before it).
  public func elapsed(at now: ContinuousClock.Instant) -> Duration { firstPage.map { now - $0 } ?? .zero }

  private mutating func roll(to now: ContinuousClock.Instant) {
    guard let start = windowStart, now - start >= window else { return }
    // Whole windows without pages in between count as quiet windows; the current one starts at
    // the last window boundary before `now`.
    let windows = Int((now - start) / window)
    windowStart = start + window * windows
    newInWindow = 0
  }
}
