import Logging
import Prometheus
import ServiceLifecycle
import SnapshotPager
import Synchronization

/// `uffd serve` as a host daemon: the pager, its Prometheus endpoint, and their start and graceful
/// shutdown (swift-service-lifecycle: SIGTERM or SIGINT drains the pager, then everything stops).
public struct PagerDaemon: Sendable {
  /// Where the metrics are served (`host`, `port`); nil: not served.
  public var metrics: (host: String, port: Int)?
  /// The pager's settings.
  public var configuration: PagerConfiguration
  /// Hears the metrics port once bound (a test binds port 0).
  public var metricsBound: @Sendable (Int) -> Void = { _ in }
  /// Hears the pager once it is serving (a test drives it).
  public var started: @Sendable (SnapshotPagerHost) -> Void = { _ in }
  /// Whether SIGTERM and SIGINT drain the pager (a test inside a bigger process turns this off).
  public var handlesSignals = true

  /// A daemon for `configuration`.
  public init(configuration: PagerConfiguration, metrics: (host: String, port: Int)? = nil) {
    self.configuration = configuration
    self.metrics = metrics
  }

  /// Starts everything, serves until a signal or a drain request, drains, and returns. Throws when
  /// the pager cannot start (a socket in use, a snapshot that cannot be mapped, a port taken).
  public func run(logger: Logger) async throws {
    let registry = PrometheusCollectorRegistry()
    var factory = PrometheusMetricsFactory(registry: registry)
    // Faults are served in microseconds: the default buckets (from 5 ms) would put them all in one.
    factory.durationHistogramBuckets["uffd_pager_fault_service_seconds"] = [
      .microseconds(2), .microseconds(5), .microseconds(10), .microseconds(20), .microseconds(50), .microseconds(100),
      .microseconds(200), .microseconds(500), .milliseconds(1), .milliseconds(2), .milliseconds(5), .milliseconds(10),
      .milliseconds(50), .milliseconds(100), .milliseconds(500), .seconds(1),
    ]
    // Chunk fetches from a store: from a fraction of a millisecond (loopback) to seconds.
    factory.durationHistogramBuckets["uffd_chunk_fetch_seconds"] = [
      .microseconds(250), .microseconds(500), .milliseconds(1), .milliseconds(2), .milliseconds(5), .milliseconds(10),
      .milliseconds(25), .milliseconds(50), .milliseconds(100), .milliseconds(250), .milliseconds(500), .seconds(1),
      .seconds(2), .seconds(5),
    ]
    let pager = try SnapshotPagerHost(configuration: configuration, logger: logger, metricsFactory: factory)
    try pager.start()
    started(pager)
    var services = [ServiceGroupConfiguration.ServiceConfiguration(
      service: PagerService(pager: pager), successTerminationBehavior: .gracefullyShutdownGroup, serviceName: "pager")]
    if let metrics {
      services.append(.init(
        service: MetricsEndpoint(host: metrics.host, port: metrics.port, registry: registry, logger: logger, bound: metricsBound),
        successTerminationBehavior: .gracefullyShutdownGroup, serviceName: "metrics"))
    }
    let group = ServiceGroup(configuration: .init(
      services: services, gracefulShutdownSignals: handlesSignals ? [.sigterm, .sigint] : [], logger: logger))
    do {
      try await group.run()
    } catch {
      pager.stop()
      _ = pager.waitUntilFinished(timeout: .seconds(10))
      throw error
    }
    if !pager.isFinished {
      pager.stop()
      _ = pager.waitUntilFinished(timeout: .seconds(10))
    }
  }
}
