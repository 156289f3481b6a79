import CoreMetrics
import Userfaultfd

/// The pager's metrics, through the swift-metrics API (the daemon binds them to Prometheus): sessions
/// active and in total, refused clients, faults and their service time, pages by how they came in,
/// bytes copied, failed faults. Every metric is made once here; the loops only add to them.
package final class PagerMetrics: FaultObserver, Sendable {
  let sessionsActive: Gauge
  let sessionsTotal: Counter
  let sessionsRefused: Counter
  let sessionsEnded: [SnapshotServer.Statistics.EndReason: Counter]
  let faults: Counter
  let faultService: Timer
  let pagesByFault: Counter
  let pagesByPrefetch: Counter
  let pagesZero: Counter
  let pagesOverlay: Counter
  let pagesByReplay: Counter
  /// Pages clients released (REMOVE); the pager hands them back to the kernel's zero-fill.
  let pagesReleased: Counter
  let bytesCopied: Counter
  let failedFaults: Counter
  let failedPrefetches: Counter
  let failedHandshakes: Counter

  /// Metrics made by `factory` (the process's bootstrapped factory by default).
  package init(factory: any MetricsFactory = MetricsSystem.factory) {
    sessionsActive = Gauge(label: "uffd_pager_sessions_active", factory: factory)
    sessionsTotal = Counter(label: "uffd_pager_sessions_total", factory: factory)
    sessionsRefused = Counter(label: "uffd_pager_sessions_refused_total", factory: factory)
    var ended: [SnapshotServer.Statistics.EndReason: Counter] = [:]
    for reason in [SnapshotServer.Statistics.EndReason.clientHungUp, .processGone, .stopped, .failed] {
      ended[reason] = Counter(label: "uffd_pager_sessions_ended_total", dimensions: [("reason", reason.rawValue)], factory: factory)
    }
    sessionsEnded = ended
    faults = Counter(label: "uffd_pager_faults_total", factory: factory)
    faultService = Timer(label: "uffd_pager_fault_service_seconds", factory: factory)
    pagesByFault = Counter(label: "uffd_pager_pages_total", dimensions: [("source", "fault")], factory: factory)
    pagesByPrefetch = Counter(label: "uffd_pager_pages_total", dimensions: [("source", "prefetch")], factory: factory)
    pagesZero = Counter(label: "uffd_pager_pages_total", dimensions: [("source", "zero")], factory: factory)
    pagesOverlay = Counter(label: "uffd_pager_pages_total", dimensions: [("source", "overlay")], factory: factory)
    pagesByReplay = Counter(label: "uffd_pager_pages_total", dimensions: [("source", "replay")], factory: factory)
    pagesReleased = Counter(label: "uffd_pager_released_pages_total", factory: factory)
    bytesCopied = Counter(label: "uffd_pager_bytes_copied_total", factory: factory)
    failedFaults = Counter(label: "uffd_pager_failed_total", dimensions: [("kind", "fault")], factory: factory)
    failedPrefetches = Counter(label: "uffd_pager_failed_total", dimensions: [("kind", "prefetch")], factory: factory)
    failedHandshakes = Counter(label: "uffd_pager_failed_total", dimensions: [("kind", "handshake")], factory: factory)
  }

  package func faultServed(nanoseconds: UInt64) {
    faultService.recordNanoseconds(Int64(clamping: nanoseconds))
  }

  /// Adds what a session did since `before` (the loop calls this after each turn that changed
  /// something, so the counters follow the sessions live).
  func add(_ now: SnapshotServer.Statistics, since before: SnapshotServer.Statistics) {
    func delta(_ counter: Counter, _ value: Int) { if value > 0 { counter.increment(by: Int64(value)) } }
    delta(faults, now.faults + now.wakes - before.faults - before.wakes)
    delta(pagesByFault, now.pagesByFault - before.pagesByFault)
    delta(pagesByPrefetch, now.pagesByPrefetch - before.pagesByPrefetch)
    delta(pagesZero, now.zeroPages - before.zeroPages)
    delta(pagesOverlay, now.overlayPages - before.overlayPages)
    delta(pagesByReplay, now.pagesByReplay - before.pagesByReplay)
    delta(pagesReleased, now.releasedPages - before.releasedPages)
    delta(bytesCopied, now.bytesServed - before.bytesServed)
    delta(failedFaults, now.failedFaults - before.failedFaults)
    delta(failedPrefetches, now.prefetchErrors - before.prefetchErrors)
  }
}
